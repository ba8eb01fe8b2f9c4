"""The training state `--resume` continues from: JSON + safetensors, never a pickle.

`save_training_state` / `load_training_state` write and read the optimizer, scheduler, EMA, grad scaler,
step counter and random generators of every process, so a resumed run is bitwise equal to an uninterrupted one.

The part lerobot-train also saves is written by LeRobot's own helpers, in its file names, so LeRobot's
`load_training_state` reads our folder too: `training_step.json` (step, number of processes),
`optimizer_state.safetensors` + `optimizer_param_groups.json`, `scheduler_state.json`. What lerobot-train
does not keep is ours: `training_state.json` + `.safetensors` (EMA, grad scaler, Accelerate's step counter)
and `model.safetensors` (the trained, not EMA, weights). The random generators are ours too, per process
(`rng_<rank>.*`): LeRobot's `rng_state.safetensors` is one file per run, rounds NumPy's cached Gaussian to
float32 and drops Python's `gauss_next`, so restoring from it is not bitwise in every case. The main process
writes it as well, only so that LeRobot's `load_training_state` finds every file it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lerobot.common.train_utils import load_training_step, save_training_step
from lerobot.optim.optimizers import load_optimizer_state, save_optimizer_state
from lerobot.optim.schedulers import load_scheduler_state, save_scheduler_state
from lerobot.utils.constants import TRAINING_STEP
from lerobot.utils.io_utils import load_json
from lerobot.utils.random_utils import save_rng_state

from hf_reflow.artifacts.io import disk_writes
from hf_reflow.errors import CheckpointError, ReflowError

TRAINING_STATE_FILE = "training_state.json"
TRAINING_STATE_FORMAT = "hf-reflow-training-state"
TRAINING_STATE_VERSION = 2  # 2: optimizer / scheduler / step in LeRobot's files (1 kept them in training_state.json)
_STATE_TENSORS = "training_state.safetensors"  # EMA shadow weights, grad scaler
_MODEL_FILE = "model.safetensors"  # the trained (not EMA) weights of the prepared model
_TENSOR, _TUPLE, _ITEMS, _ARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
_MARKERS = {_TENSOR, _TUPLE, _ITEMS, _ARRAY}


def save_training_state(
    directory: str | Path, accelerator: Any, *, step: int, model, optimizer, scheduler, ema=None
) -> None:
    """Write what `--resume` needs for a bitwise-exact continuation to `directory` (every process calls it).

    Files (main process): LeRobot's `training_step.json` (`step`, number of processes), optimizer and
    scheduler files; `training_state.json` (EMA settings, grad scaler, Accelerate's step counter; tensors
    referenced by name) + `training_state.safetensors`; `model.safetensors`. Per process: `rng_<rank>.json`
    (Python, NumPy generators) + `rng_<rank>.safetensors` (torch CPU / CUDA generators). Under FSDP the
    sharded model and optimizer go through Accelerate's FSDP savers (loaded back with `weights_only=True`).
    """
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fsdp = _distributed_kind(accelerator) == "fsdp"
    if fsdp:  # collective: every process takes part
        from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

        save_fsdp_model(accelerator.state.fsdp_plugin, accelerator, model, str(directory))
        save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(directory))
    if accelerator.is_main_process:
        tensors: dict[str, torch.Tensor] = {}
        scaler = getattr(accelerator, "scaler", None)
        state = {
            "format": TRAINING_STATE_FORMAT,
            "version": TRAINING_STATE_VERSION,
            "accelerator_step": int(accelerator.step),
            "ema": None if ema is None else _encode(ema.state_dict(), tensors, "ema"),
            "scaler": None if scaler is None else _encode(scaler.state_dict(), tensors, "scaler"),
        }
        with disk_writes(directory):
            save_training_step(step, directory, num_processes=accelerator.num_processes)
            save_rng_state(directory)  # for LeRobot's loader only (see the module docstring)
            save_scheduler_state(scheduler, directory)
            if not fsdp:
                save_optimizer_state(optimizer, directory)
                save_model(accelerator.unwrap_model(model), str(directory / _MODEL_FILE))
            save_file(tensors, str(directory / _STATE_TENSORS))
        (directory / TRAINING_STATE_FILE).write_text(json.dumps(state))
    rng_tensors: dict[str, torch.Tensor] = {}
    rng = _encode(_rng_state(), rng_tensors, "rng")
    with disk_writes(directory):
        save_file(rng_tensors, str(directory / f"rng_{accelerator.process_index}.safetensors"))
    (directory / f"rng_{accelerator.process_index}.json").write_text(json.dumps(rng))


def load_training_state(directory: str | Path, accelerator: Any, *, model, optimizer, scheduler, ema=None) -> int:
    """Restore what `save_training_state` wrote and return its step. Reads only JSON and safetensors: a
    pickle in the folder (e.g. Accelerate's `custom_checkpoint_0.pkl` from an older hf-reflow) is never
    opened; a folder without `training_state.json` is refused with a `CheckpointError`.
    """
    directory = Path(directory)
    state = _read_state_json(directory / TRAINING_STATE_FILE, directory)
    rng_json = directory / f"rng_{accelerator.process_index}.json"
    try:
        saved_processes = load_json(directory / TRAINING_STEP).get("num_processes")
    except (OSError, ValueError, AttributeError):
        saved_processes = None
    if saved_processes != accelerator.num_processes or not rng_json.is_file():
        raise CheckpointError(
            f"the training state in {str(directory)!r} was written by {saved_processes} process(es); "
            f"resume with the same number of processes (this run has {accelerator.num_processes})."
        )
    try:
        _restore(directory, state, rng_json, accelerator, model, optimizer, scheduler, ema)
        return load_training_step(directory)
    except ReflowError:
        raise
    except Exception as e:  # a damaged or hand-edited state: one line, not a traceback
        message = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(
            f"cannot resume from {str(directory)!r}: its training state is damaged ({type(e).__name__}: {message}); "
            "delete that checkpoint folder to resume from an earlier one, or start over in a new --output_dir."
        ) from None


def _restore(directory: Path, state: dict, rng_json: Path, accelerator, model, optimizer, scheduler, ema) -> None:
    from safetensors.torch import load_file, load_model

    if _distributed_kind(accelerator) == "fsdp":
        from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

        load_fsdp_model(accelerator.state.fsdp_plugin, accelerator, model, str(directory))
        load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(directory))
    else:
        unwrapped = accelerator.unwrap_model(model)
        device = next(iter(unwrapped.parameters())).device
        load_model(unwrapped, str(directory / _MODEL_FILE), device=str(device))
        load_optimizer_state(optimizer, directory)
    load_scheduler_state(scheduler, directory)
    tensors = load_file(str(directory / _STATE_TENSORS))
    _restore_ema(directory, state, tensors, ema)
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(_decode(state["scaler"], tensors))
    accelerator.step = int(state["accelerator_step"])
    rng_tensors = load_file(str(directory / f"rng_{accelerator.process_index}.safetensors"))
    _set_rng_state(_decode(json.loads(rng_json.read_text()), rng_tensors))


def _restore_ema(directory: Path, state: dict, tensors: dict[str, torch.Tensor], ema: Any) -> None:
    if (ema is None) != (state["ema"] is None):
        raise CheckpointError(f"the training state in {str(directory)!r} does not match this run's EMA setting.")
    if ema is None:
        return
    ema_state = _decode(state["ema"], tensors)
    shadow = ema_state.get("shadow_params")
    if not isinstance(shadow, list) or len(shadow) != len(ema.shadow_params):
        raise ValueError("the EMA shadow parameters do not match the model")
    ema_state["shadow_params"] = [
        saved.to(device=now.device, dtype=now.dtype) for saved, now in zip(shadow, ema.shadow_params, strict=True)
    ]
    ema.load_state_dict(ema_state)


def _read_state_json(file: Path, directory: Path) -> dict:
    if not file.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in (".pkl", ".bin", ".pt", ".pth"))
        found = f" (it holds {', '.join(pickles[:4])}: pickles, which hf-reflow never loads)" if pickles else ""
        raise CheckpointError(
            f"{str(directory)!r} holds no hf-reflow training state ({TRAINING_STATE_FILE}){found}; it was written "
            "by an older hf-reflow or another tool: delete that checkpoint folder to resume from an earlier one, "
            "or start over in a new --output_dir."
        )
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{str(file)!r} is not readable JSON ({type(e).__name__}); delete that checkpoint folder.") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"{str(file)!r} is not an hf-reflow training state; delete that checkpoint folder.")
    if state.get("version") != TRAINING_STATE_VERSION:
        raise CheckpointError(
            f"{str(file)!r} has training-state version {state.get('version')!r}; this hf-reflow reads version "
            f"{TRAINING_STATE_VERSION}: resume with the hf-reflow that wrote it."
        )
    return state


def _distributed_kind(accelerator: Any) -> str:
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise CheckpointError(
            f"training checkpoints (save_every, resume) support single-process, DDP and FSDP runs, not {kind.value}; "
            "set --save_every=0 or launch with another Accelerate config."
        )
    return "plain"


def _rng_state() -> dict[str, Any]:
    """This process's random generators, as Accelerate saved them (Python, NumPy, torch CPU, CUDA)."""
    import random

    import numpy as np

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """`value` as JSON, its tensors moved into `tensors` (referenced by name); tuples, non-string dict keys
    and NumPy arrays are tagged so that `_decode` gives back the same types. Anything else is refused."""
    if isinstance(value, torch.Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {_TENSOR: name}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {_ARRAY: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not value.keys() & _MARKERS:
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {_ITEMS: [[_encode(k, tensors, f"{path}.key"), _encode(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    raise TypeError(f"the training state holds a {type(value).__name__} at {path}, which is not stored (JSON/safetensors only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `_encode`: plain data and tensors, never an object built from a name in the file."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {_TENSOR}:
        return tensors[value[_TENSOR]]
    if value.keys() == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if value.keys() == {_ITEMS}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_ITEMS]}
    if value.keys() == {_ARRAY, "dtype"}:
        import numpy as np

        dtype = np.dtype(str(value["dtype"]))
        if dtype.kind not in "biuf":
            raise ValueError(f"array dtype {dtype} is not numeric")
        return np.asarray(value[_ARRAY], dtype=dtype)
    return {k: _decode(v, tensors) for k, v in value.items()}
