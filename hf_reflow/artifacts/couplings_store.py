"""Reflow couplings stored as a Hugging Face dataset (the format; `training/couplings.py` makes them).

    hf-reflow couplings generate --teacher.path=outputs/toy/1rf --dataset.root=data/toy --output=couplings/toy
    accelerate launch -m hf_reflow couplings generate ...        # shards shared across processes

A couplings folder is a Hub dataset repo as it stands: `couplings.json` (teacher, its commit and the
sha256 of its weights, ODE steps and solver, source dataset and a fingerprint of its metadata, seed,
shard size, action shape) and `data/train-<b>.parquet`, one shard per block of `block_size` couplings,
with the `datasets` features

    noise          Array2D (chunk, action_dim) float32, drawn from torch.Generator seeded with block_seed(seed, b)
    action         Array2D (chunk, action_dim) float32, the teacher's ODE end point from that noise (normalised)
    row            int64, the row of the dataset (as loaded) the coupling was made for (same generator)
    episode_index, frame_index   int64, that frame in LeRobot's terms
    teacher_steps  int32, solver string: how the end point was made

A shard depends only on (seed, b, teacher, dataset), so any number of processes produce the same folder
(process r makes shards b with b % world_size == r), an interrupted run resumes by skipping finished
shards (each written under a temporary name, then renamed), and the noise can be re-derived from the
seeds. Training reads the shards memory-mapped through `datasets` (Arrow; never all in RAM), and refuses
couplings whose teacher weights or source dataset differ from the stage's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hf_reflow.artifacts.content import COUPLINGS_SPEC, dataset_fingerprint, weights_sha256
from hf_reflow.data import fetch_batch, is_data_file_error, load_metadata
from hf_reflow.errors import DataError
from hf_reflow.hub import Hub
from hf_reflow.refs import CheckpointRef

logger = logging.getLogger(__name__)

SHARDS = "data"
FORMAT = "hf-reflow-couplings/3"  # 3: block seeds mixed by SeedSequence (2 dropped the seed, below)
NOISE_KEY, ACTION_KEY = "reflow.noise", "reflow.action"  # extra batch keys carrying stored couplings
COLUMNS = ("noise", "action", "row", "episode_index", "frame_index", "teacher_steps", "solver")
_CHECKED_ROWS = 32  # couplings whose frame is compared with the training dataset's
# `dataset.in_memory=auto` holds stored couplings in memory up to this size (noise + end points, float32): the
# default recipe's 120 000 couplings are 61 MB; a SmolVLA chain's (50 x 32 chunks) fits ~160 000.
IN_MEMORY_MAX_COUPLING_BYTES = 2 * 1024**3


def block_seed(seed: int, block: int) -> int:
    """The generator seed of one block, a 32-bit mix of (seed, block) by numpy's `SeedSequence`. 32 bits because
    torch's CPU generator keeps only the low 32 of a seed: format 2's `seed * 2**32 + block` lost `seed`, so every
    seed drew the same noise and rows."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def block_path(root: Path, block: int) -> Path:
    """The parquet shard of block `block` (the Hub reads `data/train-*.parquet` as the train split)."""
    return Path(root) / SHARDS / f"train-{block:05d}.parquet"


def draw_block(
    seed: int, block: int, size: int, action_shape: tuple[int, int], num_frames: int
) -> tuple[Tensor, Tensor]:
    """(noise (size, chunk, action_dim), dataset row (size,)) of a block, from its seed alone."""
    generator = torch.Generator().manual_seed(block_seed(seed, block))
    noise = torch.randn(size, *action_shape, generator=generator)
    row = torch.randint(num_frames, (size,), generator=generator)
    return noise, row


def block_sizes(num_couplings: int, block_size: int) -> list[int]:
    full, rest = divmod(num_couplings, block_size)
    return [block_size] * full + ([rest] if rest else [])


@dataclasses.dataclass
class CouplingsSpec:
    """What `couplings.json` records: everything a shard depends on, and what identifies its sources."""

    teacher: str
    teacher_commit: str | None
    teacher_sha256: str
    teacher_num_inference_steps: int
    teacher_solver: str
    dataset_repo_id: str
    dataset_root: str | None
    dataset_fingerprint: str
    num_frames: int
    num_couplings: int
    block_size: int
    seed: int
    action_shape: list[int]
    policy_type: str
    format: str = FORMAT
    dataset_revision: str | None = None  # the Hub revision the frames were read at (None: main, or a local root)

    @property
    def num_blocks(self) -> int:
        return len(block_sizes(self.num_couplings, self.block_size))


