"""Each command line (+ recipe) -> its config: the entry points the CLI, the run dir and the pipeline call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import draccus
from lerobot.configs import parser as lerobot_parser
from lerobot.configs.policies import PreTrainedConfig

from hf_reflow.configs.pipeline import PIPELINE_STAGES, VLM_DIR, PipelineConfig
from hf_reflow.configs.train import TrainConfig
from hf_reflow.errors import CheckpointError, ConfigError
from hf_reflow.parsing.argv import HelpRequested, Pair, command_line, flatten, rename, wants_help
from hf_reflow.parsing.decode import decode
from hf_reflow.parsing.env import parse_env_config
from hf_reflow.parsing.help import render_help
from hf_reflow.parsing.lerobot_train import _ALIAS_DEFAULTS, ALIASES, refuse_lerobot_train_flags
from hf_reflow.parsing.policy import policy_config
from hf_reflow.policies.smolvlm import smolvla_fields
from hf_reflow.refs import CheckpointRef


def parse_config(cls: type, args: list[str], *, command: str) -> Any:
    """Build dataclass `cls` from `--config_path=recipe.yaml` (optional) plus dotted flags.

    `-h` / `--help` anywhere raises `HelpRequested` with the command's help text.
    """
    if wants_help(args):
        raise HelpRequested(render_help(cls, command))
    return decode(cls, command_line(args, command)).config


def parse_train_config(args: list[str]) -> TrainConfig:
    """A `TrainConfig` from `--config_path=recipe.yaml` (optional) plus flags, its policy resolved."""
    if wants_help(args):
        raise HelpRequested(render_help(TrainConfig, "train", aliases=ALIASES, policy_type=_help_policy_type(args)))
    pairs = command_line(args)
    given = {p.key for p in pairs}
    refuse_lerobot_train_flags(list(given))
    for alias, defaults in _ALIAS_DEFAULTS.items():
        if alias in given:
            pairs = [Pair(k, v, raw=False) for k, v in defaults.items() if k not in given] + pairs
    return train_config(rename(pairs, ALIASES))


def _help_policy_type(args: list[str]) -> str | None:
    """The policy type whose fields `--help` lists: `--policy.type`, else that of a local `--policy.path` or
    `--teacher.path` checkpoint (`--teacher_model_path` too)."""
    if lerobot_parser.parse_arg("policy.type", args):
        return lerobot_parser.parse_arg("policy.type", args)
    for key in ("policy.path", "teacher.path", "teacher_model_path"):
        path = lerobot_parser.parse_arg(key, args)
        if path and Path(path).exists():
            try:
                return CheckpointRef.of(path, flag=key).config()["type"]
            except CheckpointError:
                return None
    return None


def parse_pipeline_config(args: list[str]) -> PipelineConfig:
    """A `PipelineConfig` from `--config_path=recipe.yaml` (optional) plus flags; every stage checked."""
    config = parse_config(PipelineConfig, args, command="pipeline")
    check_stages(config)
    return config


def train_config(pairs: list[Pair], *, teacher_config: dict[str, Any] | None = None) -> TrainConfig:
    """Decode settings into a `TrainConfig`, then resolve its policy (`policy_config`)."""
    parsed = decode(TrainConfig, pairs)
    config = parsed.config
    if config.env is not None:  # LeRobot's EnvConfig decodes it: a wrong type or field fails now
        parse_env_config([f"--env.{k}={v}" for k, v in config.env.items()])
    config.policy = policy_config(config, parsed.policy_section, parsed.policy_args, teacher_config=teacher_config)
    return config


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from a nested dict (a parsed recipe, a run's `train_config.json`), as a recipe file is read."""
    return train_config(flatten(data))


def check_stages(cfg: PipelineConfig) -> None:
    """Build every stage's config now (unknown keys fail before an hour of training). Later stages'
    policy settings are checked against the 1-RF's policy config, which stands in for their teachers."""
    check = {"seed": 0, "output_dir": "<check>", "dataset_root": "<check>"}
    first = stage_config(cfg, "flow_matching", teacher=None, **check)
    stand_in = draccus.encode(first.policy, PreTrainedConfig)
    for stage in PIPELINE_STAGES[1:]:
        stage_config(cfg, stage, teacher="<check>", teacher_config=stand_in, **check)


def stage_config(
    cfg: PipelineConfig, stage: str, *, seed: int, output_dir: str, teacher: str | None, dataset_root: str,
    couplings: str | None = None, teacher_config: dict[str, Any] | None = None,
) -> TrainConfig:  # fmt: skip
    """The `TrainConfig` of one stage: `train` + the stage's section + what the pipeline decides.
    `teacher_config` (a config.json's mapping) stands in for the teacher's when it does not exist yet."""
    decided = {"stage": stage, "seed": seed, "output_dir": output_dir, "resume": True,
               "dataset.root": dataset_root, "dataset.repo_id": "local/metaworld"}  # fmt: skip
    if stage != "flow_matching":
        decided["teacher.path"] = teacher
    elif cfg.vlm.build:  # the 1-RF reads the pipeline's backbone; later stages take it from their teacher
        backbone = smolvla_fields(Path(cfg.output_dir) / VLM_DIR, cfg.vlm.size)
        decided.update({f"policy.{key}": value for key, value in backbone.items()})
    if couplings is not None:
        decided["couplings.path"] = couplings
    pairs = rename(flatten(cfg.train) + flatten(getattr(cfg, stage)), ALIASES)
    pairs += [Pair(key, value, raw=False) for key, value in decided.items()]
    try:
        return train_config(pairs, teacher_config=teacher_config)
    except ConfigError as e:
        raise ConfigError(f"stage {stage}: {e}") from None
