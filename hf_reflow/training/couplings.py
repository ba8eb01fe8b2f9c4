"""Generate reflow couplings once and store them (the alternative to making them online per batch).

    hf-reflow couplings generate --teacher.path=outputs/toy/1rf --dataset.root=data/toy --output=couplings/toy
    accelerate launch -m hf_reflow couplings generate ...        # shards shared across processes

The folder's format (a Hub dataset: `couplings.json` + parquet shards) is `artifacts/couplings_store.py`.
A shard depends only on (seed, block, teacher, dataset), so any number of processes produce the same folder
(process r makes the blocks b with b % world_size == r), and an interrupted run resumes by skipping
finished shards (each written under a temporary name, then renamed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from hf_reflow.artifacts.checkpoints import checkpoint_commit, load_processors
from hf_reflow.artifacts.content import COUPLINGS_SPEC, dataset_fingerprint, weights_sha256
from hf_reflow.artifacts.couplings_store import (
    SHARDS,
    CouplingsSpec,
    block_path,
    block_sizes,
    draw_block,
    features,
    read_spec,
)
from hf_reflow.atomic import TEMPORARY_MARK, atomic_path, write_text
from hf_reflow.configs import COUPLINGS_BLOCK_SIZE
from hf_reflow.data import fetch_batch, load_metadata, make_dataset
from hf_reflow.errors import ConfigError
from hf_reflow.training.teacher import OnlineTeacher


def generate(
    output: str | Path,
    teacher_cfg: Any,
    dataset_cfg: Any,
    *,
    num_couplings: int,
    block_size: int = COUPLINGS_BLOCK_SIZE,
    batch_size: int = 256,
    seed: int = 0,
) -> Path:
    """Make (or finish) a couplings folder; this process's share of shards under Accelerate."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    if num_couplings < 1 or block_size < 1 or batch_size < 1:
        raise ConfigError(
            f"--num_couplings, --block_size and --batch_size must be >= 1, got {num_couplings}, {block_size}, {batch_size}."
        )
    # cpu: as Accelerator reads it. Without it, processes of a CPU-only torchrun are not one group (accelerate
    # groups CPU processes only when told they are CPU ones) and each would make every shard.
    state, root = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")), Path(output)
    teacher = OnlineTeacher(teacher_cfg, device=state.device)
    dataset = make_dataset(dataset_cfg, teacher.config)  # in memory when small: same items, ~100x faster
    spec = CouplingsSpec(
        teacher=str(teacher_cfg.path),
        teacher_commit=checkpoint_commit(teacher.ref),  # the snapshot the teacher's weights were read from
        teacher_sha256=weights_sha256(teacher.ref),
        teacher_num_inference_steps=teacher_cfg.num_inference_steps,
        teacher_solver=teacher_cfg.solver,
        dataset_repo_id=dataset_cfg.repo_id,
        dataset_root=dataset_cfg.root,
        dataset_revision=dataset_cfg.revision,
        dataset_fingerprint=dataset_fingerprint(load_metadata(dataset_cfg).root),
        num_frames=len(dataset),
        num_couplings=num_couplings,
        block_size=block_size,
        seed=seed,
        action_shape=list(teacher.adapter.action_shape),
        policy_type=teacher.config.type,
    )
    _check_or_write_spec(root, spec, state)
    preprocessor, _ = load_processors(
        teacher_cfg.path, teacher.config, device=state.device, revision=teacher_cfg.revision,
        rename_map=dataset_cfg.rename_map,
    )
    sizes = block_sizes(num_couplings, block_size)
    for block in range(state.process_index, len(sizes), state.num_processes):
        if not block_path(root, block).is_file():  # finished shards are skipped: resumable
            _make_block(root, block, sizes[block], spec, teacher, dataset, preprocessor, batch_size)
    state.wait_for_everyone()
    return root


# Where the teacher and the frames are read from may change between runs (a moved run dir, a link, a copy):
# the weights' and the metadata's hashes say whether they are the same, as training checks them.
_CONTENT_HASH_OF = {"teacher": "teacher_sha256", "dataset_root": "dataset_fingerprint"}


def _check_or_write_spec(root: Path, spec: CouplingsSpec, state: Any) -> None:
    """A rerun must ask for the same couplings as the run it resumes (same content: a teacher or frames found
    at another path but with the same hash are the same)."""
    file = root / COUPLINGS_SPEC
    if file.is_file():
        saved, mine = dataclasses.asdict(read_spec(file)), dataclasses.asdict(spec)
        same_content = {k for k, h in _CONTENT_HASH_OF.items() if saved.get(h) is not None and saved.get(h) == mine[h]}
        changed = sorted(k for k, v in mine.items() if saved.get(k) != v and k not in same_content)
        if changed:
            raise ConfigError(
                f"{str(root)!r} holds couplings made with other settings (differs in {', '.join(changed)}); "
                "rerun with the same settings to resume, or choose another --output."
            )
    elif state.is_main_process:
        (root / SHARDS).mkdir(parents=True, exist_ok=True)
        write_text(file, json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True))
    if state.is_main_process:  # shards a killed or failed run left half-written (no process writes yet)
        for stale in (root / SHARDS).glob(f"*{TEMPORARY_MARK}*"):
            stale.unlink(missing_ok=True)
    state.wait_for_everyone()


@torch.no_grad()
def _make_block(
    root: Path, block: int, size: int, spec: CouplingsSpec, teacher, dataset, preprocessor, batch_size
) -> None:
    from datasets import Dataset as ArrowDataset  # heavy: imported when a shard is written

    noise, rows = draw_block(spec.seed, block, size, tuple(spec.action_shape), spec.num_frames)
    actions, where = [], {"episode_index": [], "frame_index": []}
    for start in range(0, size, batch_size):
        batch = fetch_batch(dataset, rows[start : start + batch_size].tolist())
        for key, values in where.items():
            values += batch[key].tolist()
        batch = preprocessor(batch)
        chunk = noise[start : start + batch_size].to(teacher.device)  # (b, chunk, action_dim)
        actions.append(teacher.end_points(batch, chunk).float().cpu())
    columns = {
        "noise": noise.numpy(), "action": torch.cat(actions).numpy(), "row": rows.numpy(), **where,
        "teacher_steps": [spec.teacher_num_inference_steps] * size, "solver": [spec.teacher_solver] * size,
    }  # fmt: skip
    with atomic_path(block_path(root, block)) as tmp:  # a full disk: no half-written shard stays behind
        ArrowDataset.from_dict(columns, features=features(spec.action_shape)).to_parquet(str(tmp))
