"""Stored reflow couplings: a Hugging Face dataset (parquet shards), reproducible from seeds, resumable,
identical when sharded, read memory-mapped for training, refused for another teacher or dataset."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import safetensors.torch
import torch
from conftest import assert_same_batch, run_cli, train_config
from torch.utils.data import default_collate

from hf_reflow.artifacts.couplings_store import (
    block_path,
    block_seed,
    draw_block,
    load_couplings,
    training_dataset,
)
from hf_reflow.configs import CouplingsConfig, DatasetConfig, TeacherConfig
from hf_reflow.errors import ConfigError, DataError
from hf_reflow.training.couplings import generate

SETTINGS = {"num_couplings": 150, "block_size": 64, "batch_size": 32, "seed": 3}


def load_file(path: str) -> dict[str, torch.Tensor]:
    """One parquet shard as tensors, read with `datasets` (its Array2D features give (B, chunk, dim))."""
    from datasets import Dataset

    table = Dataset.from_parquet(path).with_format("torch")
    return {k: v for k, v in table[:].items() if k != "solver"}


@pytest.fixture(scope="module")
def stored(teacher_1rf, toy_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("couplings") / "toy"
    generate(out, TeacherConfig(path=str(teacher_1rf)), DatasetConfig(root=str(toy_dataset)), **SETTINGS)
    return out


def test_blocks_are_the_teacher_end_points_of_seeded_noise(stored, teacher_1rf, toy_dataset):
    from datasets import Array2D, Dataset

    from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors
    from hf_reflow.data import make_dataset
    from hf_reflow.policies.base import sample_policy
    from hf_reflow.policies.factory import adapter_for

    spec, tensors = load_couplings(str(stored))
    assert (spec.num_blocks, tensors["noise"].shape, spec.action_shape) == (3, (150, 8, 2), [8, 2])
    assert spec.teacher_num_inference_steps == 10 and spec.num_frames > 0 and len(spec.teacher_sha256) == 64
    shard = Dataset.from_parquet(str(block_path(stored, 2)))  # the last, partial block: 150 - 2 * 64 = 22
    assert shard.features["noise"] == Array2D(shape=(8, 2), dtype="float32") == shard.features["action"]
    assert set(shard["solver"]) == {"euler"} and set(shard["teacher_steps"]) == {10}
    block = load_file(str(block_path(stored, 2)))
    noise, index = draw_block(spec.seed, 2, 22, (8, 2), spec.num_frames)
    assert torch.equal(block["noise"], noise) and torch.equal(block["row"], index)
    config = load_config(str(teacher_1rf))
    adapter = adapter_for(load_policy(str(teacher_1rf), config=config))
    pre, _ = load_processors(str(teacher_1rf), config)
    frames = make_dataset(DatasetConfig(root=str(toy_dataset), in_memory="never"), config)
    items = [frames[i] for i in index.tolist()]
    assert block["episode_index"].tolist() == [int(item["episode_index"]) for item in items]
    assert block["frame_index"].tolist() == [int(item["frame_index"]) for item in items]
    expected = sample_policy(
        adapter, pre(torch.utils.data.default_collate(items)), noise, num_steps=10
    ).action
    torch.testing.assert_close(block["action"], expected, rtol=0, atol=1e-6)


def test_every_seed_draws_its_own_blocks():
    """Each (seed, block) seeds its own generator: torch keeps 32 bits of a seed, so a seed must not live above them."""
    seeds = {block_seed(seed, block) for seed in (0, 1, 200) for block in range(4)}
    assert len(seeds) == 12 and max(seeds) < 2**32
    noise, rows = draw_block(0, 1, 16, (8, 2), 1000)
    other_noise, other_rows = draw_block(200, 1, 16, (8, 2), 1000)
    assert not torch.allclose(noise, other_noise) and not torch.equal(rows, other_rows)
    again, _ = draw_block(0, 1, 16, (8, 2), 1000)
    assert torch.equal(noise, again)  # and from its seed alone


def test_resume_regenerates_only_missing_blocks(stored, teacher_1rf, toy_dataset):
    before = {b: load_file(str(block_path(stored, b))) for b in range(3)}
    stamp = block_path(stored, 0).stat().st_mtime_ns
    block_path(stored, 1).unlink()
    with pytest.raises(DataError, match="incomplete"):
        load_couplings(str(stored))
    teacher, data = TeacherConfig(path=str(teacher_1rf)), DatasetConfig(root=str(toy_dataset))
    generate(stored, teacher, data, **SETTINGS)
    assert block_path(stored, 0).stat().st_mtime_ns == stamp
    assert all(torch.equal(before[1][k], v) for k, v in load_file(str(block_path(stored, 1))).items())
    with pytest.raises(ConfigError, match="differs in seed"):
        generate(stored, teacher, data, **{**SETTINGS, "seed": 4})


def test_resume_accepts_the_same_teacher_and_frames_at_another_path(stored, teacher_1rf, toy_dataset, tmp_path):
    """A copied teacher checkpoint (same weights) and frames (same metadata) resume the couplings they made;
    a teacher with other weights at the same path is still refused."""
    moved_teacher, moved_data = tmp_path / "teacher", tmp_path / "data"
    shutil.copytree(teacher_1rf, moved_teacher)
    shutil.copytree(toy_dataset, moved_data)
    generate(stored, TeacherConfig(path=str(moved_teacher)), DatasetConfig(root=str(moved_data)), **SETTINGS)
    weights = str(moved_teacher / "pretrained_model" / "model.safetensors")
    safetensors.torch.save_file({k: v + 1.0 for k, v in safetensors.torch.load_file(weights).items()}, weights)
    with pytest.raises(ConfigError, match="differs in teacher, teacher_sha256"):
        generate(stored, TeacherConfig(path=str(moved_teacher)), DatasetConfig(root=str(moved_data)), **SETTINGS)


def test_two_processes_write_the_same_couplings(stored, teacher_1rf, toy_dataset, tmp_path):
    """Two real CPU processes (gloo; each given torchrun's RANK / WORLD_SIZE / MASTER_* variables) share the
    blocks (b % 2 == rank) and write the same folder as one process, byte for byte: every parquet shard and
    couplings.json. (A real torchrun launch: tests/test_trainer.py.)"""
    out = tmp_path / "ddp"
    proc = run_cli("couplings", "generate", f"--teacher.path={teacher_1rf}", f"--dataset.root={toy_dataset}",
                   f"--output={out}", *[f"--{k}={v}" for k, v in SETTINGS.items()], nprocs=2,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("couplings written:") == 1 and "(2 processes)" in proc.stdout  # one group of two
    files = sorted(p.relative_to(stored) for p in stored.rglob("*") if p.is_file() and p.name != "README.md")
    assert len([f for f in files if f.suffix == ".parquet"]) == 3  # 150 couplings in blocks of 64: both ranks wrote
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "README.md")
    for file in files:
        assert (out / file).read_bytes() == (stored / file).read_bytes(), file


def test_training_on_stored_couplings_never_runs_the_teacher(
    stored, teacher_1rf, toy_dataset, tmp_path, monkeypatch
):
    from hf_reflow.training.teacher import OnlineTeacher
    from hf_reflow.training.trainer import ReflowTrainer

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although couplings are stored")

    monkeypatch.setattr(OnlineTeacher, "end_points", no_teacher)
    config = train_config(
        stage="reflow", steps=15, output_dir=str(tmp_path / "2rf"), dataset__root=str(toy_dataset),
        teacher__path=str(teacher_1rf), couplings__path=str(stored), optim__warmup_steps=1,
    )  # fmt: skip
    trainer = ReflowTrainer(config)
    final = trainer.train()
    losses = [h["train/loss"] for h in trainer.history]
    assert len(losses) == 15 and all(torch.isfinite(torch.tensor(losses)))
    info = json.loads((final / "reflow.json").read_text())
    assert info["couplings_dataset"] == str(stored) and info["k"] == 2


def test_bad_couplings_inputs(stored, teacher_1rf, toy_dataset, tmp_path):
    from hf_reflow.training.trainer import ReflowTrainer

    with pytest.raises(ConfigError, match="couplings.path is for reflow"):
        train_config(couplings__path=str(stored))
    config = train_config(
        stage="reflow", steps=2, output_dir=str(tmp_path / "x"), dataset__root=str(toy_dataset),
        teacher__path=str(teacher_1rf), couplings__path=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(DataError, match="not a couplings folder"):
        ReflowTrainer(config).train()
    old = tmp_path / "old"  # the safetensors-block format of earlier versions
    old.mkdir()
    (old / "couplings.json").write_text(json.dumps({"format": "hf-reflow-couplings/1", "teacher": "x"}))
    with pytest.raises(DataError, match="format 'hf-reflow-couplings/1'.*regenerate"):
        load_couplings(str(old))


def test_training_reads_memory_mapped_or_held_and_refuses_another_teacher_or_dataset(
    stored, teacher_1rf, toy_dataset, tmp_path
):
    from datasets.table import MemoryMappedTable
    from safetensors.torch import load_file as load_weights
    from safetensors.torch import save_file

    from hf_reflow.artifacts.checkpoints import load_config
    from hf_reflow.artifacts.couplings_store import NOISE_KEY, CouplingDataset
    from hf_reflow.data import make_dataset

    config = load_config(str(teacher_1rf))
    data = DatasetConfig(root=str(toy_dataset))
    frames = make_dataset(data, config)
    couplings, shape = CouplingsConfig(path=str(stored)), (8, 2)
    held = training_dataset(couplings, frames, teacher=str(teacher_1rf), action_shape=shape, dataset_cfg=data)
    assert held.held is not None  # `in_memory=auto`: 150 small couplings are read once into tensors
    never = dataclasses.replace(data, in_memory="never")
    dataset = training_dataset(couplings, frames, teacher=str(teacher_1rf), action_shape=shape, dataset_cfg=never)
    assert isinstance(dataset, CouplingDataset) and isinstance(dataset.table.data, MemoryMappedTable)
    assert dataset.held is None
    _, tensors = load_couplings(str(stored))
    order = [149, 3, 77, 3, 0]  # a batch's order, unsorted (read sorts for Arrow, then restores it)
    for source in (dataset, held):  # the same items either way
        batch = source.read_batch([3, 149])  # one collated batch, as the items collated one by one
        assert torch.equal(batch[NOISE_KEY][1], tensors["noise"][149]) and len(source) == 150
        assert_same_batch(batch, default_collate([source[3], source[149]]))
        read = source.read(order)
        assert all(torch.equal(read[k], tensors[k][order]) for k in ("noise", "action", "row"))
        assert read["noise"].dtype == torch.float32 and read["row"].dtype == torch.int64

    other = shutil.copytree(teacher_1rf, tmp_path / "other")  # same folder layout, other weights
    weights = load_weights(str(other / "pretrained_model" / "model.safetensors"))
    save_file(
        {k: v + 1e-3 for k, v in weights.items()}, str(other / "pretrained_model" / "model.safetensors")
    )
    with pytest.raises(DataError, match="weights differ from this stage's teacher"):
        training_dataset(couplings, frames, teacher=str(other), action_shape=shape)

    changed = shutil.copytree(toy_dataset, tmp_path / "toy_v2")  # same frames, edited metadata
    stats = json.loads((changed / "meta" / "stats.json").read_text())
    (changed / "meta" / "stats.json").write_text(json.dumps({**stats, "edited": True}))
    with pytest.raises(DataError, match="another version of the dataset"):
        training_dataset(couplings, frames, teacher=str(teacher_1rf), action_shape=shape,
                         dataset_cfg=DatasetConfig(root=str(changed)))  # fmt: skip

    class Shifted(torch.utils.data.Dataset):  # same length, other frames at each row; no metadata folder
        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            return frames[(i + 7) % len(frames)]

    with pytest.raises(DataError, match="another dataset or episode selection"):
        training_dataset(couplings, Shifted(), teacher=str(teacher_1rf), action_shape=shape)


def test_from_run_does_not_link_couplings_of_another_format(tmp_path):
    """`--from_run` takes couplings only where this run would make the same ones: a folder in an older format (or
    with a damaged spec) is made again, not linked and not a traceback."""
    from types import SimpleNamespace

    from hf_reflow.artifacts.reuse import link_couplings

    src = tmp_path / "theirs"
    src.mkdir()
    teacher = SimpleNamespace(path=str(tmp_path / "1rf"), num_inference_steps=10, solver="euler")
    for spec in ('{"format": "hf-reflow-couplings/2"}', "not json"):
        (src / "couplings.json").write_text(spec)
        assert not link_couplings(src, tmp_path / "mine", teacher=teacher, frames=tmp_path / "frames", num_couplings=8,
                                  seed=0, block_size=1024)  # fmt: skip
        assert not (tmp_path / "mine").exists()
