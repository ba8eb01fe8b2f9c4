"""Offline evaluation by step count: straightness, error vs the 10-step chunk, latency per chunk.

Offline metrics use held-out dataset observations and one noise tensor shared by every step count, so
differences come from the step count, not the noise. `evaluate_checkpoint` adds the toy env's closed loop
when asked (`closed_loop.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_reflow import flow
from hf_reflow.artifacts.checkpoints import load_checkpoint
from hf_reflow.data import fetch_batch, make_dataset
from hf_reflow.evaluation.closed_loop import toy_closed_loop
from hf_reflow.metrics import EvalRow
from hf_reflow.policies.base import PolicyAdapter, sample_policy
from hf_reflow.sampling import seeded_noise

REFERENCE_STEPS = 10  # the step count every other is compared with (the policies' default)


def observation_batch(dataset: Any, num_samples: int, seed: int) -> dict[str, Any]:
    """A collated batch of `num_samples` frames drawn without replacement from `dataset`."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:num_samples].tolist()
    return fetch_batch(dataset, indices)


@torch.no_grad()
def offline_metrics(adapter: PolicyAdapter, batch: dict[str, Any], step_counts: list[int], seed: int = 0) -> list[EvalRow]:
    """Per step count: straightness of the Euler path, MSE vs the 10-step chunk and vs the demonstration,
    the predicted chunk's size relative to the demonstration's (shrinkage), ms per chunk call."""
    action, _ = adapter.action_target(batch)
    # (B, chunk, action_dim), drawn once on the CPU and shared by every step count
    noise = seeded_noise((action.shape[0], *adapter.action_shape), seed).to(action)
    # A VLA's ODE runs in a padded (chunk, max_action_dim) space whose padding is never trained and never
    # returned: every metric reads the real action dims only, as LeRobot's policies return them.
    real = getattr(adapter, "action_dim", adapter.action_shape[-1])
    action = action[..., :real]
    reference = sample_policy(adapter, batch, noise, num_steps=REFERENCE_STEPS).action[..., :real]
    one = first_observation(batch)  # latency: one control step's observation
    prefix = prefix_ms(adapter, one)  # the same encode at every step count: measured once
    rows = []
    for num_steps in step_counts:
        out = sample_policy(adapter, batch, noise, num_steps=num_steps, return_path=True)
        out = dataclasses.replace(out, action=out.action[..., :real], path=out.path[..., :real])
        latency = latency_ms(adapter, one, noise[:1], num_steps)
        rows.append(
            {
                "num_steps": num_steps,
                "straightness": float(flow.straightness(out.path, out.times).mean()),
                "error_vs_10step": float((out.action - reference).pow(2).mean()),
                "error_vs_data": float((out.action - action).pow(2).mean()),
                # < 1: chunks shrunk toward the mean action (normalised space, where the mean is ~0)
                "magnitude_vs_data": float(out.action.norm(dim=-1).mean() / action.norm(dim=-1).mean().clamp_min(1e-8)),
                "latency_ms": latency,
                "prefix_ms": prefix,
                "latency_device": device_name(action.device),
            }
        )
    return rows


@torch.no_grad()
def latency_ms(adapter: PolicyAdapter, batch: dict[str, Any], noise: torch.Tensor, num_steps: int, repeats: int = 5) -> float:
    """Median wall time of one chunk for `batch` (encode + `num_steps` evaluations) after a warm-up call, in ms."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sample_policy(adapter, batch, noise, num_steps=num_steps)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[1:]))  # the first call warms caches


def prefix_ms(adapter: PolicyAdapter, batch: dict[str, Any], repeats: int = 5) -> float:
    """Median wall time of encoding one observation (`adapter.encode`: a VLA's VLM prefix, computed once per
    chunk and reused by every denoising step), after a warm-up call, in ms: the part of `latency_ms` that
    does not shrink with fewer steps."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        adapter.encode(batch)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[1:]))


def device_name(device: torch.device) -> str:
    """What latency was measured on: the GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    return f"CPU {model}, {torch.get_num_threads()} threads"


def first_observation(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch cut to its first observation (B = 1): what one control step sees."""
    return {k: v[:1] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}


def evaluate_checkpoint(
    path: str, dataset_cfg: Any, *, step_counts: list[int], num_samples: int = 64, episodes: int = 0, env: str = "none",
    seed: int = 0, own_steps_only: bool = False,
) -> list[EvalRow]:  # fmt: skip
    """Rows (one per step count) of offline metrics and, with `env="toy"`, closed-loop results.

    `error_vs_data` compares the chunk with the demonstration's own chunk (padding included).
    `own_steps_only`: evaluate at the checkpoint's saved step count k, and at the counts in `step_counts` that
    divide it (a distilled student is trained only at its k-step Euler grid, which holds those counts' grids;
    at any other count it is not a flow and its numbers would mislead).
    """
    loaded = load_checkpoint(path)
    if own_steps_only:
        own = loaded.adapter.num_steps
        step_counts = sorted({own, *(n for n in step_counts if own % n == 0)})
    dataset = make_dataset(dataclasses.replace(dataset_cfg, in_memory="never"), loaded.config)  # chunks as trained
    batch = loaded.preprocessor(observation_batch(dataset, num_samples, seed))
    rows = offline_metrics(loaded.adapter, batch, step_counts, seed=seed)
    for row in rows:
        row.update({"checkpoint": str(path), "stage": loaded.info.get("stage", "unknown"), "k": loaded.info.get("k")})
        if env == "toy" and episodes > 0:
            row.update(toy_closed_loop(loaded, num_steps=row["num_steps"], episodes=episodes))
    return rows
