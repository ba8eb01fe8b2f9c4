"""Evaluation by step count: straightness, error vs the 10-step chunk, latency, and closed-loop success.

Offline metrics use held-out dataset observations and one noise tensor shared by every step count, so
differences come from the step count, not the noise. The closed loop runs the toy env (Meta-World
comes with its own module).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_reflow import flow
from hf_reflow.checkpoints import load_config, load_policy, load_processors, read_reflow_info
from hf_reflow.data import make_dataset
from hf_reflow.errors import CheckpointError
from hf_reflow.policies.base import PolicyAdapter, adapter_for
from hf_reflow.sampling import sample_policy

REFERENCE_STEPS = 10


def observation_batch(dataset: Any, num_samples: int, seed: int) -> dict[str, Any]:
    """A collated batch of `num_samples` frames drawn without replacement from `dataset`."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:num_samples].tolist()
    return torch.utils.data.default_collate([dataset[i] for i in indices])


@torch.no_grad()
def offline_metrics(adapter: PolicyAdapter, batch: dict[str, Any], nfes: list[int], seed: int = 0) -> list[dict]:
    """Per step count: straightness of the Euler path, MSE vs the 10-step chunk, ms per chunk call."""
    action, _ = adapter.action_target(batch)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(action.shape[0], *adapter.action_shape, generator=generator).to(action)
    reference = sample_policy(adapter, batch, noise, num_steps=REFERENCE_STEPS).action
    rows = []
    for nfe in nfes:
        out = sample_policy(adapter, batch, noise, num_steps=nfe, return_path=True)
        latency = _latency_ms(adapter, batch, noise, nfe)
        rows.append(
            {
                "nfe": nfe,
                "straightness": float(flow.straightness(out.path, out.times).mean()),
                "error_vs_10step": float((out.action - reference).pow(2).mean()),
                "error_vs_data": float((out.action - action).pow(2).mean()),
                "latency_ms": latency,
            }
        )
    return rows


def _latency_ms(adapter: PolicyAdapter, batch: dict[str, Any], noise: torch.Tensor, nfe: int, repeats: int = 5) -> float:
    """Median wall time of one single-observation chunk (encode + `nfe` evaluations), in ms."""
    single = {k: v[:1] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sample_policy(adapter, single, noise[:1], num_steps=nfe)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[1:]))  # the first call warms caches


def toy_closed_loop(policy, preprocessor, postprocessor, *, nfe: int, episodes: int, seed: int = 10_000) -> dict:
    """Success (goal reached, no collision), collision rate, left share and mean steps on the toy env."""
    from hf_reflow.envs import toy

    adapter = adapter_for(policy)
    adapter.num_steps = nfe
    results = []
    for episode in range(episodes):
        policy.reset()
        torch.manual_seed(seed + episode)

        def select(state: np.ndarray) -> np.ndarray:
            batch = preprocessor({"observation.state": torch.from_numpy(state).unsqueeze(0)})
            return postprocessor(policy.select_action(batch)).squeeze(0).numpy()

        results.append(toy.rollout(select, seed + episode))
    return {
        "episodes": episodes,
        "success_rate": float(np.mean([r.success for r in results])),
        "collision_rate": float(np.mean([r.collided for r in results])),
        "left_share": float(np.mean([r.side == 0 for r in results])),
        "mean_steps": float(np.mean([r.steps for r in results if r.success])) if any(r.success for r in results) else None,
    }


def evaluate_checkpoint(
    path: str, dataset_cfg: Any, *, nfes: list[int], num_samples: int = 64, episodes: int = 0, env: str = "none",
    seed: int = 0, own_steps_only: bool = False,
) -> list[dict]:  # fmt: skip
    """Rows (one per step count) of offline metrics and, with `env="toy"`, closed-loop results.

    `error_vs_data` compares the chunk with the demonstration's own chunk (padding included).
    `own_steps_only`: evaluate at the checkpoint's saved step count instead of `nfes` (a distilled
    student is trained for that one count; at any other it is not a flow and its numbers would mislead).
    """
    config = load_config(path)
    policy = load_policy(path, config=config)
    preprocessor, postprocessor = load_processors(path, config)
    adapter = adapter_for(policy)
    nfes = [adapter.num_steps] if own_steps_only else nfes
    info = read_reflow_info(path)
    dataset = make_dataset(dataclasses.replace(dataset_cfg, in_memory="never"), config)  # chunks as trained
    batch = preprocessor(observation_batch(dataset, num_samples, seed))
    rows = offline_metrics(adapter, batch, nfes, seed=seed)
    for row in rows:
        row.update({"checkpoint": str(path), "stage": info.get("stage", "unknown"), "k": info.get("k")})
        if env == "toy" and episodes > 0:
            row.update(toy_closed_loop(policy, preprocessor, postprocessor, nfe=row["nfe"], episodes=episodes))
    return rows


