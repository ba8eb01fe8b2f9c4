"""Demonstrations for training: a LeRobotDataset with action chunks, and a deterministic batch order.

The batch order is a pure function of (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen, and each Accelerate process takes its own slice of every batch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from hf_reflow.errors import ConfigError, DataError, HubError
from hf_reflow.hub import Hub

IN_MEMORY_MAX_FRAMES = 200_000
IN_MEMORY_MAX_IMAGE_BYTES = 2 * 1024**3  # camera frames held as uint8

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from hf_reflow.configs import DatasetConfig


def video_backend() -> str:
    """torchcodec when its native library loads, else pyav, chosen quietly.

    LeRobot picks torchcodec when the package is installed and logs a long traceback when its FFmpeg
    libraries are missing before falling back; asking for the working one first keeps a new user's first
    screen free of what looks like a crash.
    """
    try:
        import torchcodec.decoders  # noqa: F401  (loads libtorchcodec_core*, which needs FFmpeg)
    except (ImportError, OSError, RuntimeError):
        return "pyav"
    return "torchcodec"


logger = logging.getLogger(__name__)
HINT = ("point --dataset.root at a LeRobotDataset folder (e.g. made by `hf-reflow dataset toy`) or "
        "--dataset.repo_id at a Hub dataset")


def dataset_source(cfg: DatasetConfig) -> dict[str, Any]:
    """Where the demonstrations came from, for a checkpoint's lineage: repo id, local root, the revision asked
    for and, for a Hub dataset, the commit it resolves to (None when the Hub cannot be reached)."""
    commit = None if cfg.root else _hub_dataset_commit(cfg.repo_id, cfg.revision)
    return {"repo_id": cfg.repo_id, "root": cfg.root, "revision": cfg.revision, "commit": commit}


@functools.lru_cache(maxsize=16)  # asked at every checkpoint save: one request per run
def _hub_dataset_commit(repo_id: str, revision: str | None) -> str | None:
    try:
        return Hub(retries=0).repo_info(repo_id, revision=revision, repo_type="dataset").sha
    except HubError as e:
        logger.warning("cannot resolve the commit of dataset %s (%s); the lineage records none", repo_id, e)
        return None


def load_metadata(cfg: DatasetConfig) -> LeRobotDatasetMetadata:
    """Dataset metadata from `cfg.root` (offline) or the Hub / cache (`cfg.repo_id`), checked: the episodes
    asked for exist. A local root that holds no dataset is said so before any Hub lookup."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    if cfg.root is not None and not (Path(cfg.root) / "meta" / "info.json").is_file():
        found = "no such folder" if not Path(cfg.root).exists() else "not a folder" if not Path(cfg.root).is_dir() else "no meta/info.json in it"
        raise DataError(f"no dataset at {cfg.root!r} ({found}); {HINT}.")
    try:
        meta = LeRobotDatasetMetadata(cfg.repo_id, root=cfg.root, revision=cfg.revision)
    except Exception as e:  # no network, not a LeRobot dataset, a damaged meta/ folder
        where = f"root {cfg.root!r}" if cfg.root else f"repo_id {cfg.repo_id!r}"
        raise DataError(f"cannot open the dataset at {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); {HINT}.") from None
    missing = [e for e in cfg.episodes or [] if e >= meta.total_episodes]
    if missing:
        raise DataError(
            f"dataset.episodes asks for episode(s) {missing[:5]}, but the dataset has episodes 0..{meta.total_episodes - 1}; "
            "pick indices in that range or drop dataset.episodes."
        )
    return meta


def dataset_keys(policy_config: Any, rename_map: dict[str, str] | None = None) -> dict[str, Any]:
    """The features the policy reads, keyed by their name in the dataset (`rename_map`: dataset -> policy key)."""
    wanted = {**(policy_config.input_features or {}), **(policy_config.output_features or {})}
    inverse = {policy_key: data_key for data_key, policy_key in (rename_map or {}).items()}
    return {inverse.get(key, key): feature for key, feature in wanted.items()}


