"""Configuration of `flow_mlp`, hf-reflow's built-in small flow-matching policy for state observations."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from hf_reflow import flow


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

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ENV": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    optimizer_lr: float = 1e-3
    optimizer_weight_decay: float = 1e-4
    scheduler_warmup_steps: int = 100
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
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}.")

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
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