def evaluate_chain(
    trained: dict[int, list[tuple[Any, Any]]],
    heldout: Any,
    eval_cfg: Any,
    *,
    tasks: list[str],
    mode: str,
    log: Any = print,
) -> list[dict]:
    """Rows (seed x stage x step count) of offline metrics and Meta-World closed-loop results.

    Each stage's rows are cached in `<run>/eval.json` with the settings that produced them; a rerun
    with the same settings reuses them. Closed-loop episodes of every stage left to evaluate run in one
    pool of worker processes.
    """
    from hf_reflow.closed_loop import PROTOCOL

    settings = {**dataclasses.asdict(eval_cfg), "tasks": list(tasks), "mode": mode, "protocol": PROTOCOL}
    settings.pop("workers")  # how many processes ran it does not change the result
    rows, todo = [], []
    for seed, stages in trained.items():
        for stage, checkpoint in stages:
            cache = Path(checkpoint).parent / "eval.json"
            if cache.is_file() and json.loads(cache.read_text()).get("settings") == settings:
                rows += json.loads(cache.read_text())["rows"]
                continue
            own = stage.kind == "distill"
            log(f"evaluating seed {seed} {stage.label} offline at {'its own step count' if own else eval_cfg.nfe}")
            stage_rows = evaluate_checkpoint(
                str(checkpoint), heldout, nfes=eval_cfg.nfe, num_samples=eval_cfg.num_samples, own_steps_only=own
            )
            for row in stage_rows:
                row.update({"seed": seed, "name": stage.label, "run": stage.name, "stage": stage.kind, "k": stage.k})
            todo.append((cache, stage_rows))
    if eval_cfg.episodes > 0:
        pending = [row for _, stage_rows in todo for row in stage_rows]
        attach_closed_loop(pending, tasks=tasks, mode=mode, episodes=eval_cfg.episodes, workers=eval_cfg.workers, log=log)
    for cache, stage_rows in todo:
        cache.write_text(json.dumps({"settings": settings, "rows": stage_rows}, indent=2))
        rows += stage_rows
    return rows


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


def attach_closed_loop(rows: list[dict], *, tasks: list[str], mode: str, episodes: int, workers: int, log: Any = print) -> None:
    """Add Meta-World closed-loop results (pooled over tasks, and `per_task`) to rows with checkpoint + nfe."""
    from tqdm.auto import tqdm

    from hf_reflow import closed_loop

    if not rows or episodes < 1:
        return
    for path in dict.fromkeys(row["checkpoint"] for row in rows):
        check_env_compatible(load_config(path), path)
    seeds = closed_loop.episode_seeds(episodes)
    jobs = [closed_loop.RolloutJob(row["checkpoint"], row["nfe"], task, seeds, mode) for row in rows for task in tasks]
    log(f"closed loop: {len(jobs)} cells (checkpoint x steps x task) x {episodes} episodes on evaluation layouts")
    with tqdm(total=len(jobs) * episodes, desc="rollouts", unit="ep") as bar:
        results = iter(closed_loop.run_jobs(jobs, workers=workers, progress=bar))
    for row in rows:
        per_task = {task: closed_loop.summarise(next(results)) for task in tasks}
        row.update(_pool(list(per_task.values())))
        row["per_task"] = per_task


def _pool(per_task: list[dict]) -> dict:
    """Episode-weighted pooling of per-task closed-loop summaries."""
    episodes = sum(s["episodes"] for s in per_task)
    successes = sum(s["successes"] for s in per_task)
    steps = [s["mean_steps"] * s["successes"] for s in per_task if s["mean_steps"] is not None]
    rates = ("success_rate", "collision_rate", "stall_rate", "timeout_rate", "left_share", "side_switches")
    return {
        "episodes": episodes,
        "successes": successes,
        **{key: sum(s[key] * s["episodes"] for s in per_task) / episodes for key in rates},
        "mean_steps": sum(steps) / successes if successes else None,
    }
