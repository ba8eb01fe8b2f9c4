"""Demonstrations written as a LeRobotDataset: the feature spec, one task's episodes, the atomic write."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_reflow.atomic import atomic_path
from hf_reflow.envs.metaworld.checks import check_int
from hf_reflow.envs.metaworld.env import MetaWorldEnv, make_env
from hf_reflow.envs.metaworld.rollout import Episode, record_episode, rollout_expert
from hf_reflow.envs.metaworld.tasks import (
    ACTION_DIM,
    ACTION_NAMES,
    DEFAULT_FPS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_REPO_ID,
    DEMO_LAYOUT_SEED,
    EPISODE_SEED_STRIDE,
    EVAL_LAYOUT_SEED,
    IMAGE_KEY,
    MAX_ENV_STEPS,
    OBS_DIM,
    OBSTACLE_RADIUS_M,
    SIDE_NAMES,
    STATE_DIM,
    STATE_NAMES,
    TASKS_MULTIMODAL,
    Mode,
    check_mode,
    check_task,
    default_max_steps,
    task_prompt,
)
from hf_reflow.envs.writing import discard_dataset
from hf_reflow.errors import ConfigError, DataError

# Makes a task's `select_action` from (task, prompt); see `write_dataset`'s `policy`.
PolicyFactory = Callable[[str, str], Callable[[np.ndarray], Any]]


@dataclasses.dataclass(frozen=True)
class WriteSpec:
    """What one `write_dataset` call writes (everything but the root), checked when made.

    The fields are `write_dataset`'s arguments of the same names; every task's writer reads this one spec.
    """

    tasks: Sequence[str]
    episodes_per_task: int
    mode: Mode
    seed: int
    layout_seed: int
    layout_sets: int
    max_steps: int | None
    fps: int
    images: bool
    image_size: int
    repo_id: str
    log: Callable[[str], None] | None
    policy: PolicyFactory | None
    hold_steps: int
    expert_aim: str

    def __post_init__(self) -> None:
        """Raise a ConfigError for the first bad field, before anything is rolled out or written."""
        check_mode(self.mode)
        if isinstance(self.tasks, str) or len(self.tasks) == 0:
            raise ConfigError(f"tasks must be a non-empty sequence of task names, received {self.tasks!r}.")
        for task in self.tasks:
            check_task(task, self.mode)
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(
                f"tasks must not repeat a name, received {list(self.tasks)}; list each task once."
            )
        check_int("episodes_per_task", self.episodes_per_task, low=1, high=EPISODE_SEED_STRIDE - 1)
        check_int("seed", self.seed, low=0)
        check_int("layout_seed", self.layout_seed, low=0)
        check_int("layout_sets", self.layout_sets, low=1, high=(EPISODE_SEED_STRIDE - 1) // self.episodes_per_task)
        last = self.layout_seed + self.layout_sets - 1
        if self.layout_sets > 1 and self.layout_seed <= EVAL_LAYOUT_SEED <= last:
            raise ConfigError(
                f"layout sets {self.layout_seed}..{last} include the evaluation set ({EVAL_LAYOUT_SEED}), which no "
                f"training data may use; start below it with fewer sets (at most {EVAL_LAYOUT_SEED - self.layout_seed})."
            )
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, low=1, high=MAX_ENV_STEPS)
        check_int("fps", self.fps, low=1)
        check_int("image_size", self.image_size, low=16, high=480)


def dataset_features(*, images: bool = False, image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, dict]:
    """LeRobot feature spec of the demonstrations (shapes are tuples: LeRobot compares them exactly)."""
    features: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": list(STATE_NAMES)},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": list(ACTION_NAMES)},
        "detour_side": {"dtype": "int64", "shape": (1,), "names": ["0_left_1_right_-1_none"]},
        "obstacle": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "radius"]},
        "episode_seed": {"dtype": "int64", "shape": (1,), "names": None},
    }
    if images:
        features[IMAGE_KEY] = {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
    return features


def write_dataset(
    root: str | Path,
    *,
    tasks: Sequence[str] = TASKS_MULTIMODAL,
    episodes_per_task: int,
    mode: Mode = "multimodal",
    seed: int = 0,
    layout_seed: int = DEMO_LAYOUT_SEED,
    layout_sets: int = 1,
    max_steps: int | None = None,
    fps: int = DEFAULT_FPS,
    images: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
    repo_id: str = DEFAULT_REPO_ID,
    log: Callable[[str], None] | None = None,
    policy: PolicyFactory | None = None,
    hold_steps: int = 0,
    expert_aim: str = "hand",
) -> dict[str, Any]:
    """Roll out expert episodes and write the successful ones as a LeRobotDataset (v3) at `root`.

    With `policy(task, prompt) -> select_action`, that policy acts instead of the expert and every episode
    is written, failed ones too (the states a policy visits in closed loop, e.g. a frozen teacher's, for
    reflow couplings); `detour_side` is then the side the hand took. `select_action.start(episode_seed)`,
    when it exists, is called before each episode (paired noise), `reset()` too.

    Episode i of a task uses episode seed `seed * EPISODE_SEED_STRIDE + i`, so datasets are
    reproducible; with several layout sets, set j's episodes come after set j-1's (`i` counts on).
    Failed episodes (collision or step limit) are dropped and counted. The dataset is written to a
    hidden folder beside `root` and renamed into place at the end, so a crash leaves nothing
    half-written at `root`.

    Args:
        root: output folder; must not exist or be empty.
        tasks: task names, each from `valid_task_names(mode)`.
        episodes_per_task: episodes attempted per task (>= 1).
        mode: "multimodal" or "scripted".
        seed: run seed for the episode seeds (>= 0).
        layout_seed: MT1 layout set; keep the default for demonstrations.
        layout_sets: roll out `episodes_per_task` on each of this many MT1 layout sets, `layout_seed` and the
            next ones (50 layouts per set and task): more layouts for closed-loop states. Never the evaluation set.
        max_steps: per-episode step limit; None = each task's `default_max_steps(task)`.
        fps: dataset frame rate (Meta-World runs at 80 Hz).
        images: also store a rendered `observation.images.corner` per frame.
        image_size: square image side in pixels.
        repo_id: LeRobot repo id written into the metadata.
        log: optional callback for one line per episode.
        policy: makes the `select_action` of a task (None: the detour expert).
        hold_steps: the expert goes on for this many steps after its first success (within `max_steps`), so
            the demonstrations show the last centimetres done with margin and the hand held at the goal.
        expert_aim: "hand" (Meta-World's stock experts) or "fingertips" (reach: the fingertips, where success
            is measured, go onto the goal; see `EXPERT_AIMS`).

    Returns:
        A summary dict: counts of attempted/written/failed episodes, frames, side counts, per task.
    """
    root = Path(root).resolve()  # `--root=.` names the current folder, whose Path has no name
    spec = WriteSpec(
        tasks=tasks,
        episodes_per_task=episodes_per_task,
        mode=mode,
        seed=seed,
        layout_seed=layout_seed,
        layout_sets=layout_sets,
        max_steps=max_steps,
        fps=fps,
        images=images,
        image_size=image_size,
        repo_id=repo_id,
        log=log,
        policy=policy,
        hold_steps=hold_steps,
        expert_aim=expert_aim,
    )
    _check_root_free(root)  # fail before any rollout

    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy import, only needed here

    start = time.perf_counter()
    per_task = _write_atomically(root, spec, LeRobotDataset)
    return _summary(root, spec, per_task, start)


def _check_root_free(root: Path) -> None:
    """Raise a DataError unless `root` is absent or an empty folder (a dataset is never written over)."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"Dataset root {str(root)!r} already exists and is not an empty folder; "
            "choose a new path or delete it first (nothing was written)."
        )