def check_stats(policy_config: Any, meta: LeRobotDatasetMetadata, rename_map: dict[str, str] | None = None) -> None:
    """Fail before training when a feature the policy normalises has no stats (no meta/stats.json: the
    normaliser would silently do nothing) or non-finite ones (NaN / inf in the data)."""
    wanted = dataset_keys(policy_config, rename_map)
    missing = [key for key in wanted if key not in (meta.stats or {})]
    if missing:
        raise DataError(
            f"dataset {meta.repo_id!r} has no normalisation statistics for {', '.join(missing)} (meta/stats.json is "
            "missing or lacks them), so the policy's inputs and actions would not be normalised; restore meta/stats.json "
            "or rewrite the dataset with LeRobot (its finalize() computes them)."
        )
    for key in wanted:
        for name, value in (meta.stats or {}).get(key, {}).items():
            array = np.asarray(value, dtype=np.float64)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise DataError(
                    f"dataset {meta.repo_id!r}: the {name} of {key!r} is not finite (the data holds NaN or inf); "
                    "fix or drop those frames and recompute the stats (meta/stats.json) before training."
                )


def policy_features(meta: LeRobotDatasetMetadata) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input_features, output_features) of a policy trained on this dataset."""
    from lerobot.configs.types import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    features = dataset_to_policy_features(meta.features)
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
    return inputs, outputs


def check_features(policy_config: Any, meta: LeRobotDatasetMetadata, rename_map: dict[str, str] | None = None) -> None:
    """Fail before training when the dataset lacks (or mis-shapes) what the policy reads."""
    unused = sorted(set(rename_map or {}) - set(meta.features))
    if unused:
        raise DataError(
            f"dataset.rename_map renames {', '.join(unused)}, which dataset {meta.repo_id!r} does not have; "
            f"its keys are {', '.join(sorted(meta.features))}."
        )
    for key, feature in dataset_keys(policy_config, rename_map).items():
        if key not in meta.features:
            raise DataError(
                f"dataset {meta.repo_id!r} has no {key!r}, which the {policy_config.type} policy needs; "
                f"its keys are {', '.join(sorted(meta.features))}. Use a dataset with that key, map one onto it "
                "with --rename_map (dataset.rename_map), or a policy whose input_features match it."
            )
        have = tuple(meta.features[key]["shape"])
        if key == "action" and have != tuple(feature.shape):
            raise DataError(
                f"dataset action shape {have} does not match the policy's {tuple(feature.shape)}; "
                "the teacher/student action dimension must equal the dataset's."
            )


def make_dataset(cfg: DatasetConfig, policy_config: Any) -> Dataset:
    """The dataset with action chunks of the policy's `action_delta_indices` (padding flagged).

    Small datasets without images are decoded once into memory (`InMemoryFrames`): LeRobotDataset's
    per-item query costs ~1 ms, which would dominate a small MLP's training step.
    """
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.transforms.transforms import ImageTransforms

    meta = load_metadata(cfg)
    check_features(policy_config, meta, cfg.rename_map)
    check_stats(policy_config, meta, cfg.rename_map)
    delta = resolve_delta_timestamps(policy_config, meta)
    try:
        dataset = LeRobotDataset(
            cfg.repo_id, root=cfg.root, episodes=cfg.episodes, delta_timestamps=delta, revision=cfg.revision,
            video_backend=cfg.video_backend or video_backend(),
            image_transforms=ImageTransforms(cfg.image_transforms) if cfg.image_transforms.enable else None,
        )
    except Exception as e:  # pyarrow / datasets on a garbage or truncated data file (re-raised otherwise)
        if not is_data_file_error(e):
            raise
        where = cfg.root or cfg.repo_id
        raise DataError(
            f"cannot read the frames of the dataset at {where!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "a data file is damaged (e.g. a truncated or foreign parquet file): restore or rewrite the dataset."
        ) from None
    if cfg.in_memory == "never" or (cfg.in_memory == "auto" and not fits_in_memory(meta, len(dataset))):
        return dataset
    if any(f["dtype"] == "video" for f in meta.features.values()):
        raise ConfigError(
            f"dataset.in_memory=always cannot hold the video frames of {cfg.root or cfg.repo_id!r} (they are decoded "
            "from the video files per item); use dataset.in_memory=auto or never."
        )
    return InMemoryFrames(dataset)


def fits_in_memory(meta: LeRobotDatasetMetadata, frames: int) -> bool:
    """`in_memory=auto`: no video features, at most IN_MEMORY_MAX_FRAMES frames and their camera images
    (uint8) within IN_MEMORY_MAX_IMAGE_BYTES."""
    features = meta.features.values()
    if any(f["dtype"] == "video" for f in features) or frames > IN_MEMORY_MAX_FRAMES:
        return False
    image_bytes = sum(int(np.prod(f["shape"])) for f in features if f["dtype"] == "image") * frames
    return image_bytes <= IN_MEMORY_MAX_IMAGE_BYTES


def is_data_file_error(error: BaseException) -> bool:
    """A failure to read data files (datasets' generation error, pyarrow's invalid file), not a bug of ours."""
    names = {type(e).__name__ for e in (error, error.__cause__, error.__context__) if e is not None}
    return bool(names & {"DatasetGenerationError", "ArrowInvalid", "ArrowIOError", "ArrowException"}) or "parquet" in str(error).lower()


class InMemoryFrames(Dataset):
    """Every frame of a dataset decoded once: tensors stacked, strings (the task) kept as lists.

    Built from the dataset's columns in one vectorised pass with LeRobot's own chunk rule (indices
    `i + delta` clamped to the episode, `<key>_is_pad` where clamped), so items equal
    `LeRobotDataset.__getitem__`'s (a test pins this) at a fraction of its per-item cost: ~0.02 ms
    instead of ~1 ms, ~11 ms with a camera and a 16-action chunk. Camera frames stay uint8 (N, 3, H, W)
    in memory and become LeRobot's float [0, 1] (then its `image_transforms`, if any) per item.
    """

    def __init__(self, dataset: Any) -> None:
        reader = dataset.reader
        columns = reader.hf_dataset.with_format("torch")[:]  # column -> (N, ...) tensor; images (N, 3, H, W) uint8
        self.camera_keys = [key for key, f in dataset.meta.features.items() if f["dtype"] == "image"]
        self.image_transforms = dataset.image_transforms
        absolute = columns["index"]  # (N,) absolute frame index
        episodes = columns["episode_index"]  # (N,)
        meta_episodes = dataset.meta.episodes
        bounds = {int(e): (meta_episodes[int(e)]["dataset_from_index"], meta_episodes[int(e)]["dataset_to_index"])
                  for e in torch.unique(episodes)}  # fmt: skip
        start = torch.tensor([bounds[int(e)][0] for e in episodes])  # (N,)
        end = torch.tensor([bounds[int(e)][1] for e in episodes])  # (N,)
        relative = _relative_lookup(absolute)
        for key, deltas in (reader.delta_indices or {}).items():
            wanted = absolute[:, None] + torch.tensor(deltas)[None, :]  # (N, D) absolute indices
            clamped = torch.maximum(start[:, None], torch.minimum(end[:, None] - 1, wanted))
            columns[f"{key}_is_pad"] = (wanted < start[:, None]) | (wanted >= end[:, None])
            columns[key] = columns[key][relative(clamped)]  # (N, D, ...)
        tasks = {int(t): dataset[int(torch.nonzero(columns["task_index"] == t)[0])]["task"]
                 for t in torch.unique(columns["task_index"])}  # fmt: skip
        columns["task"] = [tasks[int(t)] for t in columns["task_index"]]
        self.columns, self.length = columns, len(absolute)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: column[index] for key, column in self.columns.items()}
        for key in self.camera_keys:
            item[key] = self._camera_frame(item[key])
        return item

    def read_batch(self, indices: list[int]) -> dict[str, Any]:
        """`default_collate([self[i] for i in indices])` in one indexing per column (~0.3 ms for 256 frames
        instead of ~4 ms); camera frames are still converted (and augmented) frame by frame, each frame's
        cameras in turn, as item by item: random image transforms draw in the same order."""
        rows = torch.as_tensor(indices, dtype=torch.long)  # (B,)
        out = {key: column[rows] if torch.is_tensor(column) else [column[i] for i in indices]
               for key, column in self.columns.items()}  # fmt: skip
        frames = [[self._camera_frame(out[key][j]) for key in self.camera_keys] for j in range(len(indices))]
        for c, key in enumerate(self.camera_keys):  # (B, 3, H, W) uint8 -> float32
            out[key] = torch.stack([frame[c] for frame in frames])
        return out

    def _camera_frame(self, frame: Tensor) -> Tensor:
        """As LeRobot's ToTensor: (3, H, W) uint8 -> float32 / 255, then its image transforms, if any."""
        frame = frame.to(torch.float32).div(255)
        return frame if self.image_transforms is None else self.image_transforms(frame)


