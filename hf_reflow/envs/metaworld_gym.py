"""The Meta-World detour benchmark as a Gymnasium env, the interface LeRobot's `lerobot-eval` drives.

`hf_reflow.envs.lerobot_env` registers it (gym id `GYM_ID`, LeRobot env type `metaworld_detour`); this
module is imported only when an env is made, so registering costs no Meta-World import.

An episode is `MetaWorldEnv`'s (`hf_reflow.envs.metaworld`): `reset(seed=s)` plays episode seed `s` on
the evaluation layouts (`EVAL_LAYOUT_SEED`, never a demonstration layout), so
`lerobot-eval --seed=7000000` meets the layouts `hf-reflow eval` uses (its episode seeds are 7000000 + i).
It terminates on success or on touching the obstacle and is truncated at the task's horizon, the same
rules as `hf-reflow eval`; `info["is_success"]` is the success `lerobot-eval` counts.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hf_reflow.envs import metaworld
from hf_reflow.errors import ConfigError

OBS_TYPES = ("state", "pixels_agent_pos")
CAMERA_KEY = metaworld.IMAGE_KEY.rsplit(".", 1)[-1]  # pixels/<camera> -> observation.images.<camera>


class MetaWorldDetourEnv(gym.Env):
    """One detour task; observations {"agent_pos": (41,) float32[, "pixels": {camera: (H, W, 3) uint8}]}."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": metaworld.DEFAULT_FPS}

    def __init__(self, task: str = "reach-v3", *, mode: str = "multimodal", obs_type: str = "state",
                 episode_length: int | None = None, image_size: int = metaworld.DEFAULT_IMAGE_SIZE,
                 layout_seed: int = metaworld.EVAL_LAYOUT_SEED, render_mode: str = "rgb_array") -> None:  # fmt: skip
        super().__init__()
        if obs_type not in OBS_TYPES:
            raise ConfigError(f"obs_type must be one of {', '.join(OBS_TYPES)}, got {obs_type!r}.")
        self._env = metaworld.make_env(task, layout_seed=layout_seed, mode=mode, max_steps=episode_length,
                                       image_size=image_size)  # fmt: skip
        self.task, self.obs_type, self.render_mode = task, obs_type, render_mode
        self.task_description = metaworld.task_prompt(task, mode)  # what `lerobot-eval` passes as "task"
        self._max_episode_steps = self._env.max_steps  # `lerobot-eval` reads it for its loop bound
        observation = {"agent_pos": spaces.Box(-np.inf, np.inf, (metaworld.STATE_DIM,), np.float32)}
        if obs_type == "pixels_agent_pos":
            image = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
            observation["pixels"] = spaces.Dict({CAMERA_KEY: image})
        self.observation_space = spaces.Dict(observation)
        self.action_space = spaces.Box(-1.0, 1.0, (metaworld.ACTION_DIM,), np.float32)
        self._next_seed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict[str, Any]]:
        """Start episode `seed` (a pure function of it); without a seed, the one after the last."""
        super().reset(seed=seed)
        episode_seed = self._next_seed if seed is None else int(seed)
        self._next_seed = episode_seed + 1
        state = self._env.reset(episode_seed)
        return self._observe(state), {"is_success": False, "episode_seed": episode_seed}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        state, success, collided, done = self._env.step(np.asarray(action, dtype=np.float32).reshape(-1))
        terminated = success or collided
        info = {"is_success": success, "collided": collided, "task": self.task}
        return self._observe(state), float(success), terminated, done and not terminated, info

    def render(self) -> np.ndarray:
        """(image_size, image_size, 3) uint8 from the demonstrations' camera, obstacle drawn."""
        return self._env.render()

    def close(self) -> None:
        self._env.close()

    def _observe(self, state: np.ndarray) -> dict[str, Any]:
        observation: dict[str, Any] = {"agent_pos": state}
        if self.obs_type == "pixels_agent_pos":
            observation["pixels"] = {CAMERA_KEY: self._env.render()}
        return observation
