"""Closed-loop evaluation of checkpoints in Meta-World, with environments spread over worker processes.

One job = (checkpoint, step count, task, episode seeds). A worker loads each checkpoint once (cached),
sets the policy's step count, and rolls episodes out on evaluation layouts
(`metaworld.EVAL_LAYOUT_SEED`, never a demonstration layout). Policy noise is a pure function of
(episode seed, chunk index), so a cell's result does not depend on which worker ran it, and every stage
and step count meets the same layouts and the same noise (paired evaluation). Each episode is classified
as success, collision, stall or timeout.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bumped whenever a rollout's result for the same (checkpoint, step count, task, seed) changes, so cached
# evaluations made under an older protocol are redone.
PROTOCOL = "paired-noise-per-chunk-v2"
EPISODE_SEED_BASE = 7_000_000  # evaluation episode seeds: base + i (layouts come from EVAL_LAYOUT_SEED)


@dataclass(frozen=True)
class RolloutJob:
    checkpoint: str
    nfe: int
    task: str
    episode_seeds: tuple[int, ...]
    mode: str = "multimodal"
    max_steps: int | None = None


_POLICIES: dict[str, Any] = {}  # per worker: checkpoint -> (policy, preprocessor, postprocessor)


def _load(checkpoint: str) -> tuple[Any, Any, Any]:
    if checkpoint not in _POLICIES:
        from hf_reflow.checkpoints import load_config, load_policy, load_processors

        config = load_config(checkpoint)
        policy = load_policy(checkpoint, config=config)
        _POLICIES[checkpoint] = (policy, *load_processors(checkpoint, config))
    return _POLICIES[checkpoint]


# Failure taxonomy (why an episode that is not a success failed).
OUTCOMES: tuple[str, ...] = ("success", "collision", "stall", "timeout")
STALL_WINDOW = 20  # env steps (0.25 s at 80 Hz): a failed episode whose hand stayed ...
STALL_RADIUS_M = 0.01  # ... within 1 cm of its final position over that window stalled
SIDE_MARGIN_M = 0.01  # a hand closer than this to the start -> target line is on neither side


def classify_episode(hand_xyz: np.ndarray, *, success: bool, collided: bool) -> str:
    """success, collision, stall (hand nearly still for the last STALL_WINDOW steps) or timeout (moving).

    Args:
        hand_xyz: (T, 3) hand positions the policy saw, one per env step.
    """
    if success:
        return "success"
    if collided:
        return "collision"
    tail = np.asarray(hand_xyz, dtype=np.float64)[-STALL_WINDOW:]
    if len(tail) >= STALL_WINDOW and float(np.linalg.norm(tail - tail[-1], axis=1).max()) < STALL_RADIUS_M:
        return "stall"
    return "timeout"


def side_switches(hand_xy: np.ndarray, start_xy: np.ndarray, target_xy: np.ndarray, *, stride: int) -> int:
    """How often the hand changes side of the start -> target line from one chunk to the next.

    The hand is sampled at each chunk start (every `stride` steps) while it is between start and target
    along the line and more than SIDE_MARGIN_M off it; a mode-averaging or mode-hopping policy switches,
    a committed one does not. hand_xy: (T, 2).
    """
    hand_xy = np.asarray(hand_xy, dtype=np.float64)[::stride, :2]
    start, line = np.asarray(start_xy, dtype=np.float64), np.asarray(target_xy, dtype=np.float64) - start_xy
    length = float(np.linalg.norm(line))
    if length < 1e-6:
        return 0
    direction = line / length
    offset = hand_xy - start  # (T', 2)
    along = offset @ direction
    across = offset[:, 0] * direction[1] * -1 + offset[:, 1] * direction[0]  # left of the line > 0
    sides = np.sign(across[(along > 0) & (along < length) & (np.abs(across) > SIDE_MARGIN_M)])
    return int(np.count_nonzero(sides[1:] != sides[:-1]))


class PolicyController:
    """state (41,) -> action (4,) through the checkpoint's processors and `select_action` queue.

    Paired evaluation: the initial noise of chunk c of episode e is drawn from a generator seeded with
    (e, c) alone, so every stage and step count sees the same noise for the same episode and chunk.
    It records the hand positions the policy saw (for the failure taxonomy).
    """

    def __init__(self, policy: Any, preprocessor: Any, postprocessor: Any, task: str) -> None:
        from hf_reflow.policies.base import adapter_for

        self.policy, self.preprocessor, self.postprocessor, self.task = policy, preprocessor, postprocessor, task
        self.noise_shape = adapter_for(policy).action_shape  # (chunk, action_dim) the ODE starts from
        self.n_action_steps = int(policy.config.n_action_steps)
        # pi0 / pi0.5 `select_action` takes no noise: seed torch's generator per chunk instead.
        self.takes_noise = "noise" in inspect.signature(policy.select_action).parameters
        self.episode_seed, self.step, self.hand, self._noise = 0, 0, [], None

    def start(self, episode_seed: int) -> None:
        """Set the episode whose noise the next rollout uses (`rollout_policy` then calls `reset`)."""
        self.episode_seed = int(episode_seed)

    def reset(self) -> None:
        self.policy.reset()
        self.step, self.hand, self._noise = 0, [], None

    def chunk_seed(self, chunk: int) -> int:
        """The seed of chunk `chunk` of the current episode: a pure function of (episode seed, chunk index)."""
        return self.episode_seed * 100_003 + chunk

    def chunk_noise(self, chunk: int) -> Any:
        """(1, chunk, action_dim) standard normal noise drawn from `chunk_seed(chunk)`."""
        import torch

        return torch.randn((1, *self.noise_shape), generator=torch.Generator().manual_seed(self.chunk_seed(chunk)))

    def __call__(self, state: np.ndarray) -> np.ndarray:
        import torch

        if self.step % self.n_action_steps == 0:  # the policy's queue is empty: a new chunk starts now
            chunk = self.step // self.n_action_steps
            self._noise = self.chunk_noise(chunk)
            if not self.takes_noise:
                torch.manual_seed(self.chunk_seed(chunk))
        self.step += 1
        self.hand.append(np.asarray(state[:3], dtype=np.float64))
        batch = self.preprocessor(
            {"observation.state": torch.from_numpy(state).unsqueeze(0), "task": self.task}
        )
        noise = {"noise": self._noise.to(batch["observation.state"])} if self.takes_noise else {}
        with torch.no_grad():
            action = self.policy.select_action(batch, **noise)
        return self.postprocessor(action).squeeze(0).cpu().numpy()


def run_job(job: RolloutJob) -> list[dict[str, Any]]:
    """Roll out `job`'s episodes; one dict per episode (seed, success, outcome, side switches, ...)."""
    from hf_reflow.envs import metaworld
    from hf_reflow.policies.base import adapter_for

    policy, pre, post = _load(job.checkpoint)
    adapter_for(policy).num_steps = job.nfe
    env = metaworld.make_env(
        job.task, layout_seed=metaworld.EVAL_LAYOUT_SEED, mode=job.mode,
        max_steps=job.max_steps or metaworld.default_max_steps(job.task),
    )  # fmt: skip
    controller = PolicyController(policy, pre, post, metaworld.task_prompt(job.task, job.mode))
    episodes = []
    try:
        for seed in job.episode_seeds:
            controller.start(seed)
            result = metaworld.rollout_policy(env, controller, seed)
            hand = np.stack(controller.hand)  # (T, 3)
            episodes.append({
                "episode_seed": seed, "success": result.success, "collided": result.collided,
                "outcome": classify_episode(hand, success=result.success, collided=result.collided),
                "side_taken": result.side_taken, "steps": result.steps,
                "side_switches": side_switches(hand[:, :2], env.hand_start_xy, env.target_xy,
                                               stride=controller.n_action_steps),
                "min_obstacle_distance": result.min_obstacle_distance,
            })  # fmt: skip
    finally:
        env.close()
    return episodes


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism


