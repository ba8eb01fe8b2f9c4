"""Checkpoints in LeRobot's `pretrained_model/` layout: resolve, load, save atomically.

A checkpoint folder is what stock LeRobot loads (`config.json`, `model.safetensors`, pre/post
processor JSON + stats) plus `reflow.json`, hf-reflow's lineage metadata, kept out of `config.json`
because stock loading rejects unknown keys there.

Nothing loaded from a checkpoint runs code: processor steps come only from LeRobot's step registry
(`check_processor_steps`), and the training state for `--resume` is JSON + safetensors, no pickle
(`save_training_state` / `load_training_state`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from hf_reflow.errors import CheckpointError, ReflowError

REFLOW_INFO = "reflow.json"
PRETRAINED_DIR = "pretrained_model"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_checkpoint(path_or_repo: str | Path, *, revision: str | None = None) -> str:
    """The local folder of a checkpoint: a folder holding `config.json` (a run dir resolves to its final
    `pretrained_model/`), or a Hub repo id downloaded through huggingface_hub's cache (`HF_HUB_OFFLINE` honoured).
    """
    path = Path(path_or_repo)
    for candidate in (path, path / PRETRAINED_DIR):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if path.exists():
        raise CheckpointError(
            f"{str(path)!r} holds no checkpoint (no config.json in it or in {PRETRAINED_DIR}/); "
            "pass a training output dir or its pretrained_model/ folder."
        )
    if _REPO_ID.match(str(path_or_repo)):
        from hf_reflow.errors import HubError
        from hf_reflow.hub import Hub

        try:
            return str(Hub().download(str(path_or_repo), revision=revision))
        except HubError as e:
            raise CheckpointError(f"checkpoint {str(path_or_repo)!r} is no local folder; as a Hub repo id: {e}") from None
    raise CheckpointError(f"checkpoint {str(path_or_repo)!r} is neither a local folder nor a Hub repo id (user/name).")


def load_config(path_or_repo: str, *, revision: str | None = None) -> Any:
    """The LeRobot policy config of a checkpoint, without loading weights."""
    from lerobot.configs.policies import PreTrainedConfig

    import hf_reflow.policies.flow_mlp  # noqa: F401  (registers the built-in policy type)

    source = resolve_checkpoint(path_or_repo, revision=revision)
    try:
        return PreTrainedConfig.from_pretrained(source)
    except Exception as e:
        raise CheckpointError(
            f"cannot read the policy config of {source!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Check the path / repo id, or set HF_HUB_OFFLINE=0 to allow a download."
        ) from None


def load_policy(path_or_repo: str, *, device: torch.device | str = "cpu", revision: str | None = None, config=None):
    """Load a LeRobot policy (any registered type) from a checkpoint onto `device`, in eval mode."""
    from lerobot.policies.factory import get_policy_class

    source = resolve_checkpoint(path_or_repo, revision=revision)
    config = load_config(source) if config is None else config
    config.device = torch.device(device).type
    policy = get_policy_class(config.type).from_pretrained(source, config=config)
    return policy.to(device)


def load_processors(
    path_or_repo: str,
    config: Any,
    *,
    device: torch.device | str = "cpu",
    revision=None,
    allow_unregistered_processor_steps: bool = False,
):
    """The checkpoint's own (pre, post) processors, with their device step pointed at `device`.

    Every step must be one LeRobot finds in its step registry (see `check_processor_steps`): a checkpoint
    never gets to name a callable that loading would import and call. `allow_unregistered_processor_steps`
    (like `trust_remote_code`) lifts that for a local folder the caller trusts; a Hub id is always checked.
    """
    from lerobot.policies.factory import make_pre_post_processors

    source = resolve_checkpoint(path_or_repo, revision=revision)
    trusted = allow_unregistered_processor_steps and Path(path_or_repo).exists()
    if not trusted:
        check_processor_steps(source, config, trust_hint=Path(path_or_repo).exists())
    overrides = {"device_processor": {"device": str(device)}}
    return make_pre_post_processors(config, pretrained_path=source, preprocessor_overrides=overrides)


def check_processor_steps(folder: str | Path, config: Any = None, *, trust_hint: bool = True) -> None:
    """Refuse processor JSON whose steps would make LeRobot import a path the checkpoint names.

    LeRobot 0.6.1's `DataProcessorPipeline.from_pretrained` resolves a step by its `registry_name` in
    `ProcessorStepRegistry` or, without one, by importing the `class` path the JSON names and calling it
    with the JSON's `config` (any importable callable: `subprocess.Popen`, `os.system`, ...). Allowed here:
    steps whose `registry_name` LeRobot, hf-reflow or an installed `lerobot_policy_*` plugin registered,
    and no `class` key at all. Raises `CheckpointError` (one line) naming the first offending step.
    """
    from lerobot.processor import ProcessorStepRegistry

    folder = Path(folder)
    _import_step_registrations(config, plugins=False)
    for filename in PROCESSOR_FILES:
        file = folder / filename
        if not file.is_file():
            continue  # LeRobot reports a missing pipeline file itself
        try:
            pipeline = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{str(file)!r} is not a readable processor JSON ({type(e).__name__}).") from None
        steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
        if not isinstance(steps, list):
            raise CheckpointError(f"{str(file)!r} is not a processor pipeline (no list of steps).")
        for index, entry in enumerate(steps):
            name = entry.get("registry_name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in ProcessorStepRegistry.list():
                _import_step_registrations(config, plugins=True)  # an installed plugin may register it
            problem = _step_problem(entry, set(ProcessorStepRegistry.list()))
            if problem is not None:
                hint = (
                    "; if you trust this local checkpoint, load it with allow_unregistered_processor_steps=True"
                    if trust_hint
                    else ""
                )
                raise CheckpointError(
                    f"refusing processor step {index} of {str(file)!r}: {problem}. hf-reflow only builds steps "
                    "registered by LeRobot, hf-reflow or an installed lerobot_policy_* plugin (install the plugin "
                    f"that registers it){hint}."
                )


PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
_PLUGINS_IMPORTED = False


def _step_problem(entry: Any, registered: set[str]) -> str | None:
    """Why a processor step entry is refused, or None when LeRobot would build it from the registry."""
    if not isinstance(entry, dict):
        return f"it is a {type(entry).__name__}, not a step object"
    if "class" in entry:
        return f"it names the import path {str(entry['class'])[:200]!r} ('class'), which is never imported from a checkpoint"
    name = entry.get("registry_name")
    if not isinstance(name, str):
        return "it has no registry_name"
    if name not in registered:
        return f"its registry_name {name[:200]!r} is not a registered processor step"
    return None


def _import_step_registrations(config: Any, *, plugins: bool) -> None:
    """Import installed code that registers processor steps (never a module a checkpoint names).

    Always: hf-reflow's policy and the `processor_<type>` module of the config's (registered) policy class,
    the module LeRobot itself imports for that type. With `plugins`: installed `lerobot_policy_*` packages.
    """
    global _PLUGINS_IMPORTED
    import importlib
    import importlib.util

    import lerobot.processor  # noqa: F401  (LeRobot's own steps)

    import hf_reflow.policies.flow_mlp  # noqa: F401

    if config is not None:
        module = type(config).__module__.replace("configuration_", "processor_")
        if module != type(config).__module__:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                importlib.import_module(module)
    if plugins and not _PLUGINS_IMPORTED:
        import importlib.metadata
        import logging

        _PLUGINS_IMPORTED = True
        for dist in importlib.metadata.distributions():
            name = dist.metadata.get("Name") or ""
            if name.replace("-", "_").startswith("lerobot_policy_"):
                try:
                    importlib.import_module(name.replace("-", "_"))
                except Exception:  # a broken plugin must not stop loading checkpoints it does not concern
                    logging.getLogger(__name__).warning("could not import the LeRobot plugin %s", name, exc_info=True)


def read_reflow_info(path: str | Path) -> dict[str, Any]:
    """`reflow.json` of a local checkpoint ({} for a checkpoint hf-reflow did not train)."""
    file = Path(resolve_checkpoint(path)) / REFLOW_INFO
    return json.loads(file.read_text()) if file.is_file() else {}


def save_checkpoint(
    directory: Path,
    policy: torch.nn.Module,
    preprocessor: Any,
    postprocessor: Any,
    info: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a stock-loadable checkpoint to `directory` via a temporary sibling, then rename it in place."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp, state_dict=state_dict)
    preprocessor.save_pretrained(tmp)
    postprocessor.save_pretrained(tmp)
    (tmp / REFLOW_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    _replace_dir(tmp, directory)
    return directory


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing an older `dst` with only a brief window without it."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)


# ---- training state (`--resume`): JSON + safetensors, never a pickle -------------------------------------
TRAINING_STATE_FILE = "training_state.json"
TRAINING_STATE_FORMAT = "hf-reflow-training-state"
TRAINING_STATE_VERSION = 1
_STATE_TENSORS = "training_state.safetensors"  # optimizer moments, EMA shadow weights
_MODEL_FILE = "model.safetensors"  # the trained (not EMA) weights of the prepared model
_TENSOR, _TUPLE, _ITEMS, _ARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
_MARKERS = {_TENSOR, _TUPLE, _ITEMS, _ARRAY}


def save_training_state(directory: str | Path, accelerator: Any, *, model, optimizer, scheduler, ema=None) -> None:
    """Write what `--resume` needs for a bitwise-exact continuation to `directory` (every process calls it).

    Files: `training_state.json` (scheduler, optimizer hyper-parameters, EMA settings, grad scaler,
    Accelerate's step counter; tensors referenced by name) + `training_state.safetensors` (optimizer
    moments, EMA shadow weights) + `model.safetensors`, written by the main process, and per process
    `rng_<rank>.json` (Python, NumPy generators) + `rng_<rank>.safetensors` (torch CPU / CUDA generators).
    Under FSDP the sharded model and optimizer go through Accelerate's FSDP savers (loaded back with
    `weights_only=True`).
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
            "num_processes": accelerator.num_processes,
            "step": int(accelerator.step),
            "optimizer": None if fsdp else _encode(optimizer.state_dict(), tensors, "optimizer"),
            "scheduler": _encode(scheduler.state_dict(), tensors, "scheduler"),
            "ema": None if ema is None else _encode(ema.state_dict(), tensors, "ema"),
            "scaler": None if scaler is None else _encode(scaler.state_dict(), tensors, "scaler"),
        }
        save_file(tensors, str(directory / _STATE_TENSORS))
        if not fsdp:
            save_model(accelerator.unwrap_model(model), str(directory / _MODEL_FILE))
        (directory / TRAINING_STATE_FILE).write_text(json.dumps(state))
    rng_tensors: dict[str, torch.Tensor] = {}
    rng = _encode(_rng_state(), rng_tensors, "rng")
    save_file(rng_tensors, str(directory / f"rng_{accelerator.process_index}.safetensors"))
    (directory / f"rng_{accelerator.process_index}.json").write_text(json.dumps(rng))