def features(action_shape: tuple[int, ...]) -> Any:
    """The `datasets.Features` of a shard."""
    from datasets import Array2D, Features, Value

    shape = tuple(int(n) for n in action_shape)
    return Features({
        "noise": Array2D(shape=shape, dtype="float32"), "action": Array2D(shape=shape, dtype="float32"),
        "row": Value("int64"), "episode_index": Value("int64"), "frame_index": Value("int64"),
        "teacher_steps": Value("int32"), "solver": Value("string"),
    })  # fmt: skip


# ---- reading --------------------------------------------------------------------------------
def resolve_couplings(path_or_repo: str, *, revision: str | None = None) -> Path:
    """A local couplings folder, or a Hub dataset repo id downloaded through the cache."""
    local = Path(path_or_repo)
    if (local / COUPLINGS_SPEC).is_file():
        return local
    if local.exists() or path_or_repo.count("/") != 1:
        raise DataError(
            f"{path_or_repo!r} is not a couplings folder (no {COUPLINGS_SPEC}); make one with `hf-reflow couplings "
            "generate --output=DIR`, or pass a Hub dataset repo id."
        )
    return Hub().download(path_or_repo, revision=revision, repo_type="dataset")


_COUNTS = ("teacher_num_inference_steps", "num_frames", "num_couplings", "block_size")


