"""Closed-loop evaluation: one controller that drives a policy in an env, one episode runner per env
(`metaworld_episodes`, `play_toy`; the Space's rollouts use them too), Meta-World rollouts spread over
worker processes, and the toy env's closed loop (the episode taxonomy: `diagnostics.py`).

One job = (checkpoint, step count, task, episode seeds). A worker loads each checkpoint once (its own
`CheckpointCache`), sets the policy's step count for the job's scope (`inference_steps`), and rolls
episodes out on evaluation layouts (`metaworld.EVAL_LAYOUT_SEED`, never a demonstration layout). Policy
noise is a pure function of (episode seed, chunk index) (`sampling.seeded_noise`), so a cell's result does
not depend on which worker ran it, and every stage and step count meets the same layouts and the same
noise (paired evaluation). Each episode is classified as success, collision, stall or timeout.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from hf_reflow.artifacts.checkpoints import CheckpointCache, load_checkpoint, load_config
from hf_reflow.envs import toy
from hf_reflow.envs.lerobot_env import ENV_TYPE
from hf_reflow.errors import CheckpointError, ConfigError, DataError
from hf_reflow.evaluation.diagnostics import (
    OUTCOMES,
    classify_episode,
    detour_progress,
    episode_diagnostics,
    side_switches,
)
from hf_reflow.metrics import EvalRow
from hf_reflow.policies.factory import adapter_for
from hf_reflow.sampling import seeded_noise

# Bumped whenever a cached row for the same (checkpoint, step count, task, seed) changes, so cached
# evaluations made under an older protocol are redone.
PROTOCOL = "paired-noise-per-chunk-v4-prefix-real-action-dims"  # v4: prefix_ms; offline metrics on real dims
EPISODE_SEED_BASE = 7_000_000  # evaluation episode seeds: base + i (layouts come from EVAL_LAYOUT_SEED)
TOY_EPISODE_SEED_BASE = 10_000  # the toy env's evaluation episodes: base + i
NoiseMode = Literal["per_chunk", "per_episode"]


@dataclass(frozen=True)
class RolloutJob:
    checkpoint: str
    num_steps: int
    task: str
    episode_seeds: tuple[int, ...]
    mode: str = "multimodal"
    max_steps: int | None = None
    n_action_steps: int | None = None  # actions executed per chunk before re-planning; None: the policy's own


@dataclass
class Camera:
    """Frames for a policy that reads images (`image_key`) and / or for display (one every `every` steps).

    `render() -> (H, W, 3) uint8`.
    """

    render: Callable[[], np.ndarray]
    image_key: str | None = None
    every: int | None = 10  # None: no display frames (only what the policy reads)


def image_size_of(policy_config: Any) -> int | None:
    """Side of the square camera image a policy reads, or None for a state-only policy."""
    for feature in (policy_config.input_features or {}).values():
        if getattr(feature.type, "name", "") == "VISUAL":
            return int(feature.shape[-1])
    return None


def camera_for(world: Any, policy_config: Any, *, every: int | None = None) -> Camera | None:
    """A camera on the Meta-World env `world` (made with the policy's `image_size_of`) feeding the policy's image
    key when it reads images, and / or keeping a display frame every `every` steps; None when neither is needed
    or, for display only, when offscreen rendering does not work here.

    Raises:
        DataError: the policy reads images and no frame can be rendered.
    """
    from hf_reflow.envs import metaworld as mw

    reads = image_size_of(policy_config) is not None
    if not (reads or every):
        return None
    try:
        world.reset(0)
        world.render()
    except RuntimeError as e:
        if reads:
            raise DataError(f"this policy reads camera images but rendering failed: {e}") from None
        return None
    return Camera(world.render, mw.IMAGE_KEY if reads else None, every=every)


class PolicyController:
    """state -> action through a checkpoint's processors and the policy's `select_action` queue.

    Noise (`noise`):
    - "per_chunk" (paired evaluation): the initial noise of chunk c of episode e is drawn from a generator
      seeded with (e, c) alone, so every stage and step count sees the same noise for the same episode and chunk;
    - "per_episode": torch's global generator is seeded with the episode seed when the episode starts.
    It records the hand positions the policy saw (`hand`, (3,) each: the failure taxonomy, the Space's
    paths) and, with a `camera`, the frames it showed the policy or the viewer.
    """

    def __init__(self, policy: Any, preprocessor: Any, postprocessor: Any, task: str | None, *,
                 noise: NoiseMode = "per_chunk", camera: Camera | None = None) -> None:  # fmt: skip
        self.policy, self.preprocessor, self.postprocessor, self.task = policy, preprocessor, postprocessor, task
        self.noise, self.camera = noise, camera
        self.noise_shape = adapter_for(policy).action_shape  # (chunk, action_dim) the ODE starts from
        self.n_action_steps = int(policy.config.n_action_steps)
        # pi0 / pi0.5 `select_action` takes no noise: seed torch's generator per chunk instead.
        self.takes_noise = "noise" in inspect.signature(policy.select_action).parameters
        # A policy with one observation step reads its image only when a chunk starts (see `_look`).
        self.reads_history = int(getattr(policy.config, "n_obs_steps", 1) or 1) > 1
        self.episode_seed, self.step, self.hand, self.actions, self.frames, self._noise = 0, 0, [], [], [], None
        self._image: torch.Tensor | None = None  # (1, 3, H, W) the frame the policy last read

    def start(self, episode_seed: int) -> None:
        """Set the episode whose noise the next rollout uses (the rollout then calls `reset`)."""
        self.episode_seed = int(episode_seed)
        if self.noise == "per_episode":
            torch.manual_seed(self.episode_seed)

    def reset(self) -> None:
        self.policy.reset()
        self.step, self.hand, self.actions, self.frames, self._noise, self._image = 0, [], [], [], None, None

    def chunk_seed(self, chunk: int) -> int:
        """The seed of chunk `chunk` of the current episode: a pure function of (episode seed, chunk index)."""
        return self.episode_seed * 100_003 + chunk

    def chunk_noise(self, chunk: int) -> torch.Tensor:
        """(1, chunk, action_dim) standard normal noise drawn from `chunk_seed(chunk)`."""
        return seeded_noise((1, *self.noise_shape), self.chunk_seed(chunk))

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """(41,) Meta-World state -> (action_dim,) action; records the hand and, with a camera, frames."""
        raw = {"observation.state": torch.from_numpy(np.asarray(state, np.float32)).unsqueeze(0)}
        if self.task is not None:
            raw["task"] = self.task
        self._look(raw)
        self.hand.append(np.asarray(state[:3], dtype=np.float64))
        return self.act(raw)

    def act(self, raw: dict[str, Any]) -> np.ndarray:
        """A LeRobot observation batch (batch 1, before the policy's processors) -> (action_dim,) action, with
        the paired noise of this episode's current chunk."""
        paired = self.noise == "per_chunk"
        if paired and self.step % self.n_action_steps == 0:  # the policy's queue is empty: a new chunk starts
            chunk = self.step // self.n_action_steps
            self._noise = self.chunk_noise(chunk)
            if not self.takes_noise:
                torch.manual_seed(self.chunk_seed(chunk))
        self.step += 1
        batch = self.preprocessor(raw)
        like = next(v for v in batch.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
        noise = {"noise": self._noise.to(like)} if paired and self.takes_noise else {}
        with torch.no_grad():
            action = self.policy.select_action(batch, **noise)
        action = self.postprocessor(action).squeeze(0).cpu().numpy()
        self.actions.append(action)
        return action

    def _look(self, raw: dict[str, Any]) -> None:
        """Render when the policy will read the frame or a display frame is due; image (1, 3, H, W) in [0, 1].

        A policy with one observation step (SmolVLA, pi0) reads the image only when its action queue is empty,
        i.e. when a chunk starts (every `n_action_steps` steps); the steps between are handed the last frame,
        which the policy queues and drops unread. So a chunk renders once, not `n_action_steps` times, and
        the actions are the same (rendering was most of a VLA episode's env-side time).
        """
        camera = self.camera
        if camera is None:
            return
        shown = camera.every is not None and self.step % camera.every == 0
        read = camera.image_key is not None and (
            self._image is None or self.reads_history or self.step % self.n_action_steps == 0
        )
        if shown or read:
            image = camera.render()  # (H, W, 3) uint8
            if shown:
                self.frames.append(image)
            if read:
                self._image = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255
        if camera.image_key:
            raw[camera.image_key] = self._image


def controllers_of(checkpoint: str) -> Callable[[str, str], PolicyController]:
    """`make(task, prompt)`: controllers of one Meta-World checkpoint (loaded once, shapes checked), each
    with paired noise per (episode seed, chunk); what `metaworld.write_dataset(policy=...)` rolls out."""
    loaded = load_checkpoint(checkpoint)
    check_env_compatible(loaded.config, checkpoint)
    return lambda task, prompt: PolicyController(loaded.policy, loaded.preprocessor, loaded.postprocessor, prompt)


@contextlib.contextmanager
def replanning(policy: Any, n_action_steps: int | None) -> Iterator[int]:
    """Execute `n_action_steps` actions of each chunk before predicting the next (None: the policy's own).

    LeRobot's policies read `config.n_action_steps` when they reset their action queue and when they cut
    a predicted chunk, so the override holds for episodes started inside the `with`; it is restored after.
    """
    own, chunk = int(policy.config.n_action_steps), int(policy.config.chunk_size)
    n = own if n_action_steps is None else int(n_action_steps)
    if not 1 <= n <= chunk:
        raise ConfigError(f"n_action_steps must be in 1..{chunk} (the policy's chunk_size); got {n}.")
    policy.config.n_action_steps = n
    try:
        yield n
    finally:
        policy.config.n_action_steps = own
        policy.reset()


# ---- the toy env ------------------------------------------------------------------------------
def toy_closed_loop(loaded: Any, *, num_steps: int, episodes: int, seed: int = TOY_EPISODE_SEED_BASE) -> dict:
    """Success (goal reached, no collision), collision rate, left share and mean steps on the toy env."""
    controller = PolicyController(loaded.policy, loaded.preprocessor, loaded.postprocessor, None, noise="per_episode")
    with loaded.adapter.inference_steps(num_steps):  # every episode at `num_steps` steps per chunk
        results = [play_toy(controller, seed + episode) for episode in range(episodes)]
    successes = [r for r in results if r.success]
    return {
        "episodes": episodes,
        "success_rate": float(np.mean([r.success for r in results])),
        "collision_rate": float(np.mean([r.collided for r in results])),
        "left_share": float(np.mean([r.side == 0 for r in results])),
        "mean_steps": float(np.mean([r.steps for r in successes])) if successes else None,
    }


def play_toy(controller: PolicyController, seed: int) -> toy.ToyResult:
    """One toy episode of `controller` (its noise mode as built: per episode for `toy_closed_loop`, which keeps
    the toy numbers comparable with earlier runs, per chunk for the Space)."""
    controller.reset()
    controller.start(seed)
    return toy.rollout(controller, seed)


# ---- Meta-World, over worker processes --------------------------------------------------------
def run_job(job: RolloutJob, cache: CheckpointCache) -> list[dict[str, Any]]:
    """Roll out `job`'s episodes; one dict per episode (seed, success, outcome, diagnostics, ...)."""
    loaded = cache.get(job.checkpoint)
    # the job's step count and re-planning hold for all its episodes, then the cached policy's own return
    with loaded.adapter.inference_steps(job.num_steps), replanning(loaded.policy, job.n_action_steps) as stride, \
            metaworld_episodes(loaded, job.task, mode=job.mode, max_steps=job.max_steps) as episodes:  # fmt: skip
        return [_episode_record(seed, episodes.play(seed), episodes.env, episodes.controller, stride)
                for seed in job.episode_seeds]  # fmt: skip


@dataclass
class MetaWorldEpisodes:
    """One Meta-World env on evaluation layouts and one controller of a loaded checkpoint: the episode runner
    of `hf-reflow eval`, the pipeline and the Space's rollout (`metaworld_episodes` makes it)."""

    env: Any
    controller: PolicyController

    def play(self, seed: int) -> Any:
        """One episode (`EpisodeResult`) with the paired noise of episode `seed`; the controller keeps its trace."""
        from hf_reflow.envs.metaworld import rollout_policy  # an optional extra

        self.controller.start(seed)
        return rollout_policy(self.env, self.controller, seed)


@contextlib.contextmanager
def metaworld_episodes(loaded: Any, task: str, *, mode: str = "multimodal", max_steps: int | None = None,
                       display_every: int | None = None) -> Iterator[MetaWorldEpisodes]:  # fmt: skip
    """Episodes of `loaded` (a `LoadedCheckpoint`) on `task`'s evaluation layouts, at the policy's current step
    count; `display_every`: keep a camera frame every that many steps (`controller.frames`); the env is closed
    on exit."""
    from hf_reflow.envs import metaworld  # Meta-World is an optional extra: imported when it is used

    env = metaworld.make_env(
        task, layout_seed=metaworld.EVAL_LAYOUT_SEED, mode=mode,
        max_steps=max_steps or metaworld.default_max_steps(task),
        image_size=image_size_of(loaded.config) or metaworld.DEFAULT_IMAGE_SIZE,
    )  # fmt: skip
    try:
        camera = camera_for(env, loaded.config, every=display_every)  # a VLA's camera and / or display frames
        controller = PolicyController(loaded.policy, loaded.preprocessor, loaded.postprocessor,
                                      metaworld.task_prompt(task, mode), camera=camera)  # fmt: skip
        yield MetaWorldEpisodes(env, controller)
    finally:
        env.close()


def _episode_record(seed: int, result: Any, env: Any, controller: PolicyController, stride: int) -> dict[str, Any]:
    hand = np.stack(controller.hand)  # (T, 3)
    return {
        "episode_seed": seed, "success": result.success, "collided": result.collided,
        "outcome": classify_episode(hand, success=result.success, collided=result.collided),
        "side_taken": result.side_taken, "steps": result.steps,
        "side_switches": side_switches(hand[:, :2], env.hand_start_xy, env.target_xy, stride=stride),
        "min_obstacle_distance": result.min_obstacle_distance, "n_action_steps": stride,
        "collision_progress": detour_progress(hand[-1, :2], env.hand_start_xy, env.target_xy) if result.collided else None,
        **episode_diagnostics(env.goal_distances, hand, np.stack(controller.actions), stride=stride,
                              hand_goal_distance=env.hand_goal_distances),
    }  # fmt: skip


_WORKER_CACHE: CheckpointCache | None = None  # one per worker process, made by `_init_worker`


def _init_worker() -> None:
    global _WORKER_CACHE
    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism
    _WORKER_CACHE = CheckpointCache()


def _run_in_worker(job: RolloutJob) -> list[dict[str, Any]]:
    return run_job(job, _WORKER_CACHE)


def run_jobs(jobs: list[RolloutJob], *, workers: int = 0, progress: Any = None) -> list[list[dict[str, Any]]]:
    """Run jobs over `workers` processes (0 = one per core, 1 = in this process); results in job order."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        cache, results = CheckpointCache(), []
        for job in jobs:
            results.append(run_job(job, cache))
            if progress is not None:
                progress.update(len(job.episode_seeds))
        return results
    # Not fork (a child forked from this process inherits torch's thread pools and can deadlock) but a fork
    # server: one fresh process imports what a worker needs once (LeRobot's policies through flow_mlp, the
    # env), then forks the workers from its single thread, so N workers cost one import of torch + LeRobot
    # (~15 s of CPU here) instead of N (spawn). A module that fails to import there is imported by the worker.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "hf_reflow.policies.flow_mlp", "hf_reflow.envs.metaworld"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as executor:
        futures = [executor.submit(_run_in_worker, job) for job in jobs]
        results = []
        for job, future in zip(jobs, futures, strict=True):
            results.append(future.result())
            if progress is not None:
                progress.update(len(job.episode_seeds))
    return results


def check_env_compatible(config: Any, path: str) -> None:
    """Fail before any rollout when a checkpoint's state/action shapes are not the Meta-World env's."""
    from hf_reflow.envs.metaworld import ACTION_DIM, STATE_DIM

    state = config.input_features.get("observation.state")
    action = config.output_features.get("action")
    got = (tuple(state.shape) if state else None, tuple(action.shape) if action else None)
    if got != ((STATE_DIM,), (ACTION_DIM,)):
        raise CheckpointError(
            f"checkpoint {path!r} reads state {got[0]} and writes action {got[1]}, but the Meta-World env gives a "
            f"({STATE_DIM},) state and takes a ({ACTION_DIM},) action; evaluate a policy trained on "
            "`hf-reflow dataset metaworld` data."
        )


def attach_closed_loop(rows: list[EvalRow], *, tasks: list[str], mode: str, episodes: int, workers: int,
                       n_action_steps: list[int] | None = None, log: Any = print) -> list[EvalRow]:  # fmt: skip
    """Meta-World closed-loop results (pooled over tasks, and `per_task`) for rows with checkpoint + num_steps.

    Each row is evaluated at every `n_action_steps` value (None: the policy's own), so the rows returned are
    the input rows (updated in place) or, with several values, one copy per value. Every row records the
    `n_action_steps` it ran with, the policy's own (`policy_n_action_steps`), and its compute per env step.
    """
    from tqdm.auto import tqdm

    if not rows or episodes < 1:
        return rows
    configs = {}
    for path in dict.fromkeys(row["checkpoint"] for row in rows):
        configs[path] = load_config(path)
        check_env_compatible(configs[path], path)
    rows = with_replanning(rows, n_action_steps, configs)
    seeds = episode_seeds(episodes)
    jobs = [RolloutJob(row["checkpoint"], row["num_steps"], task, seeds, mode, n_action_steps=row["n_action_steps"])
            for row in rows for task in tasks]  # fmt: skip
    log(f"closed loop: {len(jobs)} cells (checkpoint x steps x re-planning x task) x {episodes} episodes on evaluation layouts")
    with tqdm(total=len(jobs) * episodes, desc="rollouts", unit="ep") as bar:
        results = iter(run_jobs(jobs, workers=workers, progress=bar))
    for row in rows:
        per_task = {task: summarise(next(results)) for task in tasks}
        row.update(pool(list(per_task.values())))
        row["per_task"] = per_task
        # What `lerobot-eval --env.type=metaworld_detour` needs to replay these episodes (the model card's command).
        row.update(env_type=ENV_TYPE, env_mode=mode, first_episode_seed=seeds[0])
        row.update(compute_per_env_step(row))
    return rows


def with_replanning(rows: list[EvalRow], n_action_steps: list[int] | None, configs: dict[str, Any]) -> list[EvalRow]:
    """Each row once per `n_action_steps` value (None: the policy's own; copies when there are several), each
    recording the value it runs with and the policy's own (`configs`: checkpoint -> its policy config)."""
    values = list(n_action_steps or [None])
    rows = [row if len(values) == 1 else dict(row) for row in rows for _ in values]
    for row, n in zip(rows, values * (len(rows) // len(values)), strict=True):
        own = int(configs[row["checkpoint"]].n_action_steps)
        row["policy_n_action_steps"], row["n_action_steps"] = own, n or own
    return rows


def compute_per_env_step(row: EvalRow) -> EvalRow:
    """Denoising passes (steps x chunks / env steps) and, with a measured latency per chunk, ms per env step."""
    chunks, env_steps = row["chunks"], row["env_steps"]
    latency = row.get("latency_ms")
    return {
        "passes_per_env_step": row["num_steps"] * chunks / env_steps,
        "ms_per_env_step": latency * chunks / env_steps if latency is not None else None,
    }


ALL_EPISODE_DIAGNOSTICS = ("hand_speed", "chunk_jump", "action_change", "collision_progress")
MISS_DIAGNOSTICS = ("closest_goal_m", "closest_hand_goal_m", "final_goal_m", "near_goal_steps", "near_goal_reversals")  # failures without collision


def summarise(episodes: list[dict[str, Any]]) -> EvalRow:
    """Success (task success and no collision), failure taxonomy, left share, side switches, steps, and the
    diagnostics: `hand_speed` / `chunk_jump` / `action_change` over all episodes, `miss_*` over the failures
    without a collision (near misses vs lost).

    `episode_success` (and `episode_hand_speed`) keep each episode's value in episode-seed order, for paired
    comparisons.
    """
    from hf_reflow.envs.metaworld import LEFT  # optional extra

    successes = [e for e in episodes if e["success"]]
    misses = [e for e in episodes if not e["success"] and not e["collided"]]
    outcomes = [e["outcome"] for e in episodes]
    stride = episodes[0].get("n_action_steps", 1)
    return {
        "episodes": len(episodes),
        "successes": len(successes),
        "misses": len(misses),
        "success_rate": float(np.mean([e["success"] for e in episodes])),
        "collision_rate": float(np.mean([e["collided"] for e in episodes])),
        **{f"{o}_rate": outcomes.count(o) / len(episodes) for o in OUTCOMES[2:]},
        # Envs without the detour (any LeRobot env) record no side: None.
        "left_share": _nanmean([float(e["side_taken"] == LEFT) for e in episodes if e.get("side_taken") is not None]),
        "side_switches": _nanmean([e.get("side_switches") for e in episodes]),
        "mean_steps": float(np.mean([e["steps"] for e in successes])) if successes else None,
        "env_steps": int(sum(e["steps"] for e in episodes)),
        "chunks": int(sum(-(-e["steps"] // stride) for e in episodes)),
        **{key: _nanmean([e.get(key) for e in episodes]) for key in ALL_EPISODE_DIAGNOSTICS},
        **{f"miss_{key}": _nanmean([e.get(key) for e in misses]) for key in MISS_DIAGNOSTICS},
        "episode_seeds": [int(e["episode_seed"]) for e in episodes],
        "episode_success": [int(e["success"]) for e in episodes],
        "episode_hand_speed": [_finite_or_none(e.get("hand_speed")) for e in episodes],
    }


def _nanmean(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def episode_seeds(count: int) -> tuple[int, ...]:
    return tuple(EPISODE_SEED_BASE + i for i in range(count))


def pool(per_task: list[EvalRow]) -> EvalRow:
    """Episode-weighted pooling of per-task closed-loop summaries (`miss_*` weighted by misses)."""
    episodes = sum(s["episodes"] for s in per_task)
    successes = sum(s["successes"] for s in per_task)
    steps = [s["mean_steps"] * s["successes"] for s in per_task if s["mean_steps"] is not None]
    rates = ("success_rate", "collision_rate", "stall_rate", "timeout_rate")
    return {
        "episodes": episodes,
        "successes": successes,
        "misses": sum(s["misses"] for s in per_task),
        **{key: sum(s[key] * s["episodes"] for s in per_task) / episodes for key in rates},
        **{key: _weighted(per_task, key, "episodes") for key in ("left_share", "side_switches")},
        "mean_steps": sum(steps) / successes if successes else None,
        "env_steps": sum(s["env_steps"] for s in per_task),
        "chunks": sum(s["chunks"] for s in per_task),
        **{key: _weighted(per_task, key, "episodes") for key in ALL_EPISODE_DIAGNOSTICS},
        **{f"miss_{key}": _weighted(per_task, f"miss_{key}", "misses") for key in MISS_DIAGNOSTICS},
    }


def _weighted(per_task: list[dict], key: str, weight: str) -> float | None:
    pairs = [(s[key], s[weight]) for s in per_task if s.get(key) is not None and s[weight] > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None
