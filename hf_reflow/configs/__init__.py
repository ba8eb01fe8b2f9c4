"""The settings of every command, as dataclasses (data only: the command line is read in `hf_reflow.parsing`).

Typed configuration of every command: one dataclass per command, decoded by draccus.
"""

from __future__ import annotations

from hf_reflow.configs.commands import (
    CouplingsGenerateConfig,
    EvalPolicyConfig,
    EvaluateConfig,
    MetaWorldDataConfig,
    PushConfig,
    SpaceConfig,
    SpaceDatasetConfig,
    ToyDataConfig,
)
from hf_reflow.configs.fields import (
    COUPLING_STATES,
    EXPERT_AIM_HELP,
    EXPERT_AIMS,
    HOLD_STEPS_HELP,
    MAX_COUNT,
    MAX_ODE_STEPS,
    MAX_SEED,
    N_ACTION_STEPS_HELP,
    OPTIMIZERS,
    RECORD_KEYS,
    SCHEDULERS,
    TRACKERS,
)
from hf_reflow.configs.pipeline import (
    PIPELINE_STAGES,
    DemoConfig,
    EvalConfig,
    PipelineConfig,
    PipelinePushConfig,
)
from hf_reflow.configs.train import (
    PATH_KEYS,
    POLICY_HELP,
    CouplingsConfig,
    DatasetConfig,
    FlowConfig,
    OptimConfig,
    ShortcutConfig,
    TeacherConfig,
    TrainConfig,
    TrainEvalConfig,
    WandbConfig,
    resolved_paths,
    save_config,
)
from hf_reflow.stages import RECOMMENDED_NUM_STEPS, STAGES, stage_k

__all__ = [
    "COUPLING_STATES",
    "CouplingsConfig",
    "CouplingsGenerateConfig",
    "DatasetConfig",
    "DemoConfig",
    "EXPERT_AIMS",
    "EXPERT_AIM_HELP",
    "EvalConfig",
    "EvalPolicyConfig",
    "EvaluateConfig",
    "FlowConfig",
    "HOLD_STEPS_HELP",
    "MAX_COUNT",
    "MAX_ODE_STEPS",
    "MAX_SEED",
    "MetaWorldDataConfig",
    "N_ACTION_STEPS_HELP",
    "OPTIMIZERS",
    "OptimConfig",
    "PATH_KEYS",
    "PIPELINE_STAGES",
    "POLICY_HELP",
    "PipelineConfig",
    "PipelinePushConfig",
    "PushConfig",
    "RECOMMENDED_NUM_STEPS",
    "RECORD_KEYS",
    "SCHEDULERS",
    "STAGES",
    "ShortcutConfig",
    "SpaceConfig",
    "SpaceDatasetConfig",
    "TRACKERS",
    "TeacherConfig",
    "ToyDataConfig",
    "TrainConfig",
    "TrainEvalConfig",
    "WandbConfig",
    "resolved_paths",
    "save_config",
    "stage_k",
]
