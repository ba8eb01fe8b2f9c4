"""A 2-D bimodal reaching task: go from the start to the goal around an obstacle, left or right.

Small and instant (pure numpy), for tests and quick demos. Every demonstration detours through a via
point 0.3 left or right (50/50) of an obstacle of radius 0.15 sitting on the straight line, so the
first action chunk of an episode has two modes: a flow that averages them drives into the obstacle.

State (4,): hand x, y, goal x, y. Action (2,): velocity (per second); the hand moves action / fps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_reflow.atomic import atomic_path
from hf_reflow.envs.shapes import TOY_ACTION_DIM, TOY_STATE_DIM
from hf_reflow.envs.writing import discard_dataset
from hf_reflow.errors import DataError

FPS = 10
SPEED = 0.5  # units per second of the scripted expert
OBSTACLE_RADIUS = 0.15
DETOUR = 0.3
GOAL_TOLERANCE = 0.05
MAX_STEPS = 60
TASK = "reach the goal around the obstacle"


@dataclass
class ToyEpisode:
    states: np.ndarray  # (T, 4) float32
    actions: np.ndarray  # (T, 2) float32
    side: int  # 0 = left (+y), 1 = right (-y)


def layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(start, goal) for one episode; the obstacle is their midpoint."""
    start = np.array([0.0, 0.0]) + rng.normal(0, 0.02, 2)
    goal = np.array([1.0, 0.0]) + rng.normal(0, 0.05, 2)
    return start, goal


def expert_episode(seed: int) -> ToyEpisode:
    """Scripted demonstration: start -> via point (left or right of the obstacle) -> goal."""
    rng = np.random.default_rng(seed)
    start, goal = layout(rng)
    side = int(rng.integers(2))
    via = (start + goal) / 2 + np.array([0.0, DETOUR if side == 0 else -DETOUR])
    hand, states, actions = start.copy(), [], []
    for waypoint in (via, goal):
        while np.linalg.norm(waypoint - hand) > 1e-6 and len(actions) < MAX_STEPS:
            delta = waypoint - hand
            step = delta if np.linalg.norm(delta) <= SPEED / FPS else delta / np.linalg.norm(delta) * SPEED / FPS
            states.append(np.concatenate([hand, goal]))
            actions.append(step * FPS)
            hand = hand + step
    states.append(np.concatenate([hand, goal]))
    actions.append(np.zeros(2))  # hold at the goal
    return ToyEpisode(np.asarray(states, np.float32), np.asarray(actions, np.float32), side)


def collides(hand: np.ndarray, goal: np.ndarray, start: np.ndarray) -> bool:
    """Whether the hand is inside the obstacle centred between start and goal."""
    return bool(np.linalg.norm(hand - (start + goal) / 2) < OBSTACLE_RADIUS)


def write_dataset(root: str | Path, *, episodes: int, seed: int = 0, repo_id: str = "local/toy") -> Path:
    """Write `episodes` expert demonstrations as a LeRobotDataset v3 at `root` (atomically)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root).resolve()  # `--root=.` names the current folder, whose Path has no name
    if episodes < 1:
        raise DataError(f"episodes must be >= 1, got {episodes}.")
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{str(root)!r} already exists and is not empty; choose a new --root or delete it.")
    features = {
        "observation.state": {"dtype": "float32", "shape": (TOY_STATE_DIM,), "names": ["x", "y", "goal_x", "goal_y"]},
        "action": {"dtype": "float32", "shape": (TOY_ACTION_DIM,), "names": ["vx", "vy"]},
    }
    dataset = None
    with atomic_path(root) as tmp:
        try:
            dataset = LeRobotDataset.create(repo_id, FPS, features, root=tmp, use_videos=False)
            for index in range(episodes):
                episode = expert_episode(seed * 100_000 + index)
                for state, action in zip(episode.states, episode.actions, strict=True):
                    dataset.add_frame({"observation.state": state, "action": action, "task": TASK})
                dataset.save_episode()
            dataset.finalize()
        except BaseException:  # a full disk, Ctrl-C: LeRobot's writer is closed before the folder goes
            discard_dataset(dataset, tmp)
            raise
    return root


@dataclass
class ToyResult:
    success: bool
    collided: bool
    side: int  # side of the obstacle passed: 0 left, 1 right
    steps: int


def rollout(select_action, seed: int) -> ToyResult:
    """Closed loop: `select_action(state (4,)) -> action (2,)` until success, collision or MAX_STEPS."""
    rng = np.random.default_rng(seed)
    start, goal = layout(rng)
    hand, lateral = start.copy(), 0.0
    for step in range(1, MAX_STEPS + 1):
        action = np.asarray(select_action(np.concatenate([hand, goal]).astype(np.float32)), np.float64)
        hand = hand + np.clip(action, -2 * SPEED, 2 * SPEED) / FPS
        if abs(hand[0] - (start[0] + goal[0]) / 2) < OBSTACLE_RADIUS:
            lateral = hand[1] - (start[1] + goal[1]) / 2
        if collides(hand, goal, start):
            return ToyResult(False, True, int(lateral < 0), step)
        if np.linalg.norm(hand - goal) < GOAL_TOLERANCE:
            return ToyResult(True, False, int(lateral < 0), step)
    return ToyResult(False, False, int(lateral < 0), MAX_STEPS)