def load_training_state(directory: str | Path, accelerator: Any, *, model, optimizer, scheduler, ema=None) -> None:
    """Restore what `save_training_state` wrote. Reads only JSON and safetensors: a pickle in the folder
    (e.g. Accelerate's `custom_checkpoint_0.pkl` from an older hf-reflow) is never opened; a folder
    without `training_state.json` is refused with a `CheckpointError`.
    """
    directory = Path(directory)
    state = _read_state_json(directory / TRAINING_STATE_FILE, directory)
    rng_json = directory / f"rng_{accelerator.process_index}.json"
    if state.get("num_processes") != accelerator.num_processes or not rng_json.is_file():
        raise CheckpointError(
            f"the training state in {str(directory)!r} was written by {state.get('num_processes')} process(es); "
            f"resume with the same number of processes (this run has {accelerator.num_processes})."
        )
    try:
        _restore(directory, state, rng_json, accelerator, model, optimizer, scheduler, ema)
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

    fsdp = _distributed_kind(accelerator) == "fsdp"
    tensors = load_file(str(directory / _STATE_TENSORS))
    if fsdp:
        from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

        load_fsdp_model(accelerator.state.fsdp_plugin, accelerator, model, str(directory))
        load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(directory))
    else:
        unwrapped = accelerator.unwrap_model(model)
        device = next(iter(unwrapped.parameters())).device
        load_model(unwrapped, str(directory / _MODEL_FILE), device=str(device))
        optimizer.load_state_dict(_decode(state["optimizer"], tensors))
    scheduler.load_state_dict(_decode(state["scheduler"], tensors))
    if (ema is None) != (state["ema"] is None):
        raise CheckpointError(f"the training state in {str(directory)!r} does not match this run's EMA setting.")
    if ema is not None:
        ema_state = _decode(state["ema"], tensors)
        shadow = ema_state.get("shadow_params")
        if not isinstance(shadow, list) or len(shadow) != len(ema.shadow_params):
            raise ValueError("the EMA shadow parameters do not match the model")
        ema_state["shadow_params"] = [
            saved.to(device=now.device, dtype=now.dtype) for saved, now in zip(shadow, ema.shadow_params, strict=True)
        ]
        ema.load_state_dict(ema_state)
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(_decode(state["scaler"], tensors))
    accelerator.step = int(state["step"])
    rng_tensors = load_file(str(directory / f"rng_{accelerator.process_index}.safetensors"))
    _set_rng_state(_decode(json.loads(rng_json.read_text()), rng_tensors))


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
