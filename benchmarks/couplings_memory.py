"""Peak memory and read time of stored couplings: memory-mapped, held in tensors, and the old all-in-memory path.

Writes `--num-couplings` tiny couplings (default 1,000,000; chunk 4 x action dim 2) as a couplings folder
in the project's format: `couplings.json` (a `CouplingsSpec`) and one parquet shard per block of
`--block-size`, written as `hf-reflow couplings generate` writes them (`features()` at `block_path()`,
noise and dataset rows from `draw_block`), with no teacher: the stored "end point" is the noise halved,
which reading does not care about. The Arrow cache `datasets` builds from the shards on the first open
(in a private HF_DATASETS_CACHE) is built here once, before measuring, as a second training run finds it.

Then, side by side in one run and each in a fresh subprocess, the peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`)
of reading every coupling once, in the same shuffled batches of `--batch-size` through a DataLoader:

- `memory_mapped`: training's path for couplings too big to hold (`dataset.in_memory=never`, or over 2 GiB):
  `couplings_store.open_couplings` (the shards memory-mapped through `datasets`) and `CouplingDataset`, one
  read of the table per batch (`CouplingDataset.batch`, through `data.batch_loader` as training reads it);
- `held`: training's path for couplings that fit (`in_memory=auto`): the same `CouplingDataset` with its
  columns read once into tensors (`in_memory=True`), indexed per batch;
- `in_memory`: the old path: every coupling loaded as torch tensors (`couplings_store.load_couplings`),
  then indexed per item as the old `CouplingDataset` did.

Both processes import the same modules first; `imports_mb` is the peak RSS then. RSS also counts the pages
of a memory-mapped file once read (clean page cache the kernel can drop); `rss_anon_mb` / `rss_file_mb`
(Linux, at the end) split the resident memory into the process's own and that mapped from files.

    python benchmarks/couplings_memory.py                                   # 1,000,000 couplings
    python benchmarks/couplings_memory.py --num-couplings=2000 --output=benchmarks/results/couplings_memory.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PATHS = ("memory_mapped", "held", "in_memory")
SEED = 0


def write_couplings(root: Path, num_couplings: int, block_size: int, action_shape: tuple[int, int],
                    num_frames: int) -> None:  # fmt: skip
    """A complete couplings folder of `num_couplings` (what `check_complete` / `open_couplings` accept)."""
    from datasets import Dataset as ArrowDataset

    from hf_reflow.artifacts import couplings_store as store
    from hf_reflow.artifacts.content import COUPLINGS_SPEC

    spec = store.CouplingsSpec(
        teacher="benchmark (no teacher)", teacher_commit=None, teacher_sha256="0" * 64,
        teacher_num_inference_steps=10, teacher_solver="euler", dataset_repo_id="local/benchmark",
        dataset_root=None, dataset_fingerprint="0" * 64, num_frames=num_frames, num_couplings=num_couplings,
        block_size=block_size, seed=SEED, action_shape=list(action_shape), policy_type="flow_mlp",
    )  # fmt: skip
    (root / store.SHARDS).mkdir(parents=True)
    (root / COUPLINGS_SPEC).write_text(json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True))
    for block, size in enumerate(store.block_sizes(num_couplings, block_size)):
        noise, rows = store.draw_block(SEED, block, size, action_shape, num_frames)
        columns = {
            "noise": noise.numpy(), "action": (0.5 * noise).numpy(), "row": rows.numpy(),
            "episode_index": (rows // 100).numpy(), "frame_index": (rows % 100).numpy(),
            "teacher_steps": [10] * size, "solver": ["euler"] * size,
        }  # fmt: skip
        shard = ArrowDataset.from_dict(columns, features=store.features(action_shape))
        shard.to_parquet(str(store.block_path(root, block)))


class Frames:
    """Stand-in for the LeRobotDataset the couplings index: a tiny item per row, nothing held."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, row: int) -> dict[str, int]:
        return {"frame": int(row)}


class InMemoryCouplings:
    """The old path: all couplings as tensors (noise, action (N, chunk, dim), row (N,)), indexed per item."""

    def __init__(self, frames: Frames, tensors: dict[str, Any]) -> None:
        self.frames, self.tensors = frames, tensors

    def __len__(self) -> int:
        return len(self.tensors["row"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        from hf_reflow.artifacts.couplings_store import ACTION_KEY, NOISE_KEY

        item = dict(self.frames[int(self.tensors["row"][i])])
        item[NOISE_KEY], item[ACTION_KEY] = self.tensors["noise"][i], self.tensors["action"][i]
        return item


class Batches:
    """Every index once, in shuffled batches (the last one shorter), drawn lazily from one permutation."""

    def __init__(self, num: int, batch_size: int) -> None:
        import torch

        self.perm = torch.randperm(num, generator=torch.Generator().manual_seed(SEED))
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.perm), self.batch_size):
            yield self.perm[start : start + self.batch_size].tolist()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_split_mb() -> dict[str, float | None]:
    """Resident memory now: anonymous (the process's own) and file-backed (mapped files), from /proc."""
    status = Path("/proc/self/status")
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines()) if status.is_file() else {}
    value = {key: fields.get(key, "").split() for key in ("RssAnon", "RssFile")}
    return {f"rss_{k[3:].lower()}_mb": int(v[0]) / 2**10 if v else None for k, v in value.items()}


