"""What a new pipeline run may take from a finished one (`--from_run`): a paired lever retrains only what it changes.

Each artifact is taken only where this run would make the very same one: a dataset written with the same `data`
settings, couplings made by a teacher with the same weights from the same frames with the same settings, a stage
trained with the same settings from inputs with the same content (`run_dir.differences`). It is hard-linked into
this run (`run_dir.link_tree`: no second copy of the weights, and nothing this run writes reaches the other run:
every file is replaced, never edited in place). Everything else is made as usual.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hf_reflow.artifacts.content import COUPLINGS_SPEC, dataset_fingerprint, weights_sha256
from hf_reflow.artifacts.couplings_store import read_spec
from hf_reflow.artifacts.run_dir import TRAIN_CONFIG, differences, link_tree
from hf_reflow.configs import TrainConfig
from hf_reflow.errors import CheckpointError, DataError
from hf_reflow.refs import PRETRAINED_DIR, checkpoint_folder


def link_folder(src: Path, dst: Path, *, complete: str) -> bool:
    """`dst` made from `src` when `dst` is absent and `src/<complete>` exists (a finished dataset, backbone or set
    of closed-loop states), with the record beside it (`<src>.json`: a dataset's summary, the states' policy
    weights); returns whether it was linked. The caller has checked `src` was made as `dst` would be."""
    if dst.exists() or not (src / complete).exists():
        return False
    link_tree(src, dst)
    record = src.parent / f"{src.name}.json"
    if record.is_file():
        shutil.copy2(record, dst.parent / f"{dst.name}.json")
    return True


def link_couplings(src: Path, dst: Path, *, teacher: Any, frames: Path, num_couplings: int, seed: int,
                   block_size: int) -> bool:  # fmt: skip
    """`dst` made from the couplings folder `src` when `dst` is absent and `src` was made by a teacher with the
    weights at `teacher.path`, from the frames at `frames`, with the same count, seed, block size, ODE steps and
    solver (`teacher`: a `TeacherConfig`); a folder with missing shards is finished here as usual."""
    if dst.exists() or not (src / COUPLINGS_SPEC).is_file():
        return False
    try:
        spec = read_spec(src / COUPLINGS_SPEC)
    except DataError:  # another format or a damaged spec: made again here
        return False
    wanted = (num_couplings, seed, block_size, teacher.num_inference_steps, teacher.solver)
    made = (spec.num_couplings, spec.seed, spec.block_size, spec.teacher_num_inference_steps, spec.teacher_solver)
    if made != wanted or spec.dataset_fingerprint != dataset_fingerprint(frames):
        return False
    if spec.teacher_sha256 != weights_sha256(teacher.path):
        return False
    link_tree(src, dst)
    return True


def link_run(src: Path, config: TrainConfig) -> bool:
    """`config.output_dir` made from the finished run dir `src` when it is absent and `src` trained with `config`'s
    settings from inputs with the same content; returns whether it was linked (then the trainer finds it finished)."""
    dst = Path(config.output_dir)
    if dst.exists() or checkpoint_folder(src / PRETRAINED_DIR) is None or not (src / TRAIN_CONFIG).is_file():
        return False
    try:
        if differences(config, src / TRAIN_CONFIG):
            return False
    except CheckpointError:  # its config no longer reads (e.g. its teacher is gone): not reused, trained here
        return False
    link_tree(src, dst, symlinks=True)
    return True
