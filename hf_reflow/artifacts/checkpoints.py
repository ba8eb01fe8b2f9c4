"""Checkpoints in LeRobot's `pretrained_model/` layout: resolve, load (`load_checkpoint`), save atomically.

A checkpoint folder is what stock LeRobot loads (`config.json`, `model.safetensors`, pre/post
processor JSON + stats) plus `reflow.json`, hf-reflow's lineage metadata, kept out of `config.json`
because stock loading rejects unknown keys there.

Nothing loaded from a checkpoint runs code: processor steps only from a per-policy-type allow-list, and
every file a checkpoint names only from inside it (`processor_safety.py`), and the training state for `--resume` is JSON + safetensors (`training_state.py`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_reflow import __version__
from hf_reflow.artifacts.io import disk_writes
from hf_reflow.artifacts.processor_safety import PROCESSOR_FILES, check_contained, check_processor_steps
from hf_reflow.atomic import atomic_path
from hf_reflow.data import dataset_source
from hf_reflow.errors import CheckpointError
from hf_reflow.hub import read_push_record
from hf_reflow.parsing.policy import decode_policy_config
from hf_reflow.policies.base import PolicyAdapter
from hf_reflow.policies.factory import adapter_class, adapter_for
from hf_reflow.refs import CONFIG_FILE, WEIGHTS, CheckpointRef
from hf_reflow.stages import DISTILL_STAGES, stage_k

REFLOW_INFO = "reflow.json"


def load_config(path_or_repo: str | CheckpointRef, *, revision: str | None = None) -> Any:
    """The LeRobot policy config of a checkpoint, without loading weights."""
    ref = CheckpointRef.of(path_or_repo, revision=revision)
    source = str(ref.local())
    check_contained(source, (CONFIG_FILE,))
    saved = ref.config()  # read from the folder `local()` returned: no second Hub request
    try:
        return decode_policy_config(saved)
    except Exception as e:
        raise CheckpointError(
            f"cannot read the policy config of {source!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Check the path / repo id, or set HF_HUB_OFFLINE=0 to allow a download."
        ) from None


def load_policy(path_or_repo: str | CheckpointRef, *, device: torch.device | str = "cpu", revision: str | None = None, config=None):
    """Load a LeRobot policy (any registered type) from a checkpoint onto `device`, in eval mode."""
    from lerobot.policies.factory import get_policy_class

    source = str(CheckpointRef.of(path_or_repo, revision=revision).local())
    config = load_config(source) if config is None else config
    config.device = torch.device(device).type
    check_weights(source)
    try:
        policy = get_policy_class(config.type).from_pretrained(source, config=config)
    except Exception as e:  # weights that do not fit the config (shapes, missing tensors)
        raise CheckpointError(
            f"cannot load the weights of {source!r} into its {config.type} config ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); the checkpoint is damaged or its model.safetensors "
            "and config.json do not belong together: use an intact checkpoint."
        ) from None
    return policy.to(device)


def check_weights(folder: str | Path) -> None:
    """Refuse a missing, truncated or foreign `model.safetensors` from its header alone (no weights read)."""
    from safetensors import safe_open

    file = Path(folder) / WEIGHTS
    check_contained(folder, (WEIGHTS,))
    if not file.is_file():
        raise CheckpointError(f"{str(folder)!r} has no {WEIGHTS}; the checkpoint is incomplete: use an intact one.")
    try:
        with safe_open(str(file), framework="pt") as weights:
            weights.keys()
    except Exception as e:  # SafetensorError: a bad header, or a file shorter than its header says
        raise CheckpointError(
            f"{str(file)!r} is not a readable safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
            "the checkpoint is damaged (e.g. an interrupted copy): use an intact one."
        ) from None


def load_processors(
    path_or_repo: str | CheckpointRef,
    config: Any,
    *,
    device: torch.device | str = "cpu",
    revision=None,
    allow_unregistered_processor_steps: bool = False,
    rename_map: dict[str, str] | None = None,
):
    """The checkpoint's own (pre, post) processors, with their device step pointed at `device` (and their
    rename step given `rename_map`, dataset key -> policy key, as lerobot-train's `--rename_map` does).

    Every step must be one LeRobot's factory builds for the policy type, with its own arguments (see
    `check_processor_steps`): a checkpoint never gets to name code or a model that loading would run. `allow_unregistered_processor_steps`
    (like `trust_remote_code`) lifts that for a local folder the caller trusts; a Hub id is always checked.
    """
    from lerobot.policies.factory import make_pre_post_processors

    ref = CheckpointRef.of(path_or_repo, revision=revision)
    source = str(ref.local())
    check_contained(source, PROCESSOR_FILES)
    if not (allow_unregistered_processor_steps and ref.is_local):  # a Hub checkpoint is never trusted
        check_processor_steps(source, config, trust_hint=ref.is_local)
    overrides = {"device_processor": {"device": str(device)}}
    if rename_map:
        overrides["rename_observations_processor"] = {"rename_map": dict(rename_map)}
    return make_pre_post_processors(config, pretrained_path=source, preprocessor_overrides=overrides)


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to sample: the LeRobot policy (eval mode), its adapter, processors and lineage."""

    source: str
    config: Any
    policy: torch.nn.Module
    adapter: PolicyAdapter
    preprocessor: Any
    postprocessor: Any
    info: dict[str, Any]  # reflow.json ({} for a checkpoint hf-reflow did not train)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # held while sampling with it


