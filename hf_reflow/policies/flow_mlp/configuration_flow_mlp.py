"""Configuration of `flow_mlp`, hf-reflow's built-in small flow-matching policy for state observations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import LRSchedulerConfig
from lerobot.utils.constants import ACTION, OBS_STATE
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from hf_reflow import flow


@LRSchedulerConfig.register_subclass("warmup_cosine")
@dataclass
class WarmupCosineSchedulerConfig(LRSchedulerConfig):
    """hf-reflow's LR schedule, as a LeRobot scheduler config (so stock lerobot-train can use the preset).

    LR multiplier at optimizer step s: (s + 1) / num_warmup_steps during the warmup, then a cosine decay
    from 1 to `min_lr_ratio`, reached at the last training step.
    """

    num_warmup_steps: int | None = 100
    min_lr_ratio: float = 0.1

    def build(self, optimizer: Optimizer, num_training_steps: int) -> LambdaLR:
        warmup, total, floor = self.num_warmup_steps or 0, num_training_steps, self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return LambdaLR(optimizer, factor)


@PreTrainedConfig.register_subclass("flow_mlp")
@dataclass
class FlowMLPConfig(PreTrainedConfig):
    """A residual MLP velocity field over a whole action chunk, conditioned on state and time.

    Args:
        chunk_size: actions predicted per chunk.
        n_action_steps: actions of a chunk executed before predicting the next one.
        num_steps: Euler steps at inference (1-RF ~10; a reflowed student 1-2).
        hidden_dim: width of the residual blocks.
        num_blocks: residual blocks.
        time_embed_dim: sinusoidal time-embedding width.
        tasks: the task strings (instructions) the policy knows, one learned embedding each, added to the
            state's condition, as SmolVLA reads its instruction. Filled from the training dataset's tasks
            when it has two or more (`task_conditioning`); empty = task-blind. Saved in `config.json`, so a
            stock `from_pretrained` restores the vocabulary.
        task_conditioning: read the frame's task when the training dataset has several.
        step_size_conditioning: the velocity also reads the step size d = 1 / num_steps it is sampled with
            (a `shortcut` student; its input layer starts at zero, so it starts as its teacher).
        shortcut_min_step: the smallest step size such a student knows (its plain flow); more steps than
            1 / shortcut_min_step run at this level.
        step_embed_scale: d enters its sinusoidal embedding as the time does, scaled by this factor (angles
            up to scale x d). 1000 (the time's scale) for a shortcut student; 1 for a meanflow student, whose
            loss differentiates the output in d: at 1000 that derivative is ~1000x larger and its training
            diverged (measured, docs/results.md).
    """

    n_obs_steps: int = 1
    chunk_size: int = 16
    n_action_steps: int = 8
    num_steps: int = 10
    hidden_dim: int = 256
    num_blocks: int = 3
    time_embed_dim: int = 64
    tasks: list[str] = field(default_factory=list)
    task_conditioning: bool = True
    step_size_conditioning: bool = False
    shortcut_min_step: float = 0.125
    step_embed_scale: float = 1000.0

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ENV": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    # The presets (`get_optimizer_preset` / `get_scheduler_preset`): AdamW + hf-reflow's warmup-cosine schedule,
    # the settings hf-reflow's recipes were tuned with, used by `hf-reflow train` and by stock lerobot-train.
    optimizer_lr: float = 1e-3
    optimizer_weight_decay: float = 1e-4
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 100
    scheduler_min_lr_ratio: float = 0.1
    # Unused since the scheduler preset is `warmup_cosine`; kept so that older config.json files still load.
    scheduler_decay_steps: int = 10_000
    scheduler_decay_lr: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps != 1:
            raise ValueError(f"flow_mlp uses the current state only: n_obs_steps must be 1, got {self.n_obs_steps}.")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps must be in 1..chunk_size ({self.chunk_size}), got {self.n_action_steps}."
            )
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct, got {self.tasks}.")
        if self.step_size_conditioning:
            flow.shortcut_levels(self.shortcut_min_step)  # raises on a step that is not 1 / 2^n
        if not 0 < self.step_embed_scale <= 1e6:
            raise ValueError(f"step_embed_scale must be in (0, 1e6], e.g. 1000 or 1; got {self.step_embed_scale}.")
        for name in ("chunk_size", "num_steps", "hidden_dim", "num_blocks", "time_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> WarmupCosineSchedulerConfig:
        return WarmupCosineSchedulerConfig(
            num_warmup_steps=self.scheduler_warmup_steps, min_lr_ratio=self.scheduler_min_lr_ratio
        )

    def validate_features(self) -> None:
        if OBS_STATE not in (self.input_features or {}):
            raise ValueError(
                f"flow_mlp needs an '{OBS_STATE}' input feature; got inputs {list(self.input_features or {})}."
            )
        if ACTION not in (self.output_features or {}):
            raise ValueError(f"flow_mlp needs an '{ACTION}' output feature; got {list(self.output_features or {})}.")

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None
