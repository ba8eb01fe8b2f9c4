"""The Meta-World env with the virtual obstacle: layouts per episode seed, stepping, collision, images."""

from __future__ import annotations

import functools
import math
import pickle
from typing import Any

import metaworld
import mujoco
import numpy as np

from hf_reflow.envs.metaworld.checks import check_int, check_vector
from hf_reflow.envs.metaworld.expert import MultimodalExpert, check_aim
from hf_reflow.envs.metaworld.geometry import obstacle_centre, obstacle_collides, side_of_line
from hf_reflow.envs.metaworld.render import add_cylinder, close_renderer, make_renderer
from hf_reflow.envs.metaworld.tasks import (
    ACTION_DIM,
    DEFAULT_CAMERA,
    DEFAULT_IMAGE_SIZE,
    DEMO_LAYOUT_SEED,
    LEFT,
    MAX_ENV_STEPS,
    OBSTACLE_RADIUS_M,
    Mode,
    check_mode,
    check_task,
    default_max_steps,
    first_target_xy,
    hand_start,
    task_prompt,
)


@functools.lru_cache(maxsize=64)
def _benchmark(task: str, layout_seed: int) -> metaworld.MT1:
    """MT1 layout set (50 `rand_vec`s) for `task`; cached because building it costs ~0.6 s."""
    return metaworld.MT1(task, seed=layout_seed)


def layout_vectors(task: str, layout_seed: int) -> np.ndarray:
    """The (50, k) layout vectors (object and goal positions) of `MT1(task, seed=layout_seed)`."""
    check_task(task, "scripted")
    tasks = _benchmark(task, check_int("layout_seed", layout_seed, low=0)).train_tasks
    return np.stack([pickle.loads(t.data)["rand_vec"] for t in tasks])


