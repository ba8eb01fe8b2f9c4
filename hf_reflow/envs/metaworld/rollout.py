"""Episodes: the expert's recorded rollouts and a policy's closed-loop ones, with their outcomes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_reflow.envs.metaworld.env import MetaWorldEnv, make_env
from hf_reflow.envs.metaworld.tasks import ACTION_DIM, DEMO_LAYOUT_SEED, Mode, default_max_steps
from hf_reflow.errors import ConfigError


@dataclass(frozen=True)
class Episode:
    """One expert episode. states[t] is the state the expert acted on with actions[t]."""

    task: str
    mode: str
    episode_seed: int
    layout_seed: int
    layout_index: int
    states: np.ndarray  # (T, 41) float32
    actions: np.ndarray  # (T, 4) float32
    success: bool
    collided: bool
    side: int  # planned detour side, 0 left / 1 right (drawn but unused in scripted mode)
    side_taken: int  # side actually passed (closest approach to the obstacle)
    steps: int
    min_obstacle_distance: float  # closest xy distance of the hand to the obstacle centre (m)
    seconds: float
    images: np.ndarray | None = None  # (T, H, W, 3) uint8 when recorded


@dataclass(frozen=True)
class EpisodeResult:
    """Outcome of a closed-loop policy episode. success = task success and no collision."""

    success: bool
    collided: bool
    side_taken: int
    steps: int
    min_obstacle_distance: float


def rollout_expert(
    task: str,
    episode_seed: int,
    *,
    layout_seed: int = DEMO_LAYOUT_SEED,
    mode: Mode = "multimodal",
    max_steps: int | None = None,
    images: bool = False,
    env: MetaWorldEnv | None = None,
) -> Episode:
    """Roll out the (detour) expert for one episode.

    Args:
        task: task name; see `valid_task_names(mode)`.
        episode_seed: picks the layout and the detour side.
        layout_seed: MT1 seed of the layout set (demos: DEMO_LAYOUT_SEED).
        mode: "multimodal" or "scripted".
        max_steps: step limit of the episode; None = `default_max_steps(task)`.
        images: also record a rendered frame per state.
        env: an existing env for `task`/`layout_seed`/`mode` to reuse (saves ~0.1 s per episode).
    """
    if env is None:
        env = make_env(task, layout_seed=layout_seed, mode=mode, max_steps=max_steps)
    elif (env.task, env.layout_seed, env.mode) != (task, layout_seed, mode):
        raise ConfigError(
            f"env is for ({env.task}, layout_seed={env.layout_seed}, {env.mode}) but the rollout asks for "
            f"({task}, layout_seed={layout_seed}, {mode}); pass a matching env or env=None."
        )
    if max_steps is None:
        max_steps = default_max_steps(task)
    expert = env.expert()  # made before the reset, as the expert reads the episode's side at its first call
    return record_episode(env, expert, episode_seed, max_steps=max_steps, images=images)


def record_episode(
    env: MetaWorldEnv,
    select_action: Callable[[np.ndarray], Any],
    episode_seed: int,
    *,
    max_steps: int,
    images: bool = False,
) -> Episode:
    """Run `select_action` (the expert, or a policy) for one episode of `env`, recording states and actions.

    `side` is the env's drawn detour side (the expert's plan); `side_taken` the side the hand passed.
    """
    start = time.perf_counter()
    state = env.reset(episode_seed, max_steps=max_steps)
    states, actions, frames = [], [], []
    done = False
    while not done:
        if images:
            frames.append(env.render())
        action = select_action(state)  # (4,), as returned: the expert's are stepped unrounded
        states.append(state)
        actions.append(action)
        state, _success, _collided, done = env.step(action)
    return Episode(
        task=env.task,
        mode=env.mode,
        episode_seed=env.episode_seed,
        layout_seed=env.layout_seed,
        layout_index=env.layout_index,
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        success=env.success,
        collided=env.collided,
        side=env.side,
        side_taken=env.side_taken(),
        steps=env.steps,
        min_obstacle_distance=env.min_obstacle_distance,
        seconds=time.perf_counter() - start,
        images=np.stack(frames) if images else None,
    )


def rollout_policy(
    env: MetaWorldEnv,
    select_action: Callable[[np.ndarray], Any],
    episode_seed: int,
    max_steps: int | None = None,
) -> EpisodeResult:
    """Run `select_action` closed-loop for one episode of `env`.

    If `select_action` has a `reset()` method (LeRobot policies, `MultimodalExpert`) it is called
    before the episode so action queues and episode state start fresh.

    Args:
        env: from `make_env` (use EVAL_LAYOUT_SEED for evaluation).
        select_action: maps a (41,) float32 state to a (4,) action (array-like).
        episode_seed: picks the layout (and the side the expert would have taken, unused here).
        max_steps: step limit for this episode (default: `env.max_steps`, which defaults to
            `default_max_steps(env.task)`).
    """
    reset = getattr(select_action, "reset", None)
    if callable(reset):
        reset()
    state = env.reset(episode_seed, max_steps=max_steps)
    done = False
    while not done:
        action = np.asarray(select_action(state), dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ConfigError(
                f"select_action must return {ACTION_DIM} values (hand dx, dy, dz, gripper), "
                f"received shape {action.shape}."
            )
        state, _success, _collided, done = env.step(action)
    return EpisodeResult(
        success=env.success,
        collided=env.collided,
        side_taken=env.side_taken(),
        steps=env.steps,
        min_obstacle_distance=env.min_obstacle_distance,
    )