def _relative_lookup(absolute: Tensor) -> Any:
    """Map absolute frame indices to row positions of the (possibly episode-filtered) table."""
    offset = int(absolute.min())
    table = torch.full((int(absolute.max()) - offset + 1,), -1, dtype=torch.long)
    table[absolute - offset] = torch.arange(len(absolute))
    return lambda indices: table[indices - offset]


def fetch_batch(dataset: Dataset, indices: list[int]) -> dict[str, Any]:
    """The collated batch of `dataset[i] for i in indices`: one call to the dataset's `read_batch(indices)` when
    it has one (frames and couplings held in memory), else torch's `default_collate` over the items, one by one."""
    read_batch = getattr(dataset, "read_batch", None)
    return read_batch(indices) if callable(read_batch) else default_collate([dataset[i] for i in indices])


class _Batches(Dataset):
    """A dataset read one whole batch per index (a list of its indices), for a DataLoader without batch_size;
    how many batches there are is the batch sampler's length."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        return fetch_batch(self.dataset, indices)


def batch_loader(dataset: Dataset, batch_sampler: Sampler[list[int]], *, num_workers: int = 0,
                 generator: torch.Generator | None = None) -> DataLoader:  # fmt: skip
    """A DataLoader yielding `fetch_batch(dataset, indices)` for each list of indices `batch_sampler` yields.

    Why not `DataLoader(dataset, batch_sampler=...)`: that builds and collates a dict per item, ~4 ms of a
    ~28 ms `flow_mlp` training step at batch 256; a dataset with `read_batch()` gives the same batch in ~0.3 ms.
    """
    return DataLoader(_Batches(dataset), sampler=batch_sampler, batch_size=None, num_workers=num_workers,
                      generator=generator)  # fmt: skip


class StepBatchSampler(Sampler[list[int]]):
    """Yields the micro-batches of steps `start_step`, `start_step + 1`, ... for one process.

    Epoch e is a permutation of the dataset drawn from `seed + e`; a global micro-batch is
    `batch_size * world_size` consecutive indices of it (the tail is dropped), and process `rank`
    takes the `rank`-th slice, so each process sees `batch_size` samples per micro-step.
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.per_epoch = num_samples // (batch_size * world_size)
        if self.per_epoch == 0:
            raise DataError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes); lower --batch_size or record more episodes."
            )

    def __iter__(self) -> Iterator[list[int]]:
        step, perm_epoch, perm = self.start_step, None, None
        while True:
            epoch, position = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                perm_epoch, perm = epoch, torch.randperm(self.num_samples, generator=generator)
            offset = (position * self.world_size + self.rank) * self.batch_size
            yield perm[offset : offset + self.batch_size].tolist()
            step += 1

    def __len__(self) -> int:  # infinite in practice; DataLoader only needs a number
        return 2**31