class MetaWorldEnv:
    """One Meta-World task with the virtual obstacle; states are (41,) float32.

    `reset(episode_seed)` picks the layout and the detour side from `episode_seed`;
    `step(action)` returns (state, success, collided, done), where success means task success and
    no collision so far, and done means success, collision (multimodal mode) or the step limit
    (`max_steps`; default `default_max_steps(task)`).
    """

    def __init__(
        self,
        task: str,
        *,
        layout_seed: int = DEMO_LAYOUT_SEED,
        mode: Mode = "multimodal",
        max_steps: int | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        camera: str = DEFAULT_CAMERA,
        hold_steps: int = 0,
        expert_aim: str = "hand",
    ):
        check_mode(mode)
        check_task(task, mode)
        check_aim(expert_aim)
        self.task, self.mode, self.expert_aim = task, mode, expert_aim
        # Steps an episode goes on after its first success (demonstrations that finish with margin); 0 = it ends
        # there, as every evaluation does. Success is the first success either way.
        self.hold_steps = check_int("hold_steps", hold_steps, low=0, high=MAX_ENV_STEPS)
        self.layout_seed = check_int("layout_seed", layout_seed, low=0)
        limit = default_max_steps(task) if max_steps is None else max_steps
        self.max_steps = check_int("max_steps", limit, low=1, high=MAX_ENV_STEPS)
        self.image_size = check_int("image_size", image_size, low=16, high=480)
        self.camera = camera
        self._layouts = _benchmark(task, self.layout_seed).train_tasks
        self._env = _benchmark(task, self.layout_seed).train_classes[task]()
        self._env.set_task(self._layouts[0])
        start = hand_start(task)
        if start is not None:
            # `_reset_hand` drives the mocap to `hand_init_pos` for 50 sub-steps at every reset.
            self._env.hand_init_pos = start
        self._renderer: mujoco.Renderer | None = None
        self.description = task_prompt(task, mode)
        # Per-episode fields, set by reset().
        self._episode_started = False
        self.episode_seed, self.layout_index, self.side = -1, -1, LEFT
        self.hand_start_xy, self.target_xy = np.zeros(2), np.zeros(2)
        self.obstacle_centre, self.closest_hand_xy = np.zeros(2), np.zeros(2)
        self.steps, self.collided, self.success, self.done = 0, False, False, False
        self.min_obstacle_distance = math.inf
        self._horizon = self.max_steps

    # -- episode -----------------------------------------------------------------------------

    def reset(self, episode_seed: int, *, max_steps: int | None = None) -> np.ndarray:
        """Start an episode; its layout and detour side are a pure function of `episode_seed`.

        Args:
            episode_seed: int >= 0.
            max_steps: step limit for this episode only (default: the env's `max_steps`).

        Returns:
            The first state, (41,) float32.
        """
        self.episode_seed = check_int("episode_seed", episode_seed, low=0)
        limit = self.max_steps if max_steps is None else max_steps
        self._horizon = check_int("max_steps", limit, low=1, high=MAX_ENV_STEPS)
        rng = np.random.default_rng(self.episode_seed)
        self.layout_index = int(rng.integers(len(self._layouts)))
        self.side = int(rng.integers(2))
        self._env.set_task(self._layouts[self.layout_index])
        obs, _ = self._env.reset()
        self.hand_start_xy = np.asarray(obs[:2], dtype=np.float64).copy()
        self.target_xy = first_target_xy(self.task, obs)
        self.obstacle_centre = obstacle_centre(self.hand_start_xy, self.target_xy)
        self.steps, self.collided, self.success, self.done = 0, False, False, False
        self.succeeded_at: int | None = None
        self.min_obstacle_distance = math.inf
        self.closest_hand_xy = self.hand_start_xy.copy()
        # Meta-World's own success distance after each step (obj_to_target).
        self.goal_distances: list[float] = []
        # The observed hand (obs[:3], what the stock experts steer) to the observed goal (obs[36:39]) after each
        # step. For reach, success is measured at the fingertip centre (`tcp_center`), ~4.5 cm below the hand:
        # a hand on the goal is only just inside the 5 cm tolerance.
        self.hand_goal_distances: list[float] = []
        self._episode_started = True
        return self._observe(obs)

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        """Append the obstacle centre and track the closest approach to it."""
        hand_xy = np.asarray(obs[:2], dtype=np.float64)
        distance = float(np.linalg.norm(hand_xy - self.obstacle_centre))
        if distance < self.min_obstacle_distance:
            self.min_obstacle_distance, self.closest_hand_xy = distance, hand_xy.copy()
        return np.concatenate([obs, self.obstacle_centre]).astype(np.float32)

    def step(self, action: Any) -> tuple[np.ndarray, bool, bool, bool]:
        """Apply a (4,) action in [-1, 1] (clipped). Returns (state, success, collided, done)."""
        if not self._episode_started or self.done:
            raise RuntimeError("No running episode: call reset(episode_seed) before step().")
        action = np.clip(check_vector("action", action, ACTION_DIM), -1.0, 1.0).astype(np.float32)
        obs, _reward, _terminated, truncated, info = self._env.step(action)
        self.steps += 1
        self.goal_distances.append(float(info.get("obj_to_target", math.nan)))
        self.hand_goal_distances.append(float(np.linalg.norm(obs[:3] - obs[36:39])))
        state = self._observe(obs)
        if self.mode == "multimodal" and obstacle_collides(obs[:2], self.obstacle_centre):
            self.collided = True
        if info["success"] and self.succeeded_at is None:
            self.succeeded_at = self.steps
        self.success = self.succeeded_at is not None and not self.collided
        held = self.succeeded_at is not None and self.steps - self.succeeded_at >= self.hold_steps
        self.done = held or self.collided or self.steps >= self._horizon or bool(truncated)
        return state, self.success, self.collided, self.done

    def side_taken(self) -> int:
        """Side of the start->target line the hand was on when closest to the obstacle centre."""
        return side_of_line(self.hand_start_xy, self.target_xy, self.closest_hand_xy)

    def expert(self) -> MultimodalExpert:
        """The detour expert bound to this env: it reads `self.side` at each episode's first call."""
        return MultimodalExpert(self.task, mode=self.mode, side_source=lambda: self.side, aim=self.expert_aim)

    # -- images ------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """RGB uint8 (image_size, image_size, 3) from the `camera` view, obstacle drawn in blue."""
        if self._renderer is None:
            self._renderer = make_renderer(self._env.model, self.image_size)
        self._renderer.update_scene(self._env.data, camera=self.camera)
        if self.mode == "multimodal" and self._episode_started:
            add_cylinder(self._renderer.scene, self.obstacle_centre, OBSTACLE_RADIUS_M)
        image = self._renderer.render()
        # Meta-World's corner cameras are mounted upside down; rotate 180 degrees (as LeRobot does).
        return np.ascontiguousarray(image[::-1, ::-1])

    def close(self) -> None:
        """Release the renderer and the simulator."""
        if self._renderer is not None:
            close_renderer(self._renderer)
            self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_env(
    task: str,
    *,
    layout_seed: int = DEMO_LAYOUT_SEED,
    mode: Mode = "multimodal",
    max_steps: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    hold_steps: int = 0,
    expert_aim: str = "hand",
) -> MetaWorldEnv:
    """A `MetaWorldEnv`; use `EVAL_LAYOUT_SEED` for evaluation so layouts differ from the demos'.

    Args:
        task: a name from `valid_task_names(mode)`.
        layout_seed: MT1 seed of the layout set (demos: DEMO_LAYOUT_SEED).
        mode: "multimodal" or "scripted".
        max_steps: step limit per episode; None = `default_max_steps(task)` (120 for reach/push).
        image_size: square image side of `render()` in pixels.
        hold_steps: steps an episode goes on after its first success (demonstrations only; evaluation uses 0).
        expert_aim: what `env.expert()` puts on the goal (`EXPERT_AIMS`); success is measured the same either way.
    """
    return MetaWorldEnv(
        task,
        layout_seed=layout_seed,
        mode=mode,
        max_steps=max_steps,
        image_size=image_size,
        hold_steps=hold_steps,
        expert_aim=expert_aim,
    )
