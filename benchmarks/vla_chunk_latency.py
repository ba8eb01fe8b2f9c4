"""Where a VLA's chunk time goes: the VLM prefix vs the denoising steps, and what caching the prefix buys.

For one trained checkpoint and one held-out observation (batch 1), measured side by side in one run with
interleaved repeats (other load on the machine hits every variant alike), per Euler step count N:

- `prefix_ms`: encoding the observation once (`adapter.encode`: SmolVLA's VLM prefix and its KV cache);
- `chunk_ms`: a whole chunk as hf-reflow and LeRobot sample it: the prefix once, then N expert passes on it;
- `uncached_chunk_ms`: the same chunk with the prefix recomputed before every step (no cache);
- `denoise_ms_per_step`: (chunk_ms - prefix_ms) / N, and `uncached_over_cached`: uncached_chunk_ms / chunk_ms.

    python benchmarks/vla_chunk_latency.py --checkpoint=outputs/metaworld_smolvla/seed0/2rf \
        --dataset=outputs/metaworld_smolvla/data/heldout --output=benchmarks/results/vla_chunk_latency_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_COUNTS = (1, 2, 4, 10)


def measure(checkpoint: str, dataset_root: str, *, repeats: int, step_counts=STEP_COUNTS) -> dict[str, Any]:
    """Median ms of the prefix, the cached chunk and the uncached chunk per step count (after a warm-up)."""
    from hf_reflow.artifacts.checkpoints import load_checkpoint
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import make_dataset
    from hf_reflow.evaluation.offline import device_name, first_observation, observation_batch
    from hf_reflow.policies.base import sample_policy
    from hf_reflow.sampling import seeded_noise

    loaded = load_checkpoint(checkpoint)
    adapter = loaded.adapter
    dataset = make_dataset(DatasetConfig(repo_id="local/heldout", root=dataset_root, in_memory="never"), loaded.config)
    one = first_observation(loaded.preprocessor(observation_batch(dataset, 1, seed=0)))
    noise = seeded_noise((1, *adapter.action_shape), 0)

    def uncached(x_t, t, _condition):  # the prefix recomputed at every step
        return adapter.velocity(x_t, t, adapter.encode(one))

    calls = {"prefix": lambda: adapter.encode(one)}
    for n in step_counts:
        calls[f"chunk_{n}"] = lambda n=n: sample_policy(adapter, one, noise, num_steps=n)
        calls[f"uncached_{n}"] = lambda n=n: sample_policy(adapter, one, noise, num_steps=n, velocity=uncached)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(repeats + 1):  # interleaved; the first round warms caches and is dropped
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000)
    ms = {name: float(np.median(values[1:])) for name, values in times.items()}
    rows = {
        str(n): {
            "chunk_ms": ms[f"chunk_{n}"],
            "uncached_chunk_ms": ms[f"uncached_{n}"],
            "denoise_ms_per_step": (ms[f"chunk_{n}"] - ms["prefix"]) / n,
            "uncached_over_cached": ms[f"uncached_{n}"] / ms[f"chunk_{n}"],
        }
        for n in step_counts
    }
    return {"checkpoint": str(checkpoint), "policy_type": loaded.config.type, "device": device_name(torch.device("cpu")),
            "repeats": repeats, "prefix_ms": ms["prefix"], "by_steps": rows}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['policy_type']} on {result['device']}; prefix (VLM) {result['prefix_ms']:.2f} ms per chunk",
             "steps  chunk ms  of which prefix  denoise ms/step  uncached chunk ms  uncached / cached"]  # fmt: skip
    for n, row in result["by_steps"].items():
        lines.append(
            f"{n:>5}  {row['chunk_ms']:8.2f}  {result['prefix_ms'] / row['chunk_ms']:14.0%}  "
            f"{row['denoise_ms_per_step']:15.2f}  {row['uncached_chunk_ms']:17.2f}  {row['uncached_over_cached']:17.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run or pretrained_model folder")
    parser.add_argument("--dataset", required=True, help="a LeRobotDataset folder with the observations it reads")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure(args.checkpoint, args.dataset, repeats=args.repeats)
    print(table(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
