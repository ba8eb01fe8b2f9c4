"""A student's starting weights: a deeper student starts as exactly its teacher; a shallower one is refused."""

from __future__ import annotations

import pytest
import torch
from lerobot.utils.constants import ACTION, OBS_STATE

from hf_reflow.artifacts.checkpoints import load_checkpoint
from hf_reflow.errors import ConfigError
from hf_reflow.parsing import parse_train_config
from hf_reflow.training.student import build_student


def _distill_config(teacher, dataset, out, *flags):
    return parse_train_config([f"--dataset.root={dataset}", "--stage=distill", f"--teacher.path={teacher}",
                               f"--output_dir={out}", *flags])  # fmt: skip


def test_a_deeper_student_starts_as_exactly_its_teacher(tmp_path, teacher_1rf, toy_dataset, caplog):
    teacher = load_checkpoint(teacher_1rf).policy
    blocks = teacher.config.num_blocks
    cfg = _distill_config(teacher_1rf, toy_dataset, tmp_path, f"--policy.num_blocks={blocks + 2}")
    student = build_student(cfg, None, None, torch.device("cpu")).policy.eval()
    assert f"blocks {blocks}-{blocks + 1} of the student are new" in caplog.text  # LeRobot's missing keys, explained
    assert len(student.model.blocks) == blocks + 2
    generator = torch.Generator().manual_seed(0)
    state = torch.randn(5, teacher.config.input_features[OBS_STATE].shape[0], generator=generator)
    x_t = torch.randn(5, teacher.config.chunk_size, teacher.config.output_features[ACTION].shape[0], generator=generator)
    t = torch.rand(5, generator=generator)
    want = teacher.model.velocity(x_t, t, teacher.model.encode(state))
    got = student.model.velocity(x_t, t, student.model.encode(state))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the added blocks are silent, not frozen: their inner layers are random and every layer trains
    added = student.model.blocks[blocks]
    assert added.mlp[-1].weight.abs().max() == 0 and added.mlp[0].weight.abs().max() > 0
    assert all(p.requires_grad for p in added.parameters())


def test_a_student_with_fewer_blocks_than_its_teacher_is_refused_at_parse_time(tmp_path, teacher_1rf, toy_dataset):
    blocks = load_checkpoint(teacher_1rf).config.num_blocks
    with pytest.raises(ConfigError, match=rf"has {blocks} residual blocks, but policy.num_blocks is {blocks - 1}.*"
                                          "init_from_teacher=false"):  # fmt: skip
        _distill_config(teacher_1rf, toy_dataset, tmp_path, f"--policy.num_blocks={blocks - 1}")
    with pytest.raises(ConfigError, match="a new 1-RF without --policy.path"):  # a 1-RF fine-tuned from a checkpoint
        parse_train_config([f"--dataset.root={toy_dataset}", f"--policy.path={teacher_1rf}",
                            f"--policy.num_blocks={blocks - 1}", f"--output_dir={tmp_path / 'ft'}"])  # fmt: skip


def test_a_reflow_run_resolves_its_teacher_once(tmp_path, teacher_1rf, toy_dataset, monkeypatch):
    """The parsed config holds the teacher as a string (resolved once to check it); the run resolves it once
    more (the teacher's `CheckpointRef`) and every later use (student weights, processors, lineage, commit)
    takes that ref."""
    from hf_reflow.refs import CheckpointRef
    from hf_reflow.training.trainer import ReflowTrainer

    resolved, of = [], CheckpointRef.of.__func__

    def counting(cls, value, **kwargs):
        if not isinstance(value, CheckpointRef):
            resolved.append(str(value))
        return of(cls, value, **kwargs)

    monkeypatch.setattr(CheckpointRef, "of", classmethod(counting))
    cfg = parse_train_config([f"--dataset.root={toy_dataset}", "--stage=reflow", f"--teacher.path={teacher_1rf}",
                              f"--output_dir={tmp_path / 'run'}", "--steps=2", "--batch_size=8", "--log_with=[]"])  # fmt: skip
    assert resolved == [str(teacher_1rf)]  # parsing
    ReflowTrainer(cfg).train()
    assert resolved == [str(teacher_1rf)] * 2  # + the run's teacher, nothing else
