"""Faults that once lost or mixed data: two runs into one output dir, damaged final weights, Ctrl-C.

- One run per output dir: a live run's lock refuses a second run in one line naming its pid (in-process and
  through the CLI); a lock file left by a dead process is taken over.
- A finished run whose final `model.safetensors` is truncated is not accepted as finished: `--resume=true`
  rebuilds it from the last checkpoint's training state, bitwise equal to the intact one.
- SIGINT during training ends with one line saying where the last checkpoint is, and no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train_config
from safetensors.torch import load_file

from hf_reflow.artifacts.run_lock import LOCK_FILE, run_lock
from hf_reflow.errors import CheckpointError

SETTINGS = dict(steps=4, save_every=2, batch_size=16, ema_decay=0.9, optim__warmup_steps=1)


def _train(out: Path, toy_dataset: Path, **overrides) -> Path:
    from hf_reflow.training.trainer import ReflowTrainer

    config = train_config(output_dir=str(out), dataset__root=str(toy_dataset), **{**SETTINGS, **overrides})
    return ReflowTrainer(config).train()


def test_a_second_run_into_a_locked_output_dir_is_refused(toy_dataset, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        assert (out / LOCK_FILE).read_text() == str(os.getpid())
        with pytest.raises(CheckpointError, match=rf"in use by another hf-reflow run \(pid {os.getpid()}\)"):
            _train(out, toy_dataset)
        proc = run_cli("train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=2", "--log_with=[]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(lines) == 1 and f"in use by another hf-reflow run (pid {os.getpid()})" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == []  # the refused runs wrote nothing; the lock is gone


def test_a_stale_lock_file_is_taken_over(toy_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("999999")  # a killed run's file: no process holds the lock
    final = _train(out, toy_dataset)
    assert (final / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()


def test_a_truncated_final_model_is_rebuilt_on_resume(toy_dataset, tmp_path):
    out = tmp_path / "run"
    final = _train(out, toy_dataset)
    intact = {k: v.clone() for k, v in load_file(final / "model.safetensors").items()}  # not mmapped: truncated next
    weights = final / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # a hard link: the last checkpoint's copy is truncated too
    rebuilt = _train(out, toy_dataset, resume=True)
    again = load_file(rebuilt / "model.safetensors")
    assert intact.keys() == again.keys() and all(torch.equal(intact[k], again[k]) for k in intact)


def test_ctrl_c_says_where_the_last_checkpoint_is(toy_dataset, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=1000000", "--save_every=5",
                   "--batch_size=8", "--log_with=[]", "--policy.hidden_dim=16", "--policy.num_blocks=1",
                   interrupt_when=out / "checkpoints" / "last", timeout=120)  # Ctrl-C once a checkpoint exists
    stderr = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(lines) == 1 and "interrupted; the last checkpoint is" in lines[0] and "--resume=true" in lines[0]
    named = Path(lines[0].split("'")[1])
    assert (named / "training_state").is_dir() and named.parent == out / "checkpoints"
    assert not (out / LOCK_FILE).exists() and json.loads((out / "train_config.json").read_text())["steps"] == 1000000
    shutil.rmtree(out)


def test_toy_dataset_into_the_current_empty_folder_and_nothing_left_on_failure(tmp_path, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hf_reflow.envs import toy

    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert toy.write_dataset(".", episodes=2) == here and (here / "meta" / "info.json").is_file()

    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LeRobotDataset, "finalize", full_disk)
    with pytest.raises(OSError):
        toy.write_dataset(tmp_path / "full", episodes=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no partial folder


def test_a_rerun_of_couplings_generate_removes_half_written_shards(teacher_1rf, toy_dataset, tmp_path):
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.training.couplings import generate

    teacher, data = TeacherConfig(path=str(teacher_1rf), num_inference_steps=2), DatasetConfig(root=str(toy_dataset))
    out = generate(tmp_path / "couplings", teacher, data, num_couplings=8, block_size=8, batch_size=8)
    stale = out / "data" / "train-00003.tmp-4242"  # what a run stopped by a full disk left
    stale.write_bytes(b"half a shard")
    generate(out, teacher, data, num_couplings=8, block_size=8, batch_size=8)
    assert not stale.exists() and not list(out.rglob("*.tmp-*"))


def test_the_pipeline_removes_what_a_killed_dataset_writer_left(tmp_path):
    from hf_reflow.pipeline import remove_partial_datasets

    data = tmp_path / "data"
    (data / ".demos.partial-1a2b3c4d" / "meta").mkdir(parents=True)  # kill -9 while writing the demonstrations
    (data / ".heldout.tmp-4242" / "meta").mkdir(parents=True)  # the same, in hf_reflow.atomic's naming
    (data / "demos" / "meta").mkdir(parents=True)
    remove_partial_datasets(data)
    assert sorted(p.name for p in data.iterdir()) == ["demos"]