def measure(path: str, root: Path, batch_size: int) -> dict[str, Any]:
    """Read every coupling of `root` once through `path`; peak RSS after the imports and at the end."""
    import datasets  # noqa: F401  (imported by both paths before measuring)
    import torch
    from torch.utils.data import DataLoader

    from hf_reflow.artifacts import couplings_store
    from hf_reflow.data import batch_loader

    imports = peak_rss_mb()
    start = time.perf_counter()
    spec = couplings_store.check_complete(root)
    frames = Frames(spec.num_frames)
    if path in ("memory_mapped", "held"):
        _, table = couplings_store.open_couplings(str(root))
        dataset = couplings_store.CouplingDataset(frames, table, spec.action_shape, in_memory=path == "held")
    else:
        _, tensors = couplings_store.load_couplings(str(root))
        dataset = InMemoryCouplings(frames, tensors)
    read, action_sum = 0, 0.0
    batches = Batches(len(dataset), batch_size)
    loader = DataLoader(dataset, batch_sampler=batches) if path == "in_memory" else batch_loader(dataset, batches)
    for batch in loader:
        read += len(batch[couplings_store.NOISE_KEY])
        action_sum += float(batch[couplings_store.ACTION_KEY].double().sum())
    return {
        "imports_mb": imports, "peak_mb": peak_rss_mb(), **rss_split_mb(), "couplings_read": read,
        "action_sum": action_sum, "read_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def measure_in_subprocess(path: str, root: Path, batch_size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, f"--measure={path}", f"--root={root}", f"--batch-size={batch_size}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"measuring {path} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def run(args) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="couplings_memory_"))
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "cache")  # before `datasets` is imported, here and below
    try:
        root, action_shape = workdir / "couplings", (args.chunk, args.action_dim)
        start = time.perf_counter()
        write_couplings(root, args.num_couplings, args.block_size, action_shape, args.num_frames)
        write_s = time.perf_counter() - start

        from hf_reflow.artifacts.couplings_store import open_couplings

        open_couplings(str(root))  # builds the Arrow cache both paths then map
        result = {path: measure_in_subprocess(path, root, args.batch_size) for path in PATHS}
        if len({(result[p]["couplings_read"], round(result[p]["action_sum"], 3)) for p in PATHS}) != 1:
            raise RuntimeError(f"the paths read different couplings: {result}")
        return {
            "num_couplings": args.num_couplings, "action_shape": list(action_shape), "block_size": args.block_size,
            "num_frames": args.num_frames, "batch_size": args.batch_size, "shards_mb": _size_mb(root / "data"),
            "arrow_cache_mb": _size_mb(workdir / "cache"), "write_s": write_s,
            "peak_rss_mb": {path: result[path]["peak_mb"] for path in PATHS},
            "ratio_in_memory_to_memory_mapped": result["in_memory"]["peak_mb"] / result["memory_mapped"]["peak_mb"],
            "read_s": {path: result[path]["read_s"] for path in PATHS},
            "read_time_ratio_memory_mapped_to_held": result["memory_mapped"]["read_s"] / result["held"]["read_s"],
            "growth_above_imports_mb": {path: result[path]["peak_mb"] - result[path]["imports_mb"] for path in PATHS},
            "details": result, "python": sys.version.split()[0], "platform": sys.platform,
        }  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-couplings", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=1024, help="couplings per shard (as generated)")
    parser.add_argument("--num-frames", type=int, default=10_000, help="rows of the (stand-in) dataset")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    # internal: measure one path in this process
    parser.add_argument("--measure", default=None, choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.root), args.batch_size)))
        return
    sizes = ("num_couplings", "chunk", "action_dim", "block_size", "num_frames", "batch_size")
    if min(getattr(args, name) for name in sizes) < 1:
        parser.error("every size must be >= 1")
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    peaks = result["peak_rss_mb"]
    reads = result["read_s"]
    print(f"peak RSS, {result['num_couplings']:,} couplings: memory-mapped {peaks['memory_mapped']:.1f} MiB, "
          f"held {peaks['held']:.1f} MiB, in memory (old) {peaks['in_memory']:.1f} MiB, ratio in memory / "
          f"memory-mapped {result['ratio_in_memory_to_memory_mapped']:.2f}x")  # fmt: skip
    print(f"read time: memory-mapped {reads['memory_mapped']:.2f} s, held {reads['held']:.2f} s "
          f"({result['read_time_ratio_memory_mapped_to_held']:.1f}x faster held), in memory (old) {reads['in_memory']:.2f} s")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
