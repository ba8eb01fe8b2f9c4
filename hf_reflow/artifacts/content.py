"""What identifies an artifact by its content, wherever it lies: a checkpoint by its weights' sha256, a
LeRobotDataset by its metadata, a couplings folder by its `couplings.json`, a locally built backbone folder
(SmolVLA's `vlm_model_name`) by all its files.

A run's inputs are named by paths (`teacher.path`, `dataset.root`, `couplings.path`, `policy.vlm_model_name`
where it is a local folder), and a path changes when
a run is moved, copied, linked or downloaded elsewhere while the input stays the same. Training records
these hashes beside its config (`input_hashes`), so a rerun finds its inputs by content; the couplings'
`couplings.json` records the first two for the same reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hf_reflow.refs import WEIGHTS, CheckpointRef, checkpoint_folder

COUPLINGS_SPEC = "couplings.json"  # a couplings folder's settings and sources (artifacts/couplings_store.py)


def weights_sha256(checkpoint: str | Path | CheckpointRef, *, revision: str | None = None) -> str:
    """sha256 of a checkpoint's `model.safetensors`: which teacher made a set of couplings."""
    return _file_sha256(CheckpointRef.of(checkpoint, revision=revision).local() / WEIGHTS)


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: str | Path) -> str:
    """sha256 over every file of a folder (relative path and bytes, in sorted order)."""
    digest, folder = hashlib.sha256(), Path(folder)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def dataset_fingerprint(root: str | Path) -> str:
    """sha256 over a LeRobotDataset's `meta/` files (info, stats, tasks, per-episode metadata and stats)."""
    return folder_sha256(Path(root) / "meta")


def couplings_sha256(folder: str | Path) -> str:
    """sha256 of a couplings folder's `couplings.json` (its shards follow from it: teacher, frames, seed)."""
    return hashlib.sha256((Path(folder) / COUPLINGS_SPEC).read_bytes()).hexdigest()


# A run config's local input paths (dotted keys of `TrainConfig.to_dict()`) and what identifies each.
_HASH_OF = {
    "teacher.path": weights_sha256,
    "policy.pretrained_path": weights_sha256,
    "dataset.root": dataset_fingerprint,
    "couplings.path": couplings_sha256,
    "policy.vlm_model_name": folder_sha256,  # a backbone built here (`vlm.build`); a Hub id is compared as text
}
# The file that marks each folder as that kind of artifact (checkpoints are found by `checkpoint_folder`).
_MARKER = {dataset_fingerprint: "meta", couplings_sha256: COUPLINGS_SPEC, folder_sha256: "config.json"}


def _local_input(config: dict[str, Any], key: str) -> str | None:
    parent, leaf = key.split(".")
    value = (config.get(parent) or {}).get(leaf)
    return value if isinstance(value, str) and value and Path(value).exists() else None


def _hash(key: str, path: str) -> str | None:
    """The content hash of the input at `path`, None where it is not that kind of artifact."""
    fn = _HASH_OF[key]
    if fn is weights_sha256:  # a run dir or its pretrained_model folder (read directly: the run resolves it once)
        folder = checkpoint_folder(path)
        return _file_sha256(folder / WEIGHTS) if folder is not None and (folder / WEIGHTS).is_file() else None
    return fn(path) if (Path(path) / _MARKER[fn]).exists() else None


def input_hashes(config: dict[str, Any]) -> dict[str, str]:
    """{dotted key: content hash} of every local input a run config (`TrainConfig.to_dict()`) names."""
    found = {key: _hash(key, path) for key in _HASH_OF if (path := _local_input(config, key))}
    return {key: value for key, value in found.items() if value is not None}


def with_inputs_found(saved: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """A saved run config (`train_config.json`) with each input that `mine` names at another path, but with the
    content the run recorded (its `input_hashes`), given `mine`'s path: a moved or copied run's own inputs."""
    recorded = saved.get("input_hashes")
    if not isinstance(recorded, dict):  # an older run, or a hand-edited record: nothing is known by content
        return saved
    saved = dict(saved)
    for key, value in recorded.items():
        section, leaf = key.split(".") if key in _HASH_OF else (None, None)
        path = _local_input(mine, key) if section else None
        if not path or not isinstance(saved.get(section), dict) or _same_path(saved[section].get(leaf), path):
            continue  # nothing local to compare, or the same path: compared as such (no weights hashed)
        if _hash(key, path) == value:
            saved[section] = {**saved[section], leaf: path}
    return saved


def _same_path(a: Any, b: str) -> bool:
    return isinstance(a, str) and Path(a).resolve() == Path(b).resolve()
