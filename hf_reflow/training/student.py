"""The student of a stage: built new, copied from its teacher, or loaded from `policy.path`.

A reflow or distill student either starts from the teacher's weights (`init_from_teacher`, the default)
or is a new policy of the teacher's type that keeps the teacher's processors (same normalised action space).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors
from hf_reflow.configs import TrainConfig
from hf_reflow.data import policy_features
from hf_reflow.errors import CheckpointError, ConfigError, DataError, ReflowError
from hf_reflow.policies.factory import supported_policy_types
from hf_reflow.training.teacher import OnlineTeacher, check_compatible


@dataclass
class Student:
    """The policy being trained and the processors its checkpoints are saved with."""

    policy: nn.Module
    preprocessor: Any
    postprocessor: Any


def build_student(cfg: TrainConfig, teacher: OnlineTeacher | None, meta: Any, device: torch.device) -> Student:
    """The student of a stage: a new policy, a copy of the teacher (`init_from_teacher`), or `policy.path`."""
    # `device` picks the accelerator (`_make_accelerator`); the policy goes where Accelerate puts it.
    overrides = {k: v for k, v in cfg.policy.items() if k not in ("type", "path", "device")}
    if cfg.stage == "shortcut":  # the student also reads its step size, from a zero-initialised input
        overrides.update(step_size_conditioning=True, shortcut_min_step=cfg.shortcut.min_step)
    if cfg.stage == "flow_matching":
        source = cfg.policy.get("path")
        if source is None:
            return new_student(cfg.policy.get("type", "flow_mlp"), overrides, meta, device)
    else:
        teacher_cfg = teacher.config
        if not cfg.init_from_teacher:
            _check_new_student_type(cfg, teacher_cfg)
            student = new_student(cfg.policy.get("type", teacher_cfg.type), overrides, meta, device)
            check_compatible(teacher_cfg, student.policy.config)
            student.preprocessor, student.postprocessor = load_processors(cfg.teacher.path, teacher_cfg, device=device)
            return student
        _check_teacher_type(cfg, teacher_cfg)
        source = cfg.teacher.path
    policy_cfg = load_config(source)
    _apply_overrides(policy_cfg, overrides)
    policy = load_policy(source, device=device, config=policy_cfg)
    pre, post = load_processors(source, policy_cfg, device=device)
    return Student(policy, pre, post)


def new_student(policy_type: str, overrides: dict, meta: Any, device: torch.device) -> Student:
    """A freshly initialised policy of `policy_type` for the dataset `meta`, with processors from its stats."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    if policy_type not in supported_policy_types():
        raise ConfigError(
            f"policy.type {policy_type!r} is not supported; choose one of {', '.join(supported_policy_types())}."
        )
    inputs, outputs = policy_features(meta)
    config_cls = PreTrainedConfig.get_choice_class(policy_type)
    try:
        policy_cfg = config_cls(input_features=inputs, output_features=outputs, device=device.type)
        _apply_overrides(policy_cfg, overrides)
        _fill_task_vocabulary(policy_cfg, meta)
        policy = get_policy_class(policy_type)(policy_cfg).to(device)
    except (ValueError, KeyError) as e:
        if isinstance(e, ReflowError):
            raise
        raise DataError(
            f"cannot build a {policy_type} policy for dataset {meta.repo_id!r}: {e}. Dataset features: "
            f"{', '.join(sorted(meta.features))}."
        ) from None
    pre, post = make_pre_post_processors(policy_cfg, dataset_stats=meta.stats)
    return Student(policy, pre, post)


def _check_teacher_type(cfg: TrainConfig, teacher_cfg: Any) -> None:
    """A student initialised from the teacher is the teacher's type: reject a recipe naming another one."""
    wanted = cfg.policy.get("type")
    explicit = cfg.policy != TrainConfig.__dataclass_fields__["policy"].default_factory()
    if explicit and wanted and wanted != teacher_cfg.type:
        raise CheckpointError(
            f"the teacher {cfg.teacher.path!r} is a {teacher_cfg.type} policy, but policy.type is {wanted!r} and "
            f"the student is initialised from the teacher; pass a {wanted} teacher checkpoint, or drop "
            f"policy.type (the student is a {teacher_cfg.type} copy of the teacher)."
        )


def _check_new_student_type(cfg: TrainConfig, teacher_cfg: Any) -> None:
    """A new student (init_from_teacher=false) keeps the teacher's processors: it must be the teacher's type."""
    wanted = cfg.policy.get("type", teacher_cfg.type)
    if wanted != teacher_cfg.type:
        padded = getattr(teacher_cfg, "max_action_dim", None)
        space = f" and its padded action space (max_action_dim={padded})" if padded else ""
        raise CheckpointError(
            f"the teacher {cfg.teacher.path!r} is a {teacher_cfg.type} policy, but policy.type is {wanted!r}: a new "
            f"student (init_from_teacher=false) keeps the teacher's processors (tokenizer, prompt format, "
            f"normalisation stats){space}, so it must be a {teacher_cfg.type} policy; set "
            f"--policy.type={teacher_cfg.type}."
        )


def _fill_task_vocabulary(policy_cfg: Any, meta: Any) -> None:
    """Give a task-conditioned policy (`tasks` + `task_conditioning` fields) the dataset's task strings.

    Only a dataset with two or more tasks needs it: with one, the task says nothing the state does not.
    """
    if not getattr(policy_cfg, "task_conditioning", False) or getattr(policy_cfg, "tasks", None):
        return
    tasks = list(meta.tasks.sort_values("task_index").index)  # task string -> task_index, in index order
    if len(tasks) >= 2:
        policy_cfg.tasks = [str(task) for task in tasks]


def _apply_overrides(policy_cfg: Any, overrides: dict[str, Any]) -> None:
    """Set policy config fields from the recipe's `policy:` section, rejecting unknown names."""
    valid = {f.name for f in dataclasses.fields(policy_cfg)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"unknown policy key(s) {', '.join('policy.' + k for k in unknown)} for type {policy_cfg.type!r}; "
            f"valid keys: type, path, {', '.join(sorted(valid))}."
        )
    for key, value in overrides.items():
        setattr(policy_cfg, key, value)
    try:
        policy_cfg.__post_init__()
    except ValueError as e:
        raise ConfigError(f"invalid policy settings {overrides}: {e}") from None