def read_spec(file: Path) -> CouplingsSpec:
    """`couplings.json` checked field by field: one `DataError` naming what is wrong, never a traceback."""
    def bad(what: str) -> DataError:
        return DataError(f"{str(file)!r} is not a valid couplings spec ({what}); regenerate the couplings with "
                         "`hf-reflow couplings generate`.")  # fmt: skip

    try:
        saved = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"unreadable JSON: {type(e).__name__}") from None
    if not isinstance(saved, dict):
        raise bad("not a JSON object")
    if saved.get("format") != FORMAT:
        raise DataError(
            f"couplings {str(file.parent)!r} are in format {str(saved.get('format'))[:50]!r}, this hf-reflow reads "
            f"{FORMAT!r}; regenerate them with `hf-reflow couplings generate`."
        )
    fields = {f.name for f in dataclasses.fields(CouplingsSpec)}
    # Keys added after the format was fixed (dataset_revision) keep their default when an older set lacks them.
    optional = {f.name for f in dataclasses.fields(CouplingsSpec) if f.default is not dataclasses.MISSING} - {"format"}
    extra, missing = sorted(set(saved) - fields), sorted(fields - optional - set(saved))
    if extra or missing:
        raise bad(f"unknown key {extra[0][:50]!r}" if extra else f"missing key {missing[0]!r}")
    for key in _COUNTS:
        if isinstance(saved[key], bool) or not isinstance(saved[key], int) or not 1 <= saved[key] <= 10**12:
            raise bad(f"{key} = {str(saved[key])[:50]!r} is not a positive integer")
    if isinstance(saved["seed"], bool) or not isinstance(saved["seed"], int) or saved["seed"] < 0:
        raise bad(f"seed = {str(saved['seed'])[:50]!r} is not an integer >= 0")
    shape = saved["action_shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and 1 <= n <= 10**6 for n in shape)):
        raise bad(f"action_shape = {str(shape)[:50]!r} is not [chunk, action_dim]")
    return CouplingsSpec(**saved)


def check_complete(root: Path) -> CouplingsSpec:
    """The spec of a local couplings folder in this format whose shards are all written."""
    file = Path(root) / COUPLINGS_SPEC
    if not file.is_file():
        raise DataError(
            f"{str(root)!r} is not a couplings folder (no {COUPLINGS_SPEC}); make one with `hf-reflow couplings generate`."
        )
    spec = read_spec(file)
    missing = [b for b in range(spec.num_blocks) if not block_path(Path(root), b).is_file()]
    if missing:
        raise DataError(
            f"couplings {str(root)!r} are incomplete ({len(missing)} of {spec.num_blocks} shards missing, e.g. "
            f"shard {missing[0]}); rerun `hf-reflow couplings generate` with the same settings to finish them."
        )
    return spec


def open_couplings(path_or_repo: str, *, revision: str | None = None) -> tuple[CouplingsSpec, Any]:
    """The spec and the shards as one memory-mapped `datasets.Dataset` (torch format), in shard order."""
    from datasets import Dataset as ArrowDataset

    root = resolve_couplings(path_or_repo, revision=revision)
    spec = check_complete(root)
    files = [str(block_path(root, b)) for b in range(spec.num_blocks)]
    try:
        table = ArrowDataset.from_parquet(files, features=features(spec.action_shape), keep_in_memory=False)
    except Exception as e:  # a garbage or truncated shard (re-raised when it is not a data-file error)
        if not is_data_file_error(e):
            raise
        raise DataError(
            f"cannot read the couplings shards of {str(root)!r} ({type(e).__name__}); a shard is damaged (e.g. "
            "truncated): delete the damaged data/train-*.parquet and rerun `hf-reflow couplings generate` with the "
            "same settings to remake it."
        ) from None
    return spec, table.with_format("torch")


def load_couplings(
    path_or_repo: str, *, revision: str | None = None
) -> tuple[CouplingsSpec, dict[str, Tensor]]:
    """The spec and every coupling in memory (for inspection; training streams them): noise (N, chunk, dim),
    action (N, chunk, dim), row / episode_index / frame_index (N,)."""
    spec, table = open_couplings(path_or_repo, revision=revision)
    columns = table.select_columns(["noise", "action", "row", "episode_index", "frame_index"])[:]
    return spec, dict(columns)


class CouplingDataset(Dataset):
    """Training items: the frame a coupling was made for, plus its stored noise and teacher end point.

    `in_memory`: the columns are read once into tensors and indexed per batch (a batch of 256 in ~0.2 ms
    instead of ~12 ms; `benchmarks/couplings_memory.py`), for couplings that fit (`training_dataset` decides).
    Otherwise they are read straight from the memory-mapped Arrow table (`datasets.Dataset.data`), one `take`
    per batch with the indices sorted (Arrow walks the shards' chunks once), then put back in batch order:
    ~4x faster than `datasets`' torch formatter, and never all couplings in RAM. Both give the same items.
    """

    def __init__(self, frames: Dataset, table: Any, action_shape: tuple[int, ...], *, in_memory: bool = False) -> None:
        self.frames, self.table, self.action_shape = frames, table, tuple(action_shape)
        self.columns = table.data.table.select(["noise", "action", "row"])  # pyarrow.Table, memory-mapped
        # row (N,) int64, noise / action (N, chunk, dim) float32, or None: read per batch
        self.held = self._tensors(self.columns) if in_memory else None

    def __len__(self) -> int:
        return self.columns.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        stored = self.read([i])  # noise / action (1, chunk, dim), row (1,)
        return {**self.frames[int(stored["row"][0])], NOISE_KEY: stored["noise"][0], ACTION_KEY: stored["action"][0]}

    def read_batch(self, indices: list[int]) -> dict[str, Any]:
        """The collated batch at `indices` with one read of the table (`data.batch_loader` calls it per batch)."""
        stored = self.read(indices)  # noise / action (B, chunk, dim), row (B,)
        frames = fetch_batch(self.frames, stored["row"].tolist())
        return {**frames, NOISE_KEY: stored["noise"], ACTION_KEY: stored["action"]}

    def read(self, indices: list[int]) -> dict[str, Tensor]:
        """noise, action (B, chunk, dim) float32 and row (B,) int64 of the couplings at `indices`, in that order."""
        import pyarrow as pa

        indices = np.asarray(indices, dtype=np.int64)
        if self.held is not None:
            return {name: column[torch.from_numpy(indices)] for name, column in self.held.items()}
        order = np.argsort(indices, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))  # sorted position -> batch position
        taken = self._tensors(self.columns.take(pa.array(indices[order])))
        return {name: column[torch.from_numpy(back)] for name, column in taken.items()}

    def _tensors(self, table: Any) -> dict[str, Tensor]:
        """row (n,) int64 and noise / action (n, chunk, dim) float32 of a pyarrow table of couplings, in its order."""
        out = {"row": torch.from_numpy(table.column("row").to_numpy().copy())}
        for name in ("noise", "action"):
            column = table.column(name).combine_chunks()  # Array2D: an extension array over nested lists
            values = getattr(column, "storage", column).flatten().flatten().to_numpy(zero_copy_only=False)
            out[name] = torch.from_numpy(values.reshape(table.num_rows, *self.action_shape).copy())
        return out