def load_checkpoint(path_or_repo: str | CheckpointRef, *, device: torch.device | str = "cpu", revision: str | None = None,
                    allow_unregistered_processor_steps: bool = False) -> LoadedCheckpoint:  # fmt: skip
    """Policy + adapter + processors + lineage of a checkpoint (local folder or Hub id).

    The policy type is checked against the adapters before any weight is read, and the processors
    (never trusted unless asked, see `load_processors`) before the weights.
    """
    ref = CheckpointRef.of(path_or_repo, revision=revision)  # CheckpointError for a bad path / repo id
    config = load_config(ref)
    adapter_class(config.type)  # ConfigError naming the supported types, before the weights
    pre, post = load_processors(ref, config, device=device,
                                allow_unregistered_processor_steps=allow_unregistered_processor_steps)  # fmt: skip
    policy = load_policy(ref, device=device, config=config)
    info = read_reflow_info(ref.folder) if ref.is_local else {}
    return LoadedCheckpoint(ref.source, config, policy, adapter_for(policy), pre, post, info)


class CheckpointCache:
    """Loaded checkpoints keyed by source, the least recently used dropped beyond `max_entries` (thread-safe).

    Loads through `load_checkpoint` with its defaults: processor steps are never trusted.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, LoadedCheckpoint] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was actually read

    def get(self, source: str) -> LoadedCheckpoint:
        with self._lock:
            if source in self._entries:
                self._entries.move_to_end(source)
                return self._entries[source]
        loaded = load_checkpoint(source)
        with self._lock:
            self.loads += 1
            self._entries[source] = loaded
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return loaded


def read_reflow_info(path: str | Path | CheckpointRef) -> dict[str, Any]:
    """`reflow.json` of a local checkpoint ({} for a checkpoint hf-reflow did not train)."""
    file = CheckpointRef.of(path).local() / REFLOW_INFO
    if not file.is_file():
        return {}
    try:
        info = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{str(file)!r} is not readable JSON ({type(e).__name__}); restore it or delete it "
                              "(the checkpoint then counts as a 1-RF without lineage).") from None  # fmt: skip
    if not isinstance(info, dict):
        raise CheckpointError(f"{str(file)!r} is not a JSON object of lineage; restore it or delete it.")
    k = info.get("k", 1)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 1000:
        raise CheckpointError(f"{str(file)!r} holds k={str(k)[:50]!r}, not a k-RF round number (an integer >= 0); "
                              "restore it or delete it (the checkpoint then counts as a 1-RF without lineage).")  # fmt: skip
    return info


def teacher_lineage(path: str | CheckpointRef) -> dict[str, Any]:
    """The teacher's `reflow.json` (for the student's k): {} when it has none or is a Hub id not at hand;
    a local one that is damaged is a `CheckpointError`."""
    ref = CheckpointRef.of(path)
    try:
        return read_reflow_info(ref)
    except CheckpointError:
        if ref.is_local:
            raise
        return {}


def stage_lineage(cfg: Any, *, num_processes: int, lr: float, teacher: CheckpointRef | None = None) -> dict[str, Any]:
    """The lineage of a stage trained with `cfg` (a `TrainConfig`), written to `reflow.json` beside the
    stock checkpoint files: stage, k, teacher and its commit, base model, couplings, data and settings.
    `teacher`: the run's resolved `cfg.teacher.path` (resolved here when not given)."""
    if teacher is None and cfg.teacher.path:
        teacher = CheckpointRef.of(cfg.teacher.path, revision=cfg.teacher.revision, flag="teacher.path")
    teacher_k = teacher_lineage(teacher).get("k", 1) if teacher is not None else 0
    student_of_teacher = cfg.stage != "flow_matching"
    start = cfg.policy.pretrained_path  # a 1-RF's `policy.path`; for a student, its teacher
    base = str(start) if start is not None and not student_of_teacher else None
    return {
        "hf_reflow_version": __version__,
        "stage": cfg.stage,
        "k": stage_k(cfg.stage, teacher_k),
        "distilled": cfg.stage in DISTILL_STAGES,
        "teacher": cfg.teacher.path if student_of_teacher else None,
        "teacher_commit": checkpoint_commit(teacher) if teacher is not None else None,
        "teacher_num_inference_steps": cfg.teacher.num_inference_steps if student_of_teacher else None,
        "teacher_solver": cfg.teacher.solver if student_of_teacher else None,
        "base_model": base,  # the model card's base_model
        "base_model_commit": checkpoint_commit(base) if base else None,
        "couplings_seen": cfg.couplings_seen(cfg.steps, num_processes) if student_of_teacher else 0,
        "coupling_reuse": cfg.coupling_reuse,
        "couplings_dataset": cfg.couplings.path,  # stored couplings; None = made online
        "dataset": dataset_source(cfg.dataset),  # repo id, root, revision and the commit it resolved to
        "train_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "num_processes": num_processes,
        "lr": lr,
        "time_sampler": _time_sampler(cfg),
        "loss": cfg.flow.loss,
        "seed": cfg.seed,
        "ema_decay": cfg.ema_decay,
        "num_steps": cfg.final_num_steps,
    }


