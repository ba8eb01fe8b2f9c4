"""Where a VLA's chunk time goes: the VLM prefix vs the denoising steps, and what caching the prefix buys.

For one trained checkpoint and one held-out observation (batch 1), measured side by side in one run with
interleaved repeats (other load on the machine hits every variant alike), per Euler step count N:

- `prefix_ms`: encoding the observation once (`adapter.encode`: SmolVLA's VLM prefix and its KV cache);
- `chunk_ms`: a whole chunk as hf-reflow and LeRobot sample it: the prefix once, then N expert passes on it;
- `uncached_chunk_ms`: the same chunk with the prefix recomputed before every step (no cache);
- `denoise_ms_per_step`: (chunk_ms - prefix_ms) / N, and `uncached_over_cached`: uncached_chunk_ms / chunk_ms.

With `--episodes=E`, also whole closed-loop episodes (reach-v3, evaluation layouts, the policy's own step
count), each played twice in alternation: the camera rendered once per chunk (what evaluation does: the policy
reads its image only when a chunk starts) and at every env step; ms per env step of both, their ratio, and
whether the two gave the same actions.

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


def episode_time(checkpoint: str, *, episodes: int, task: str = "reach-v3") -> dict[str, Any]:
    """ms per env step of closed-loop episodes rendered once per chunk vs at every step (alternating)."""
    from hf_reflow.artifacts.checkpoints import load_checkpoint
    from hf_reflow.evaluation.closed_loop import EPISODE_SEED_BASE, metaworld_episodes

    loaded = load_checkpoint(checkpoint)
    seconds, steps, actions = {False: 0.0, True: 0.0}, {False: 0, True: 0}, {False: [], True: []}
    with torch.no_grad(), metaworld_episodes(loaded, task) as play:
        for seed in range(EPISODE_SEED_BASE, EPISODE_SEED_BASE + episodes):
            for every_step in (False, True):
                play.controller.reads_history = every_step  # True: the frame rendered at every step
                start = time.perf_counter()
                result = play.play(seed)
                seconds[every_step] += time.perf_counter() - start
                steps[every_step] += result.steps
                actions[every_step].append(np.stack(play.controller.actions))
    same = all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(actions[False], actions[True], strict=True))
    per_chunk, every = (1000 * seconds[k] / steps[k] for k in (False, True))
    return {"task": task, "episodes": episodes, "env_steps": steps[False], "ms_per_env_step_render_per_chunk": per_chunk,
            "ms_per_env_step_render_every_step": every, "every_step_over_per_chunk": every / per_chunk,
            "same_actions": same}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['policy_type']} on {result['device']}; prefix (VLM) {result['prefix_ms']:.2f} ms per chunk",
             "steps  chunk ms  of which prefix  denoise ms/step  uncached chunk ms  uncached / cached"]  # fmt: skip
    for n, row in result["by_steps"].items():
        lines.append(
            f"{n:>5}  {row['chunk_ms']:8.2f}  {result['prefix_ms'] / row['chunk_ms']:14.0%}  "
            f"{row['denoise_ms_per_step']:15.2f}  {row['uncached_chunk_ms']:17.2f}  {row['uncached_over_cached']:17.2f}x"
        )
    if "episodes" in result:
        e = result["episodes"]
        lines.append(
            f"closed loop ({e['task']}, {e['episodes']} episodes, {e['env_steps']} env steps): "
            f"{e['ms_per_env_step_render_per_chunk']:.2f} ms per env step rendering once per chunk, "
            f"{e['ms_per_env_step_render_every_step']:.2f} rendering every step ({e['every_step_over_per_chunk']:.2f}x); "
            f"same actions: {e['same_actions']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run or pretrained_model folder")
    parser.add_argument("--dataset", required=True, help="a LeRobotDataset folder with the observations it reads")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=0, help="also time this many closed-loop episodes")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure(args.checkpoint, args.dataset, repeats=args.repeats)
    if args.episodes > 0:
        result["episodes"] = episode_time(args.checkpoint, episodes=args.episodes)
    print(table(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