def training_dataset(
    couplings_cfg: Any, frames: Dataset, *, teacher: str | CheckpointRef, action_shape: tuple[int, ...],
    teacher_revision: str | None = None, dataset_cfg: Any = None,
) -> CouplingDataset:  # fmt: skip
    """Stored couplings as the dataset of a reflow / distill stage, after checking they were made by this
    teacher (same weights) on this dataset (same metadata fingerprint when `dataset_cfg` or the frames
    name its folder; always the same frame for a sample of couplings)."""
    spec, table = open_couplings(couplings_cfg.path, revision=couplings_cfg.revision)
    where = f"couplings {couplings_cfg.path!r}"
    if tuple(spec.action_shape) != tuple(action_shape):
        raise DataError(
            f"{where} have action chunks {tuple(spec.action_shape)}, the student needs {tuple(action_shape)}; "
            "generate couplings with this student's teacher."
        )
    if spec.num_frames != len(frames):
        raise DataError(
            f"{where} index a dataset of {spec.num_frames} frames ({spec.dataset_repo_id}), --dataset has "
            f"{len(frames)}; pass the dataset the couplings were generated on."
        )
    if weights_sha256(teacher, revision=teacher_revision) != spec.teacher_sha256:
        raise DataError(
            f"{where} were made by the teacher {spec.teacher!r} (commit {spec.teacher_commit or 'unknown'}), whose "
            f"weights differ from this stage's teacher {getattr(teacher, 'source', teacher)!r}; pass that teacher, or "
            "generate couplings with this one."
        )
    _check_same_dataset(spec, table, frames, dataset_cfg, where)
    return CouplingDataset(frames, table, spec.action_shape, in_memory=couplings_fit_in_memory(spec, dataset_cfg))


def couplings_fit_in_memory(spec: CouplingsSpec, dataset_cfg: Any = None) -> bool:
    """Whether training reads the couplings from memory: as `dataset.in_memory` says for the frames (`auto`:
    when their noise and end points, float32, take at most IN_MEMORY_MAX_COUPLING_BYTES; `always`; `never`)."""
    setting = getattr(dataset_cfg, "in_memory", "auto")
    size = 2 * 4 * spec.num_couplings * int(np.prod(spec.action_shape))  # noise + end point, float32
    return setting == "always" or (setting == "auto" and size <= IN_MEMORY_MAX_COUPLING_BYTES)


def _check_same_dataset(spec: CouplingsSpec, table: Any, frames: Any, dataset_cfg: Any, where: str) -> None:
    root = (
        load_metadata(dataset_cfg).root
        if dataset_cfg is not None
        else getattr(getattr(frames, "meta", None), "root", None)
    )
    if root is not None and dataset_fingerprint(root) != spec.dataset_fingerprint:
        raise DataError(
            f"{where} were generated on another version of the dataset ({spec.dataset_repo_id}, metadata "
            f"fingerprint {spec.dataset_fingerprint[:12]}); pass that dataset, or generate couplings on this one."
        )
    picks = torch.linspace(0, len(table) - 1, min(_CHECKED_ROWS, len(table))).long().tolist()
    stored = table.select_columns(["row", "episode_index", "frame_index"])[picks]
    for j, row in enumerate(stored["row"].tolist()):
        item = frames[row]
        if (int(item["episode_index"]), int(item["frame_index"])) != (
            int(stored["episode_index"][j]),
            int(stored["frame_index"][j]),
        ):
            raise DataError(
                f"{where} were generated on another dataset or episode selection: row {row} is episode "
                f"{int(stored['episode_index'][j])} frame {int(stored['frame_index'][j])} there, episode "
                f"{int(item['episode_index'])} frame {int(item['frame_index'])} here; pass the dataset they were made on."
            )


def split_stored(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(batch without stored-coupling keys, those keys): processors must not see them."""
    stored = {k: batch.pop(k) for k in (NOISE_KEY, ACTION_KEY) if k in batch}
    return batch, stored