def _write_atomically(root: Path, spec: WriteSpec, dataset_class: Any) -> dict[str, dict[str, Any]]:
    """Write every task into a hidden folder beside `root`, then rename it to `root`.

    Args:
        root: the dataset's final folder (absent or empty).
        spec: what to write.
        dataset_class: LeRobot's `LeRobotDataset` (imported by the caller, as its import is slow).

    Returns:
        Each task's counts (see `_write_task`), in `spec.tasks` order.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    per_task: dict[str, dict[str, Any]] = {}
    dataset = None
    with atomic_path(root) as partial:
        try:
            dataset = dataset_class.create(
                spec.repo_id,
                spec.fps,
                dataset_features(images=spec.images, image_size=spec.image_size),
                root=partial,
                robot_type="sawyer",
                use_videos=False,
            )
            for task in spec.tasks:
                per_task[task] = _write_task(dataset, task, spec)
            _check_something_written(per_task, spec)
            dataset.finalize()
            _check_root_free(root)  # something may have appeared while we were writing
        except BaseException:  # LeRobot's writer is closed before the folder goes
            discard_dataset(dataset, partial)
            raise
    return per_task


def _check_something_written(per_task: dict[str, dict[str, Any]], spec: WriteSpec) -> None:
    """Raise a DataError when no task wrote an episode: an empty dataset is never renamed into place."""
    if sum(s["written"] for s in per_task.values()) == 0:
        raise DataError(
            f"Every one of the {spec.episodes_per_task * len(spec.tasks)} expert episodes failed, so there is "
            f"nothing to write; try a larger max_steps (received {spec.max_steps}; None means each "
            "task's default_max_steps)."
        )


def _write_task(dataset: Any, task: str, spec: WriteSpec) -> dict[str, Any]:
    """Roll out and write one task's episodes (the expert's successful ones, or all of `spec.policy`'s), on each
    of its layout sets in turn.

    Returns:
        The task's counts: attempted, written, failures, frames, sides, closest approach, seconds, max_steps.
    """
    max_steps = default_max_steps(task) if spec.max_steps is None else spec.max_steps
    prompt = task_prompt(task, spec.mode)
    stats = _new_stats(spec.episodes_per_task * spec.layout_sets, max_steps)
    select = spec.policy(task, prompt) if spec.policy is not None else None
    for j in range(spec.layout_sets):
        env = make_env(
            task,
            layout_seed=spec.layout_seed + j,
            mode=spec.mode,
            max_steps=max_steps,
            image_size=spec.image_size,
            # A policy's episodes end at their first success, as in evaluation: only the expert holds on.
            hold_steps=spec.hold_steps if select is None else 0,
            expert_aim=spec.expert_aim,
        )
        try:
            first = j * spec.episodes_per_task  # set j's episodes come after set j - 1's: every seed its own
            for i in range(first, first + spec.episodes_per_task):
                _write_episode(dataset, env, select, spec.seed * EPISODE_SEED_STRIDE + i, i, prompt, spec, stats)
        finally:
            env.close()
    return stats


def _write_episode(dataset: Any, env: MetaWorldEnv, select: Any, seed: int, index: int, prompt: str,
                   spec: WriteSpec, stats: dict[str, Any]) -> None:  # fmt: skip
    """Roll out one episode and write it (an expert's only when it succeeded), counting it in `stats`."""
    ep = _episode(env, select, seed, max_steps=env.max_steps, images=spec.images)
    stats["seconds"] += ep.seconds
    if spec.log is not None:
        spec.log(_episode_line(env.task, index, ep))
    if not ep.success:
        stats["collided" if ep.collided else "timed_out"] += 1
        if select is None:  # an expert's failure is dropped; a policy's visited states are the point
            return
    _add_episode(dataset, ep, prompt)
    _count_written(stats, ep, spec.mode)


def _new_stats(episodes: int, max_steps: int) -> dict[str, Any]:
    """A task's counts before its first episode (the key order is the summary's)."""
    stats: dict[str, Any] = {"attempted": episodes, "written": 0, "collided": 0, "timed_out": 0, "frames": 0}
    stats.update({"left": 0, "right": 0, "none": 0, "min_obstacle_distance": math.inf, "seconds": 0.0})
    stats["max_steps"] = max_steps
    return stats


def _episode_line(task: str, index: int, ep: Episode) -> str:
    """The log line of one episode: its seed, outcome, length and side."""
    outcome = "ok" if ep.success else ("collision" if ep.collided else "timeout")
    return (
        f"{task} episode {index} seed {ep.episode_seed}: {outcome}, {ep.steps} steps, {SIDE_NAMES[ep.side]}"
    )


def _count_written(stats: dict[str, Any], ep: Episode, mode: Mode) -> None:
    """Add a written episode to its task's counts (frames, side, closest approach)."""
    stats["written"] += 1
    stats["frames"] += ep.steps
    stats[SIDE_NAMES[ep.side] if mode == "multimodal" else "none"] += 1
    stats["min_obstacle_distance"] = min(stats["min_obstacle_distance"], ep.min_obstacle_distance)


def _episode(env: MetaWorldEnv, select: Any, episode_seed: int, *, max_steps: int, images: bool) -> Episode:
    """The expert's episode (`select` None), or `select`'s with `side` set to the side its hand took."""
    if select is None:
        return rollout_expert(
            env.task,
            episode_seed,
            layout_seed=env.layout_seed,
            mode=env.mode,
            max_steps=max_steps,
            images=images,
            env=env,
        )
    for hook in ("start", "reset"):
        if callable(getattr(select, hook, None)):
            getattr(select, hook)(*((episode_seed,) if hook == "start" else ()))
    episode = record_episode(env, select, episode_seed, max_steps=max_steps, images=images)
    return dataclasses.replace(episode, side=episode.side_taken)


def _add_episode(dataset: Any, episode: Episode, prompt: str) -> None:
    """Add one episode's frames to the open dataset and close it as an episode."""
    obstacle = np.array([*episode.states[0, OBS_DIM:], OBSTACLE_RADIUS_M], dtype=np.float32)
    side = episode.side if episode.mode == "multimodal" else -1  # scripted episodes take no detour
    for t in range(episode.steps):
        frame = {
            "observation.state": episode.states[t],
            "action": episode.actions[t],
            "detour_side": np.array([side], dtype=np.int64),
            "obstacle": obstacle,
            "episode_seed": np.array([episode.episode_seed], dtype=np.int64),
            "task": prompt,
        }
        if episode.images is not None:
            frame[IMAGE_KEY] = episode.images[t]
        dataset.add_frame(frame)
    dataset.save_episode()


def _summary(
    root: Path, spec: WriteSpec, per_task: dict[str, dict[str, Any]], start: float
) -> dict[str, Any]:
    """What `write_dataset` returns: the settings, totals over the tasks, the per-task counts and the time."""

    def total(key: str) -> int:
        return int(sum(s[key] for s in per_task.values()))

    return {
        "root": str(root),
        "repo_id": spec.repo_id,
        "mode": spec.mode,
        "tasks": list(per_task),
        "fps": spec.fps,
        "seed": spec.seed,
        "layout_seed": spec.layout_seed,
        "layout_sets": spec.layout_sets,
        "max_steps": spec.max_steps,
        "images": spec.images,
        "episodes_attempted": total("attempted"),
        "episodes_written": total("written"),
        "episodes_failed": total("collided") + total("timed_out"),
        "failed_collision": total("collided"),
        "failed_timeout": total("timed_out"),
        "frames": total("frames"),
        "side_counts": {"left": total("left"), "right": total("right"), "none": total("none")},
        "per_task": per_task,
        "seconds": time.perf_counter() - start,
    }
