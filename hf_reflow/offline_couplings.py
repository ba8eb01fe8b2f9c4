"""Reflow couplings generated once and stored as a dataset: the alternative to online generation.

    hf-reflow couplings generate --teacher.path=outputs/toy/1rf --dataset.root=data/toy --output=couplings/toy
    accelerate launch -m hf_reflow couplings generate ...        # blocks shared across processes

A couplings folder holds `couplings.json` (teacher, its commit, ODE steps and solver, dataset, seed,
block size, action shape) and `blocks/block-<b>.safetensors`, one per block of `block_size` couplings:

    noise   (B, chunk, action_dim)  float32, drawn from torch.Generator seeded with block_seed(seed, b)
    action  (B, chunk, action_dim)  float32, the teacher's ODE end point from that noise (normalised space)
    index   (B,)                    int64, the dataset frame each coupling was made for (same generator)

A block depends only on (seed, b, teacher, dataset), so any number of processes produce the same
folder (process r makes blocks b with b % world_size == r), an interrupted run resumes by skipping
finished blocks (each written under a temporary name, then renamed), and the noise can be re-derived
from the seeds. Training reads it with `--couplings.path=DIR` (or a Hub dataset repo id).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from hf_reflow.errors import ConfigError, DataError

METADATA = "couplings.json"
BLOCKS = "blocks"
FORMAT = "hf-reflow-couplings/1"
NOISE_KEY, ACTION_KEY = "reflow.noise", "reflow.action"  # extra batch keys carrying stored couplings


def block_seed(seed: int, block: int) -> int:
    """The generator seed of one block: distinct for every (seed, block)."""
    return seed * 2**32 + block


def block_path(root: Path, block: int) -> Path:
    return root / BLOCKS / f"block-{block:06d}.safetensors"


def draw_block(
    seed: int, block: int, size: int, action_shape: tuple[int, int], num_frames: int
) -> tuple[Tensor, Tensor]:
    """(noise (size, chunk, action_dim), frame index (size,)) of a block, from its seed alone."""
    generator = torch.Generator().manual_seed(block_seed(seed, block))
    noise = torch.randn(size, *action_shape, generator=generator)
    index = torch.randint(num_frames, (size,), generator=generator)
    return noise, index


def _block_sizes(num_couplings: int, block_size: int) -> list[int]:
    full, rest = divmod(num_couplings, block_size)
    return [block_size] * full + ([rest] if rest else [])


@dataclasses.dataclass
class CouplingsSpec:
    """What `couplings.json` records: everything a block depends on."""

    teacher: str
    teacher_commit: str | None
    teacher_num_inference_steps: int
    teacher_solver: str
    dataset_repo_id: str
    dataset_root: str | None
    num_frames: int
    num_couplings: int
    block_size: int
    seed: int
    action_shape: list[int]
    policy_type: str
    format: str = FORMAT

    @property
    def num_blocks(self) -> int:
        return len(_block_sizes(self.num_couplings, self.block_size))


# ---- generation ---------------------------------------------------------------------------
def generate(
    output: str | Path,
    teacher_cfg: Any,
    dataset_cfg: Any,
    *,
    num_couplings: int,
    block_size: int = 1024,
    batch_size: int = 256,
    seed: int = 0,
) -> Path:
    """Make (or finish) a couplings folder; this process's share of blocks under Accelerate."""
    from accelerate import PartialState

    from hf_reflow.checkpoints import load_processors
    from hf_reflow.couplings import OnlineTeacher
    from hf_reflow.data import make_dataset
    from hf_reflow.hub import checkpoint_commit

    if num_couplings < 1 or block_size < 1 or batch_size < 1:
        raise ConfigError(
            f"--num_couplings, --block_size and --batch_size must be >= 1, got {num_couplings}, {block_size}, {batch_size}."
        )
    state, root = PartialState(), Path(output)
    teacher = OnlineTeacher(teacher_cfg, device=state.device)
    dataset = make_dataset(dataset_cfg, teacher.config)  # in memory when small: same items, ~100x faster
    spec = CouplingsSpec(
        teacher=str(teacher_cfg.path),
        teacher_commit=checkpoint_commit(teacher_cfg.path, revision=teacher_cfg.revision),
        teacher_num_inference_steps=teacher_cfg.num_inference_steps,
        teacher_solver=teacher_cfg.solver,
        dataset_repo_id=dataset_cfg.repo_id,
        dataset_root=dataset_cfg.root,
        num_frames=len(dataset),
        num_couplings=num_couplings,
        block_size=block_size,
        seed=seed,
        action_shape=list(teacher.adapter.action_shape),
        policy_type=teacher.config.type,
    )
    _check_or_write_spec(root, spec, state)
    preprocessor, _ = load_processors(
        teacher_cfg.path, teacher.config, device=state.device, revision=teacher_cfg.revision
    )
    sizes = _block_sizes(num_couplings, block_size)
    for block in range(state.process_index, len(sizes), state.num_processes):
        if not block_path(root, block).is_file():  # finished blocks are skipped: resumable
            _make_block(root, block, sizes[block], spec, teacher, dataset, preprocessor, batch_size)
    state.wait_for_everyone()
    return root


