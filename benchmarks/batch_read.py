"""Time to read a training batch: item by item then collated, or in one read (`data.fetch_batch`).

For one checkpoint's policy (its action chunk) and one dataset, the dataset is built as training builds it
(`data.make_dataset`: held in memory when it fits), then `--batches` random batches of `--batch-size` frames
(drawn uniformly, as the trainer's shuffled batches are) are read both ways, alternating batch by batch so that
both see the same machine load:

- `per_item`: `default_collate([dataset[i] for i in batch])`, what `DataLoader(dataset, batch_sampler=...)`
  does (the trainer's read before `data.batch_loader`);
- `batched`: `data.fetch_batch(dataset, batch)`, the dataset's own `read_batch(indices)`.

Both batches are checked equal (keys, dtypes, values) before anything is timed. Reported: ms per batch each
way and their ratio. The training step this is part of: `updt_s` / `data_s` in the console line.

    python benchmarks/batch_read.py --teacher=outputs/metaworld/seed0/1rf --dataset-root=outputs/metaworld/data/demos
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smolvla_reflow_step import report_json  # noqa: E402


def same_batch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same keys, and every value the same (tensors: dtype and bits); the tests' `assert_same_batch` as a bool."""
    import torch

    return a.keys() == b.keys() and all(
        (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])) if torch.is_tensor(b[k]) else a[k] == b[k] for k in b
    )


def run(args) -> dict[str, Any]:
    import torch
    from torch.utils.data import default_collate

    from hf_reflow.artifacts.checkpoints import load_config
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import fetch_batch, make_dataset

    dataset = make_dataset(DatasetConfig(root=args.dataset_root), load_config(args.teacher))
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(dataset), (args.batch_size,), generator=generator).tolist() for _ in range(args.batches)]
    if not same_batch(fetch_batch(dataset, batches[0]), default_collate([dataset[i] for i in batches[0]])):
        raise RuntimeError("the two ways read different batches")
    seconds = {"per_item": 0.0, "batched": 0.0}
    for indices in batches:
        start = time.perf_counter()
        default_collate([dataset[i] for i in indices])
        seconds["per_item"] += time.perf_counter() - start
        start = time.perf_counter()
        fetch_batch(dataset, indices)
        seconds["batched"] += time.perf_counter() - start
    ms = {way: 1e3 * s / args.batches for way, s in seconds.items()}
    return {
        "dataset": args.dataset_root, "dataset_class": type(dataset).__name__, "frames": len(dataset),
        "batch_size": args.batch_size, "batches": args.batches, "ms_per_batch": ms,
        "ratio_per_item_to_batched": ms["per_item"] / ms["batched"], "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a run or pretrained_model folder (its policy's chunk)")
    parser.add_argument("--dataset-root", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    report_json(result, args.output)
    ms = result["ms_per_batch"]
    print(f"batch of {result['batch_size']}: item by item {ms['per_item']:.2f} ms, one read {ms['batched']:.2f} ms "
          f"({result['ratio_per_item_to_batched']:.1f}x)")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
