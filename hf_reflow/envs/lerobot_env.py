"""The Meta-World detour benchmark as a LeRobot env type, `metaworld_detour`, so stock scripts evaluate our
checkpoints: `lerobot-eval --policy.path=CKPT --env.type=metaworld_detour --env.task=reach-v3`.

Importing this module registers the type with LeRobot's `EnvConfig` registry and the gym id `GYM_ID`; the
`lerobot_env_metaworld_detour` plugin distribution imports it, as LeRobot's scripts import every installed
`lerobot_env_*` distribution. The env itself (`hf_reflow.envs.metaworld_gym`) and Meta-World load only
when an env or its config is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from hf_reflow.errors import ConfigError

ENV_TYPE = "metaworld_detour"
GYM_ID = "hf_reflow/MetaWorldDetour-v0"
if GYM_ID not in gym.registry:
    gym.register(GYM_ID, entry_point="hf_reflow.envs.metaworld_gym:MetaWorldDetourEnv")


@EnvConfig.register_subclass(ENV_TYPE)
@dataclass
class MetaWorldDetourEnvConfig(EnvConfig):
    """`--env.type=metaworld_detour`: one detour task on the evaluation layouts, as `hf-reflow eval` runs it.

    `obs_type`: "state" (the 41-d state: flow_mlp recipes) or "pixels_agent_pos" (plus the camera image of
    the VLA recipes). `episode_length` None = the task's horizon (120 for reach / push). `layout_seed`
    None = the evaluation layouts. Pass `--seed=7000000` to meet `hf-reflow eval`'s episode seeds.
    """

    task: str | None = "reach-v3"
    fps: int = 80  # Meta-World's control rate (hf_reflow.envs.metaworld.DEFAULT_FPS)
    mode: str = "multimodal"
    obs_type: str = "state"
    episode_length: int | None = None
    image_size: int | None = None
    layout_seed: int | None = None
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Meta-World is an optional extra, imported once this env type is chosen (not when it registers).
        from hf_reflow.envs import metaworld_gym
        from hf_reflow.envs.metaworld import (
            ACTION_DIM,
            DEFAULT_IMAGE_SIZE,
            EVAL_LAYOUT_SEED,
            IMAGE_KEY,
            STATE_DIM,
            valid_task_names,
        )

        if self.obs_type not in metaworld_gym.OBS_TYPES:
            raise ConfigError(f"env.obs_type must be one of {', '.join(metaworld_gym.OBS_TYPES)}, got {self.obs_type!r}.")
        if self.task not in valid_task_names(self.mode):
            raise ConfigError(f"env.task {self.task!r} is not a task of mode {self.mode!r}; choose one of "
                              f"{', '.join(valid_task_names(self.mode))}.")  # fmt: skip
        self.image_size = DEFAULT_IMAGE_SIZE if self.image_size is None else self.image_size
        self.layout_seed = EVAL_LAYOUT_SEED if self.layout_seed is None else self.layout_seed
        self.features = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        }
        self.features_map = {ACTION: ACTION, "agent_pos": OBS_STATE}
        if self.obs_type == "pixels_agent_pos":
            camera = f"pixels/{metaworld_gym.CAMERA_KEY}"
            self.features[camera] = PolicyFeature(type=FeatureType.VISUAL, shape=(self.image_size, self.image_size, 3))
            self.features_map[camera] = IMAGE_KEY

    @property
    def package_name(self) -> str:
        return __name__  # registers GYM_ID when imported

    @property
    def gym_id(self) -> str:
        return GYM_ID

    @property
    def gym_kwargs(self) -> dict:
        return {"task": self.task, "mode": self.mode, "obs_type": self.obs_type, "episode_length": self.episode_length,
                "image_size": self.image_size, "layout_seed": self.layout_seed}  # fmt: skip