def _check_or_write_spec(root: Path, spec: CouplingsSpec, state: Any) -> None:
    """A rerun must ask for the same couplings as the run it resumes."""
    file = root / METADATA
    if file.is_file():
        saved = json.loads(file.read_text())
        changed = sorted(k for k, v in dataclasses.asdict(spec).items() if saved.get(k) != v)
        if changed:
            raise ConfigError(
                f"{str(root)!r} holds couplings made with other settings (differs in {', '.join(changed)}); "
                "rerun with the same settings to resume, or choose another --output."
            )
    elif state.is_main_process:
        (root / BLOCKS).mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True))
    state.wait_for_everyone()


@torch.no_grad()
def _make_block(
    root: Path, block: int, size: int, spec: CouplingsSpec, teacher, dataset, preprocessor, batch_size
) -> None:
    from safetensors.torch import save_file

    noise, index = draw_block(spec.seed, block, size, tuple(spec.action_shape), spec.num_frames)
    actions = []
    for start in range(0, size, batch_size):
        rows = index[start : start + batch_size].tolist()
        batch = preprocessor(torch.utils.data.default_collate([dataset[i] for i in rows]))
        chunk = noise[start : start + batch_size].to(teacher.device)  # (b, chunk, action_dim)
        actions.append(teacher.end_points(batch, chunk).float().cpu())
    tmp = block_path(root, block).with_suffix(f".tmp-{os.getpid()}")
    save_file(
        {"noise": noise.contiguous(), "action": torch.cat(actions).contiguous(), "index": index}, str(tmp)
    )
    tmp.rename(block_path(root, block))


# ---- reading --------------------------------------------------------------------------------
def resolve_couplings(path_or_repo: str, *, revision: str | None = None) -> Path:
    """A local couplings folder, or a Hub dataset repo id downloaded through the cache."""
    local = Path(path_or_repo)
    if (local / METADATA).is_file():
        return local
    if local.exists() or path_or_repo.count("/") != 1:
        raise DataError(
            f"{path_or_repo!r} is not a couplings folder (no {METADATA}); make one with `hf-reflow couplings "
            "generate --output=DIR`, or pass a Hub dataset repo id."
        )
    from hf_reflow.hub import Hub

    return Hub().download(path_or_repo, revision=revision, repo_type="dataset")


def load_couplings(
    path_or_repo: str, *, revision: str | None = None
) -> tuple[CouplingsSpec, dict[str, Tensor]]:
    """The spec and all blocks concatenated: noise (N, chunk, dim), action (N, chunk, dim), index (N,)."""
    from safetensors.torch import load_file

    root = resolve_couplings(path_or_repo, revision=revision)
    spec = CouplingsSpec(**json.loads((root / METADATA).read_text()))
    missing = [b for b in range(spec.num_blocks) if not block_path(root, b).is_file()]
    if missing:
        raise DataError(
            f"couplings {str(root)!r} are incomplete ({len(missing)} of {spec.num_blocks} blocks missing, e.g. "
            f"block {missing[0]}); rerun `hf-reflow couplings generate` with the same settings to finish them."
        )
    blocks = [load_file(str(block_path(root, b))) for b in range(spec.num_blocks)]
    return spec, {key: torch.cat([b[key] for b in blocks]) for key in ("noise", "action", "index")}


class CouplingDataset(Dataset):
    """Training items: the frame a coupling was made for, plus its stored noise and teacher end point."""

    def __init__(self, frames: Dataset, tensors: dict[str, Tensor]) -> None:
        self.frames, self.tensors = frames, tensors

    def __len__(self) -> int:
        return len(self.tensors["index"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.frames[int(self.tensors["index"][i])])
        item[NOISE_KEY], item[ACTION_KEY] = self.tensors["noise"][i], self.tensors["action"][i]
        return item


def training_dataset(
    couplings_cfg: Any, frames: Dataset, *, teacher: str, action_shape: tuple[int, ...]
) -> CouplingDataset:
    """Stored couplings as the dataset of a reflow / distill stage, after checking they fit it."""
    spec, tensors = load_couplings(couplings_cfg.path, revision=couplings_cfg.revision)
    if tuple(spec.action_shape) != tuple(action_shape):
        raise DataError(
            f"couplings {couplings_cfg.path!r} have action chunks {tuple(spec.action_shape)}, the student needs "
            f"{tuple(action_shape)}; generate couplings with this student's teacher."
        )
    if spec.num_frames != len(frames):
        raise DataError(
            f"couplings {couplings_cfg.path!r} index a dataset of {spec.num_frames} frames ({spec.dataset_repo_id}), "
            f"--dataset has {len(frames)}; pass the dataset the couplings were generated on."
        )
    if spec.teacher != teacher:
        import logging

        logging.getLogger(__name__).warning(
            "couplings were generated by teacher %s; this stage's teacher.path is %s", spec.teacher, teacher
        )
    return CouplingDataset(frames, tensors)


def split_stored(batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(batch without stored-coupling keys, those keys): processors must not see them."""
    stored = {k: batch.pop(k) for k in (NOISE_KEY, ACTION_KEY) if k in batch}
    return batch, stored