def run_jobs(jobs: list[RolloutJob], *, workers: int = 0, progress: Any = None) -> list[list[dict[str, Any]]]:
    """Run jobs over `workers` processes (0 = one per core, 1 = in this process); results in job order."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(run_job(job))
            if progress is not None:
                progress.update(len(job.episode_seeds))
        return results
    # spawn, not fork: a forked child inherits torch's thread pools and can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        results = []
        for job, future in zip(jobs, futures, strict=True):
            results.append(future.result())
            if progress is not None:
                progress.update(len(job.episode_seeds))
    return results


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success (task success and no collision), failure taxonomy, left share, side switches, steps.

    `episode_success` keeps each episode's result in episode-seed order, for paired comparisons.
    """
    from hf_reflow.envs.metaworld import LEFT

    successes = [e for e in episodes if e["success"]]
    outcomes = [e["outcome"] for e in episodes]
    return {
        "episodes": len(episodes),
        "successes": len(successes),
        "success_rate": float(np.mean([e["success"] for e in episodes])),
        "collision_rate": float(np.mean([e["collided"] for e in episodes])),
        **{f"{o}_rate": outcomes.count(o) / len(episodes) for o in OUTCOMES[2:]},
        "left_share": float(np.mean([e["side_taken"] == LEFT for e in episodes])),
        "side_switches": float(np.mean([e["side_switches"] for e in episodes])),
        "mean_steps": float(np.mean([e["steps"] for e in successes])) if successes else None,
        "episode_seeds": [int(e["episode_seed"]) for e in episodes],
        "episode_success": [int(e["success"]) for e in episodes],
    }


def episode_seeds(count: int) -> tuple[int, ...]:
    return tuple(EPISODE_SEED_BASE + i for i in range(count))
