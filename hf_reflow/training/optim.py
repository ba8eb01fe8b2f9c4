"""The optimizer, LR schedule and EMA of a run: the policy's LeRobot presets, with `optim.*` fields winning."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from hf_reflow.configs import OptimConfig
from hf_reflow.errors import ConfigError
from hf_reflow.policies.flow_mlp.configuration_flow_mlp import WarmupCosineSchedulerConfig


def build_optimizer(optim: OptimConfig, policy_config: Any, params: list[nn.Parameter], *, total_steps: int):
    """The optimizer and LR scheduler of a run: the policy's LeRobot presets, with every field given in `optim` winning.

    Returns (optimizer, scheduler, record); `record` (what was used, and which fields were overridden) goes into
    train_config.json as `optim_used`. A policy without a scheduler preset, or `optim.scheduler=constant`, gets a
    constant LR (a LambdaLR, so the training state has the same shape).
    """
    opt_cfg, sched_cfg = resolve_optim(optim, policy_config, total_steps=total_steps)
    optimizer = opt_cfg.build(params)
    if sched_cfg is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _constant_lr)
    else:
        scheduler = sched_cfg.build(optimizer, total_steps)
    record = {
        # whose get_optimizer_preset / get_scheduler_preset gave the defaults (None: the optimizer's own)
        "preset_of": policy_config.type if optim.use_policy_preset else None,
        "overridden": sorted(optim.given()),  # optim.* fields given, which won over the presets
        "optimizer": {"type": opt_cfg.type, **_jsonable(dataclasses.asdict(opt_cfg))},
        "scheduler": {"type": sched_cfg.type, **_jsonable(dataclasses.asdict(sched_cfg))} if sched_cfg else {"type": "constant"},
    }
    return optimizer, scheduler, record


def resolve_optim(optim: OptimConfig, policy_config: Any, *, total_steps: int):
    """(LeRobot OptimizerConfig, LRSchedulerConfig or None): the presets, updated with the `optim.*` fields given."""
    from lerobot.optim.optimizers import OptimizerConfig
    from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

    given = optim.given()
    preset = policy_config.get_optimizer_preset() if optim.use_policy_preset else None
    if preset is None or ("type" in given and given["type"] != preset.type):
        opt_cfg = OptimizerConfig.get_choice_class(given["type"])()  # that optimizer's LeRobot defaults
    else:
        opt_cfg = copy.deepcopy(preset)
    names = {f.name for f in dataclasses.fields(opt_cfg)}
    updates = {}
    for key in ("lr", "weight_decay", "betas", "eps", "grad_clip_norm"):
        if key in given:
            if key not in names:
                raise ConfigError(f"optim.{key} does not apply to the {opt_cfg.type} optimizer; drop it or set optim.type.")
            updates[key] = tuple(given[key]) if key == "betas" else given[key]
    opt_cfg = dataclasses.replace(opt_cfg, **updates)

    sched_preset = policy_config.get_scheduler_preset() if optim.use_policy_preset else None
    kind = given.get("scheduler")
    if kind == "constant":
        sched_cfg = None
    elif kind is None or (sched_preset is not None and kind == sched_preset.type):
        sched_cfg = copy.deepcopy(sched_preset)
    elif kind == "warmup_cosine":
        sched_cfg = WarmupCosineSchedulerConfig()
    else:  # cosine_decay_with_warmup when the preset is another schedule: over the whole run, to 0.1 x lr
        sched_cfg = CosineDecayWithWarmupSchedulerConfig(
            num_warmup_steps=0, num_decay_steps=total_steps, peak_lr=opt_cfg.lr, decay_lr=0.1 * opt_cfg.lr
        )
    schedule_keys = [k for k in ("warmup_steps", "decay_steps", "min_lr_ratio") if k in given]
    if sched_cfg is None:
        if schedule_keys:
            raise ConfigError(
                f"optim.{schedule_keys[0]} needs a schedule, but the LR is constant; set --optim.scheduler=warmup_cosine."
            )
        return opt_cfg, None
    return opt_cfg, _update_schedule(sched_cfg, given, lr=opt_cfg.lr)


def _update_schedule(sched_cfg: Any, given: dict[str, Any], *, lr: float) -> Any:
    names = {f.name for f in dataclasses.fields(sched_cfg)}
    updates: dict[str, Any] = {}
    if "warmup_steps" in given:
        updates["num_warmup_steps"] = given["warmup_steps"]
    if "decay_steps" in given:
        if "num_decay_steps" not in names:
            raise ConfigError(f"optim.decay_steps does not apply to the {sched_cfg.type} schedule.")
        updates["num_decay_steps"] = given["decay_steps"]
    if "min_lr_ratio" in names:
        if "min_lr_ratio" in given:
            updates["min_lr_ratio"] = given["min_lr_ratio"]
    elif {"peak_lr", "decay_lr"} <= names:  # LeRobot's cosine_decay_with_warmup: decay to decay_lr / peak_lr x lr
        if "min_lr_ratio" in given or lr != sched_cfg.peak_lr:
            ratio = given.get("min_lr_ratio", sched_cfg.decay_lr / sched_cfg.peak_lr)
            updates.update(peak_lr=lr, decay_lr=ratio * lr)
    elif "min_lr_ratio" in given:
        raise ConfigError(f"optim.min_lr_ratio does not apply to the {sched_cfg.type} schedule.")
    return dataclasses.replace(sched_cfg, **updates) if updates else sched_cfg


def _constant_lr(step: int) -> float:
    return 1.0


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def make_ema(policy: nn.Module, decay: float | None):
    if decay is None:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(trainable(policy), decay=decay)


def trainable(policy: nn.Module) -> list[nn.Parameter]:
    return [p for p in policy.parameters() if p.requires_grad]
