"""The student of a stage: built new, copied from its teacher, or loaded from `policy.path`.

A reflow or distill student either starts from the teacher's weights (`init_from_teacher`, the default)
or is a new policy of the teacher's type that keeps the teacher's processors (same normalised action space).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors
from hf_reflow.configs import TrainConfig
from hf_reflow.data import policy_features
from hf_reflow.errors import ConfigError, DataError, ReflowError
from hf_reflow.refs import CheckpointRef
from hf_reflow.training.teacher import OnlineTeacher, check_compatible

logger = logging.getLogger(__name__)


@dataclass
class Student:
    """The policy being trained and the processors its checkpoints are saved with."""

    policy: nn.Module
    preprocessor: Any
    postprocessor: Any


def build_student(cfg: TrainConfig, teacher: OnlineTeacher | None, meta: Any, device: torch.device) -> Student:
    """The student of a stage from its resolved `cfg.policy`: weights from `pretrained_path` (a 1-RF's
    `policy.path`, or the teacher for `init_from_teacher`), else a new policy (a new reflow student keeps
    the teacher's processors: the same normalised action space)."""
    # `device` picks the accelerator (`_make_accelerator`); the policy goes where Accelerate puts it.
    policy_cfg = copy.deepcopy(cfg.policy)  # cfg stays as parsed: it is what train_config.json records
    if cfg.stage == "shortcut":  # the student also reads its step size, from a zero-initialised input
        _set_fields(policy_cfg, step_size_conditioning=True, shortcut_min_step=cfg.shortcut.min_step)
    if cfg.stage == "meanflow":  # the step size is the interval t - r of its average velocity
        _set_fields(policy_cfg, step_size_conditioning=True, shortcut_min_step=cfg.meanflow.MIN_STEP, step_embed_scale=1.0)
    source, rename = policy_cfg.pretrained_path, cfg.dataset.rename_map
    if source is None:
        if rename and teacher is None:  # lerobot-train refuses it too: a new policy takes the dataset's names
            raise ConfigError(
                "--rename_map needs a pretrained policy (--policy.path=...); a new policy reads the dataset's own "
                f"keys, so drop --rename_map. Got {rename}."
            )
        student = new_student(policy_cfg, meta, device, rename)
        if teacher is not None:
            check_compatible(teacher.config, student.policy.config)
            student.preprocessor, student.postprocessor = load_processors(
                teacher.ref, teacher.config, device=device, rename_map=rename
            )
        return student
    # a 1-RF's policy.path, or the teacher (the implicit policy.path of its student), resolved once by the teacher
    if teacher is not None and cfg.init_from_teacher:
        ref = teacher.ref
    elif cfg.stage == "flow_matching":
        ref = CheckpointRef.of(source, flag="policy.path")
    else:
        ref = CheckpointRef.of(source, revision=cfg.teacher.revision, flag="teacher.path")
    policy = load_policy(ref, device=device, config=policy_cfg)
    _deepen(policy, load_config(ref), ref.source)
    pre, post = load_processors(ref, policy_cfg, device=device, rename_map=rename)
    return Student(policy, pre, post)


def _deepen(policy: nn.Module, start: Any, source: str) -> None:
    """A student with more residual blocks than the checkpoint it starts from (`--policy.num_blocks` above its
    teacher's or its `policy.path`'s; flow_mlp): LeRobot's loader fills the first blocks and leaves the added ones
    random, which would start the student away from that checkpoint; silenced, they start as the identity, so the
    student starts as exactly the checkpoint with more capacity. (Fewer blocks are refused at parse time.)"""
    have, want = getattr(start, "num_blocks", None), getattr(policy.config, "num_blocks", None)
    if have is None or want is None or want <= have:
        return
    if not hasattr(getattr(policy, "model", None), "silence_blocks"):
        raise ConfigError(
            f"a {policy.config.type} student cannot add residual blocks to the checkpoint it starts from "
            f"({source!r}: {have} -> {want}); keep num_blocks={have}."
        )
    policy.model.silence_blocks(first=have)
    # LeRobot's loader has just warned of the added blocks' missing keys: say that they are meant
    logger.warning("blocks %d-%d of the student are new (its start %r has %d) and start silent, so the student "
                   "starts as exactly that checkpoint", have, want - 1, source, have)  # fmt: skip


def new_student(policy_cfg: Any, meta: Any, device: torch.device, rename_map: dict[str, str] | None = None) -> Student:
    """A freshly initialised policy of config `policy_cfg` for the dataset `meta`, with processors from its stats
    (its inputs named as `rename_map` says: dataset key -> policy key)."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    inputs, policy_cfg.output_features = policy_features(meta)
    policy_cfg.input_features = {(rename_map or {}).get(key, key): feature for key, feature in inputs.items()}
    policy_cfg.device = device.type
    try:
        _fill_task_vocabulary(policy_cfg, meta)
        policy_cfg.__post_init__()
        policy = get_policy_class(policy_cfg.type)(policy_cfg).to(device)
    except (ValueError, KeyError) as e:
        if isinstance(e, ReflowError):
            raise
        raise DataError(
            f"cannot build a {policy_cfg.type} policy for dataset {meta.repo_id!r}: {e}. Dataset features: "
            f"{', '.join(sorted(meta.features))}."
        ) from None
    pre, post = make_pre_post_processors(policy_cfg, dataset_stats=meta.stats)
    return Student(policy, pre, post)


def _fill_task_vocabulary(policy_cfg: Any, meta: Any) -> None:
    """Give a task-conditioned policy (`tasks` + `task_conditioning` fields) the dataset's task strings.

    Only a dataset with two or more tasks needs it: with one, the task says nothing the state does not.
    """
    if not getattr(policy_cfg, "task_conditioning", False) or getattr(policy_cfg, "tasks", None):
        return
    tasks = list(meta.tasks.sort_values("task_index").index)  # task string -> task_index, in index order
    if len(tasks) >= 2:
        policy_cfg.tasks = [str(task) for task in tasks]


def _set_fields(policy_cfg: Any, **values: Any) -> None:
    """Set policy config fields the stage needs, and re-run the config's own checks."""
    for key, value in values.items():
        setattr(policy_cfg, key, value)
    try:
        policy_cfg.__post_init__()
    except ValueError as e:
        raise ConfigError(f"invalid policy settings {values}: {e}") from None