def _time_sampler(cfg: Any) -> str:
    """How the stage drew its training times: the flow's sampler, or a distilled student's Euler grid
    (`fixed_t1` for one step, `euler_grid_<k>` for k)."""
    if cfg.stage not in DISTILL_STAGES:
        return cfg.flow.time_sampler
    return "fixed_t1" if cfg.final_num_steps == 1 else f"euler_grid_{cfg.final_num_steps}"


def checkpoint_commit(path_or_repo: str | CheckpointRef, *, revision: str | None = None) -> str | None:
    """The Hub commit a checkpoint comes from: a Hub id's snapshot, or what a pushed local folder recorded."""
    folder = CheckpointRef.of(path_or_repo, revision=revision).local()
    if folder.parent.name == "snapshots" and len(folder.name) == 40:  # huggingface_hub cache layout
        return folder.name
    return read_push_record(folder).get("commit")


def save_checkpoint(
    directory: Path,
    policy: torch.nn.Module,
    preprocessor: Any,
    postprocessor: Any,
    info: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a stock-loadable checkpoint to `directory` via a temporary sibling, then rename it in place."""
    with atomic_path(Path(directory)) as tmp, disk_writes(tmp):  # a half-written checkpoint never stays behind
        policy.save_pretrained(tmp, state_dict=state_dict)
        preprocessor.save_pretrained(tmp)
        postprocessor.save_pretrained(tmp)
        (tmp / REFLOW_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    return Path(directory)


