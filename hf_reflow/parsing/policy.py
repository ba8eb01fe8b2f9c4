"""The student's policy config: a checkpoint's config.json or a new `--policy.type`, with the `--policy.<field>` flags decoded against that type's config class."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import draccus
from lerobot.configs.policies import PreTrainedConfig

from hf_reflow.configs.train import TrainConfig
from hf_reflow.errors import ConfigError
from hf_reflow.parsing.argv import Pair
from hf_reflow.parsing.decode import run_draccus, setting_arg
from hf_reflow.policies.factory import supported_policy_types
from hf_reflow.refs import CheckpointRef

DEFAULT_POLICY_TYPE = "flow_mlp"  # hf-reflow's built-in policy (`hf_reflow.policies.flow_mlp`)


def decode_policy(cls: type, section: dict[str, Any], args: list[str]) -> PreTrainedConfig:
    """A policy config of class `cls` from a mapping (a checkpoint's config.json + the recipe's section) and
    `--<key>=v` flags, decoded by draccus as `PreTrainedConfig.from_pretrained` does."""
    args = [_policy_arg(cls, arg) for arg in args]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(section, f)
    try:
        with draccus.config_type("json"):
            return run_draccus(cls, args, config_file=f.name, prefix="policy.")
    finally:
        os.unlink(f.name)


def decode_policy_config(saved: dict[str, Any]) -> PreTrainedConfig:
    """A saved `config.json` mapping (with its `type`) decoded as LeRobot's `PreTrainedConfig.from_pretrained`
    does (the `type` picks the class, draccus decodes the rest), without the copy LeRobot 0.6.1 leaves behind: it
    writes the config to a `NamedTemporaryFile(delete=False)` it never removes, one file in the temp dir per load
    (a Space server loading checkpoints all day fills it)."""
    section = dict(saved)
    return decode_policy(policy_config_class(section.pop("type")), section, [])


def _policy_arg(cls: type, arg: str) -> str:
    key, _, raw = arg[2:].partition("=")
    hints = _hints(cls)
    if "." in key or key not in hints:
        return arg
    return f"--{key}={setting_arg(Pair(f'policy.{key}', raw, raw=True), hints[key])}"


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation in a plugin's class: values go to draccus unconverted
        return {}


def policy_config_class(policy_type: str) -> type:
    """LeRobot's config class of a policy type (`PreTrainedConfig.get_choice_class`)."""
    # Imported here, not at the top, to register flow_mlp: its package loads LeRobot's policies (~4 s), which
    # a command line that fails on a misspelt key should not wait for. (No import circle: policies sit below.)
    import hf_reflow.policies.flow_mlp  # noqa: F401

    try:
        return PreTrainedConfig.get_choice_class(policy_type)
    except (KeyError, ValueError):
        known = ", ".join(sorted(PreTrainedConfig.get_known_choices()))
        raise ConfigError(f"policy.type {policy_type!r} is not a LeRobot policy type; known types: {known}.") from None


def check_policy_keys(cls: type, policy_type: str, keys: list[str]) -> None:
    """`--policy.<key>` names against the type's config class, before anything decodes or loads."""
    valid = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted({k.split(".")[0] for k in keys} - valid)
    if unknown:
        raise ConfigError(
            f"unknown policy key(s) {', '.join('policy.' + k for k in unknown)} for type {policy_type!r}; "
            f"valid keys: type, path, {', '.join(sorted(valid))}."
        )


def policy_config(
    cfg: TrainConfig, section: dict[str, Any], args: list[str], *, teacher_config: dict[str, Any] | None = None
) -> PreTrainedConfig:
    """The student's LeRobot policy config, as lerobot-train resolves `--policy.path` / `--policy.type`.

    The starting point is a checkpoint's config.json: `policy.path` for a 1-RF, the teacher's for a student
    initialised from it (the teacher is an implicit `policy.path`); else a new config of `policy.type` (the
    teacher's type for a new reflow student, flow_mlp for a 1-RF). The recipe's `policy:` keys and the
    `--policy.<field>` flags go on top, checked against that type's config class. `pretrained_path` records
    where the weights come from.
    """
    section = dict(section)
    flags = dict(arg[2:].partition("=")[::2] for arg in args)  # `--key=value` -> {key: value}
    path, wanted = (flags.pop(k, None) or section.get(k) for k in ("path", "type"))  # a flag wins over the recipe
    section.pop("path", None), section.pop("type", None)
    recorded = section.pop("pretrained_path", None)  # a run's train_config.json read back as a recipe
    if cfg.stage == "flow_matching":  # a student's recorded start is its teacher, given again by teacher.path
        path = path or recorded
    source, base, teacher = _starting_point(cfg, path, teacher_config)
    policy_type = _student_type(cfg, base.pop("type", None), wanted, teacher)
    cls = policy_config_class(policy_type)
    if policy_type not in supported_policy_types():  # a LeRobot type hf-reflow cannot sample or train
        raise ConfigError(
            f"policy.type {policy_type!r} has no hf-reflow adapter; choose one of {', '.join(supported_policy_types())} "
            "(or register one: hf_reflow.policies.factory.register_adapter)."
        )
    check_policy_keys(cls, policy_type, [*section, *flags])
    if base and "device" not in section and "device" not in flags:
        base["device"] = None  # a checkpoint's saved device is not this machine's: auto-select, as a new config
    try:
        policy = decode_policy(cls, {**base, **section}, [f"--{k}={v}" for k, v in flags.items()])
    except ConfigError as e:
        if not base:
            raise
        raise ConfigError(f"{e} (the student's config: the config.json of {source!r}, then the policy settings)") from None
    _check_device(policy, flags.get("device") or section.get("device"))
    _check_depth(policy, base, source, cfg.stage)
    if getattr(policy, "use_peft", False):
        # Training full weights and saving `use_peft: true` makes a checkpoint stock `make_policy` cannot load.
        raise ConfigError(
            f"policy.use_peft=true: hf-reflow trains every weight of the student (no PEFT / LoRA adapters), got "
            f"use_peft={policy.use_peft!r}{' from ' + repr(source) if source else ''}; drop --policy.use_peft or pass "
            "--policy.use_peft=false."
        )
    policy.pretrained_path = Path(source) if source else None
    return policy


