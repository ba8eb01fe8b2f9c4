"""Closed-loop evaluation of checkpoints in Meta-World, with environments spread over worker processes.

One job = (checkpoint, step count, task, episode seeds). A worker loads each checkpoint once (cached),
sets the policy's step count, and rolls episodes out on evaluation layouts
(`metaworld.EVAL_LAYOUT_SEED`, never a demonstration layout). Policy noise is seeded per episode, so a
cell's result does not depend on which worker ran it.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

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


class PolicyController:
    """state (41,) -> action (4,) through the checkpoint's processors and `select_action` queue."""

    def __init__(self, policy: Any, preprocessor: Any, postprocessor: Any, task: str) -> None:
        self.policy, self.preprocessor, self.postprocessor, self.task = (
            policy,
            preprocessor,
            postprocessor,
            task,
        )

    def reset(self) -> None:
        self.policy.reset()

    def __call__(self, state: np.ndarray) -> np.ndarray:
        import torch

        batch = self.preprocessor(
            {"observation.state": torch.from_numpy(state).unsqueeze(0), "task": self.task}
        )
        with torch.no_grad():
            action = self.policy.select_action(batch)  # (1, 4) normalised
        return self.postprocessor(action).squeeze(0).cpu().numpy()


def run_job(job: RolloutJob) -> list[dict[str, Any]]:
    """Roll out `job`'s episodes; one dict per episode (success, collided, side_taken, steps)."""
    import torch

    from hf_reflow.envs import metaworld
    from hf_reflow.policies.base import adapter_for

    policy, pre, post = _load(job.checkpoint)
    adapter_for(policy).num_steps = job.nfe
    env = metaworld.make_env(
        job.task, layout_seed=metaworld.EVAL_LAYOUT_SEED, mode=job.mode,
        max_steps=job.max_steps or metaworld.DEFAULT_MAX_STEPS,
    )  # fmt: skip
    controller = PolicyController(policy, pre, post, metaworld.task_prompt(job.task, job.mode))
    episodes = []
    try:
        for seed in job.episode_seeds:
            torch.manual_seed(seed)
            result = metaworld.rollout_policy(env, controller, seed)
            episodes.append(
                {"success": result.success, "collided": result.collided, "side_taken": result.side_taken,
                 "steps": result.steps, "min_obstacle_distance": result.min_obstacle_distance}
            )  # fmt: skip
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
    """Success (task success and no collision), collision rate, left share, mean steps to success."""
    from hf_reflow.envs.metaworld import LEFT

    successes = [e for e in episodes if e["success"]]
    return {
        "episodes": len(episodes),
        "successes": len(successes),
        "success_rate": float(np.mean([e["success"] for e in episodes])),
        "collision_rate": float(np.mean([e["collided"] for e in episodes])),
        "left_share": float(np.mean([e["side_taken"] == LEFT for e in episodes])),
        "mean_steps": float(np.mean([e["steps"] for e in successes])) if successes else None,
    }


def episode_seeds(count: int) -> tuple[int, ...]:
    return tuple(EPISODE_SEED_BASE + i for i in range(count))