def _check_depth(policy: PreTrainedConfig, base: dict[str, Any], source: str | None, stage: str) -> None:
    """A student that starts from a checkpoint keeps all its residual blocks (`num_blocks`, flow_mlp): LeRobot's
    non-strict loader would drop the rest silently. More blocks are fine: they start silent (`training.student`)."""
    have, want = base.get("num_blocks"), getattr(policy, "num_blocks", None)
    if not isinstance(have, int) or not isinstance(want, int) or want >= have:
        return
    instead = "a new 1-RF without --policy.path" if stage == "flow_matching" else "a new student with init_from_teacher=false"
    raise ConfigError(
        f"the student starts from {source!r}, which has {have} residual blocks, but policy.num_blocks is {want}: its "
        f"last {have - want} would be dropped. Use num_blocks >= {have} (added blocks start as the identity), or {instead}."
    )


def _check_device(policy: PreTrainedConfig, asked: str | None) -> None:
    """LeRobot falls back to the CPU, with a log line, when the device asked for is missing: refuse instead."""
    if asked and str(asked).split(":")[0] != str(policy.device).split(":")[0]:
        raise ConfigError(
            f"policy.device={asked!r} is not available on this machine (it would train on {policy.device!r}); "
            f"pass --policy.device={policy.device} or run where {asked} is available."
        )


def _starting_point(
    cfg: TrainConfig, path: str | None, teacher_config: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """(where the student's weights come from, the config.json it starts as, the teacher's config.json)."""
    if cfg.stage == "flow_matching":
        return path, (CheckpointRef.of(path, flag="policy.path").config() if path else {}), None
    if path:
        raise ConfigError(
            f"policy.path is for a flow_matching stage; a {cfg.stage} student starts from its teacher "
            f"(teacher.path), or new with init_from_teacher=false; drop --policy.path={path}."
        )
    teacher = teacher_config or CheckpointRef.of(cfg.teacher.path, revision=cfg.teacher.revision, flag="teacher.path").config()
    if cfg.init_from_teacher:
        return cfg.teacher.path, dict(teacher), teacher
    return None, {}, teacher


def _student_type(cfg: TrainConfig, base_type: str | None, wanted: str | None, teacher: dict | None) -> str:
    """The student's policy type, refusing a `policy.type` that contradicts its starting checkpoint."""
    if base_type and wanted and wanted != base_type:
        whose = f"the teacher {cfg.teacher.path!r}" if cfg.stage != "flow_matching" else "the policy.path checkpoint"
        raise ConfigError(
            f"{whose} is a {base_type} policy, but policy.type is {wanted!r} and the student is initialised from it; "
            f"pass a {wanted} checkpoint, or drop policy.type (the student is a {base_type} copy of it)."
        )
    teacher_type = teacher.get("type") if teacher else None
    student = base_type or wanted or teacher_type or DEFAULT_POLICY_TYPE
    if teacher and student != teacher_type:  # a new student keeps the teacher's processors
        padded = teacher.get("max_action_dim")
        space = f" and its padded action space (max_action_dim={padded})" if padded else ""
        raise ConfigError(
            f"the teacher {cfg.teacher.path!r} is a {teacher_type} policy, but policy.type is {student!r}: a new "
            f"student (init_from_teacher=false) keeps the teacher's processors (tokenizer, prompt format, "
            f"normalisation stats){space}, so it must be a {teacher_type} policy; set --policy.type={teacher_type}."
        )
    return student
