"""The Accelerate trainer: learning, reflow, exact resume, lineage, multi-process launch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, free_port, run_cli, train_config
from safetensors.torch import load_file

from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors, read_reflow_info
from hf_reflow.data import StepBatchSampler
from hf_reflow.evaluation.offline import evaluate_checkpoint, observation_batch
from hf_reflow.policies.base import sample_policy
from hf_reflow.policies.factory import adapter_for
from hf_reflow.training.targets import TargetMaker
from hf_reflow.training.teacher import OnlineTeacher
from hf_reflow.training.trainer import ReflowTrainer


def test_flow_matching_loss_falls(teacher_1rf):
    """The session teacher was trained 400 steps from scratch: its logged loss fell."""
    info = read_reflow_info(teacher_1rf)
    assert info["stage"] == "flow_matching" and info["k"] == 1 and info["num_steps"] == 10
    assert load_config(teacher_1rf).num_steps == 10  # stage default written into config.json


def test_loss_falls_and_every_trainable_parameter_changes(tmp_path, toy_dataset, teacher_1rf):
    trainer = ReflowTrainer(
        train_config(
            stage="flow_matching", steps=60, output_dir=str(tmp_path / "ft"), dataset__root=str(toy_dataset),
            policy={"path": str(teacher_1rf)}, optim__lr=3e-3, optim__warmup_steps=1,
        )
    )  # fmt: skip
    final = trainer.train()
    losses = [row["train/loss"] for row in trainer.history]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    before = load_file(teacher_1rf / "pretrained_model" / "model.safetensors")
    after = load_file(final / "model.safetensors")
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert before.keys() == after.keys() and not unchanged


def _one_step_error_vs_teacher(student_dir, teacher_dir, dataset_root):
    """MSE of a policy's 1-step chunk against the teacher's 10-step chunk, same noise and observations."""
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import make_dataset

    teacher = adapter_for(load_policy(str(teacher_dir)))
    student = adapter_for(load_policy(str(student_dir)))
    config = load_config(str(teacher_dir))
    pre, _ = load_processors(str(teacher_dir), config)
    dataset = make_dataset(DatasetConfig(repo_id="local/toy", root=str(dataset_root), in_memory="never"), config)
    batch = pre(observation_batch(dataset, 256, seed=1))
    noise = torch.randn(256, *teacher.action_shape, generator=torch.Generator().manual_seed(0))
    target = sample_policy(teacher, batch, noise, num_steps=10).action
    one_step = {name: sample_policy(a, batch, noise, num_steps=1).action for name, a in (("teacher", teacher), ("student", student))}
    return {name: float((action - target).pow(2).mean()) for name, action in one_step.items()}


def test_reflow_makes_one_step_samples_match_the_teacher(tmp_path, toy_dataset, teacher_1rf):
    trainer = ReflowTrainer(
        train_config(
            stage="reflow", steps=300, batch_size=64, output_dir=str(tmp_path / "2rf"), dataset__root=str(toy_dataset),
            teacher__path=str(teacher_1rf), flow__time_sampler="u_shaped", optim__lr=1e-3, optim__warmup_steps=10,
        )
    )  # fmt: skip
    final = trainer.train()
    errors = _one_step_error_vs_teacher(final, teacher_1rf, toy_dataset)
    # The curved 1-RF flow averages the two modes in one step; the reflowed student does not.
    assert errors["student"] < 0.5 * errors["teacher"], errors
    info = read_reflow_info(final)
    assert info["k"] == 2 and info["teacher"] == str(teacher_1rf) and info["teacher_num_inference_steps"] == 10
    assert info["couplings_seen"] == 300 * 64
    assert load_config(final).num_steps == 2  # recommended step count of a reflow stage
    # The student kept the teacher's normalisation stats (teacher samples live in that space).
    for name in ("policy_preprocessor_step_3_normalizer_processor.safetensors",):
        teacher_stats = load_file(teacher_1rf / "pretrained_model" / name)
        student_stats = load_file(final / name)
        assert all(torch.equal(teacher_stats[k], student_stats[k]) for k in teacher_stats)


def test_distill_stage_is_trained_at_t1_and_saved_for_one_step(tmp_path, toy_dataset, teacher_1rf):
    final = ReflowTrainer(
        train_config(stage="distill", steps=5, output_dir=str(tmp_path / "d"), dataset__root=str(toy_dataset),
                     teacher__path=str(teacher_1rf))
    ).train()  # fmt: skip
    info = read_reflow_info(final)
    assert info["distilled"] and info["time_sampler"] == "fixed_t1" and info["k"] == 1
    assert load_config(final).num_steps == 1


def test_a_two_step_distill_stage_trains_at_its_euler_grid_and_is_evaluated_at_1_and_2(tmp_path, toy_dataset, teacher_1rf):
    config = train_config(stage="distill", num_steps=2, steps=4, output_dir=str(tmp_path / "d2"),
                          dataset__root=str(toy_dataset), teacher__path=str(teacher_1rf))  # fmt: skip
    times = TargetMaker(config, None).sample_time(torch.zeros(2000, 3, 2))
    assert sorted(times.unique().tolist()) == [0.5, 1.0]  # the times a 2-step Euler sampler queries, and only those
    final = ReflowTrainer(config).train()
    assert read_reflow_info(final)["time_sampler"] == "euler_grid_2" and load_config(final).num_steps == 2
    rows = evaluate_checkpoint(str(final), config.dataset, step_counts=[1, 2, 4, 10], num_samples=4, own_steps_only=True)
    assert [row["num_steps"] for row in rows] == [1, 2]  # 4 and 10 are not on its grid; 1 is (t = 1)


def test_a_moved_run_finds_its_teacher_and_frames_by_content(tmp_path, toy_dataset, teacher_1rf):
    """A finished reflow run moved with its teacher and frames (a pipeline output dir moved, copied or downloaded)
    is the same run at its new paths: `train_config.json` records their content hashes. Other weights at the
    teacher's new path are still another run."""
    from hf_reflow.artifacts.run_dir import check_run_dir
    from hf_reflow.errors import CheckpointError

    def config(root):
        return train_config(stage="reflow", steps=2, batch_size=8, output_dir=str(root / "2rf"), resume=True,
                            dataset__root=str(root / "data"), teacher__path=str(root / "1rf"))  # fmt: skip

    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(toy_dataset, old / "data")
    shutil.copytree(teacher_1rf, old / "1rf", symlinks=True)
    ReflowTrainer(config(old)).train()
    recorded = json.loads((old / "2rf" / "train_config.json").read_text())["input_hashes"]
    assert sorted(recorded) == ["dataset.root", "policy.pretrained_path", "teacher.path"]
    old.rename(new)  # the paths the run recorded are gone
    assert check_run_dir(config(new)) is True  # finished: nothing to train
    weights = new / "1rf" / "pretrained_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # other weights where the teacher was found
    with pytest.raises(CheckpointError, match=r"no longer parses .*no checkpoint at teacher.path '.*old/1rf'"):
        check_run_dir(config(new))
    shutil.copytree(teacher_1rf, old / "1rf", symlinks=True)  # its teacher is back where it was; the one asked for differs
    (old / "data").symlink_to(new / "data")
    with pytest.raises(CheckpointError, match=r"holds a different run \(differs in policy, teacher\)"):
        check_run_dir(config(new))


def test_a_backbone_built_here_is_an_input_known_by_content(tmp_path):
    """SmolVLA's `vlm_model_name` names the backbone folder a VLA recipe builds (`vlm.build`): a run linked or
    moved to another output dir finds its own backbone there by content; another backbone is another run."""
    from hf_reflow.artifacts.content import input_hashes, with_inputs_found

    old, new = tmp_path / "old" / "vlm", tmp_path / "new" / "vlm"
    old.mkdir(parents=True)
    (old / "config.json").write_text('{"model_type": "smolvlm"}')
    (old / "tokenizer.json").write_text('{"model": {"vocab": {"push": 0}}}')
    saved = {"policy": {"type": "smolvla", "vlm_model_name": str(old)}}
    saved["input_hashes"] = input_hashes(saved)
    assert list(saved["input_hashes"]) == ["policy.vlm_model_name"]
    shutil.copytree(old, new)
    mine = {"policy": {"type": "smolvla", "vlm_model_name": str(new)}}
    assert with_inputs_found(saved, mine)["policy"]["vlm_model_name"] == str(new)
    (new / "tokenizer.json").write_text('{"model": {"vocab": {"reach": 0}}}')  # another tokenizer
    assert with_inputs_found(saved, mine)["policy"]["vlm_model_name"] == str(old)
    hub_id = {"policy": {"type": "smolvla", "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"}}
    assert input_hashes(hub_id) == {}  # a Hub id is compared as text


@pytest.mark.parametrize("reuse", [1, 2])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, toy_dataset, teacher_1rf, reuse):
    settings = dict(
        stage="reflow", steps=8, save_every=4, batch_size=16, dataset__root=str(toy_dataset),
        teacher__path=str(teacher_1rf), ema_decay=0.9, teacher__num_inference_steps=3, coupling_reuse=reuse,
    )  # fmt: skip
    full = ReflowTrainer(train_config(output_dir=str(tmp_path / "full"), **settings)).train()
    # lerobot-train's layout: checkpoints/<step>/{pretrained_model,training_state}, checkpoints/last -> the final one.
    checkpoints = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000004", "000008", "last"]
    assert os.readlink(checkpoints / "last") == "000008"
    assert (checkpoints / "last" / "pretrained_model" / "train_config.json").is_file()
    last = load_file(checkpoints / "last" / "pretrained_model" / "model.safetensors")
    # "Kill" a copy after its step-4 checkpoint: drop everything written later, then resume.
    shutil.copytree(tmp_path / "full", tmp_path / "resumed", symlinks=True)
    shutil.rmtree(tmp_path / "resumed" / "pretrained_model")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "000008")
    (tmp_path / "resumed" / "checkpoints" / "last").unlink()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["000004"]
    resumed = ReflowTrainer(train_config(output_dir=str(tmp_path / "resumed"), resume=True, **settings)).train()
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], last[k]) for k in a)  # the final model (EMA weights) is checkpoints/last's
    assert os.readlink(tmp_path / "resumed" / "checkpoints" / "last") == "000008"
    # Resuming a finished run does nothing and returns its final checkpoint.
    again = ReflowTrainer(train_config(output_dir=str(tmp_path / "resumed"), resume=True, **settings))
    assert again.train() == resumed and again.history == []




def _recorded_updates(monkeypatch, **settings) -> tuple[list[tuple], list[int]]:
    """Train with `settings`; return (frames, noise, t, action) of every update and the teacher's solve count."""
    updates, solves = [], []
    train_step, end_points = ReflowTrainer.train_step, OnlineTeacher.end_points

    def recording_step(self, state, batch, targets, step):
        updates.append((batch["index"].clone(), targets.noise.clone(), targets.t.clone(), targets.action.clone()))
        return train_step(self, state, batch, targets, step)

    def counting_solve(self, batch, noise, context=None):
        solves.append(len(noise))
        return end_points(self, batch, noise, context)

    monkeypatch.setattr(ReflowTrainer, "train_step", recording_step)
    monkeypatch.setattr(OnlineTeacher, "end_points", counting_solve)
    ReflowTrainer(train_config(**settings)).train()
    return updates, solves


@pytest.mark.parametrize("reuse", [1, 3])
def test_coupling_reuse_serves_each_batch_r_updates_with_fresh_times(tmp_path, toy_dataset, teacher_1rf, monkeypatch, reuse):
    updates, solves = _recorded_updates(
        monkeypatch, stage="reflow", steps=6, batch_size=16, output_dir=str(tmp_path / "run"), coupling_reuse=reuse,
        dataset__root=str(toy_dataset), teacher__path=str(teacher_1rf), teacher__num_inference_steps=3,
    )  # fmt: skip
    assert len(updates) == 6 and solves == [16] * (6 // reuse)  # one teacher solve per batch of couplings
    for first in range(0, 6, reuse):
        group = updates[first : first + reuse]
        frames, noise, _, action = group[0]
        for other in group[1:]:  # the same frames and coupling (noise -> teacher end point) ...
            assert torch.equal(other[0], frames) and torch.equal(other[1], noise) and torch.equal(other[3], action)
        times = torch.stack([update[2] for update in group])  # ... at times drawn afresh for every update
        assert all(not torch.equal(times[i], times[j]) for i in range(reuse) for j in range(i))
    batches = updates[::reuse]  # a new batch: the sampler's next frames and new noise
    frames = json.loads((toy_dataset / "meta" / "info.json").read_text())["total_frames"]
    sampler = iter(StepBatchSampler(frames, 16, seed=0))
    assert [update[0].tolist() for update in batches] == [next(sampler) for _ in batches]
    assert all(not torch.equal(a[1], b[1]) for a, b in zip(batches, batches[1:], strict=False))
    info = read_reflow_info(tmp_path / "run" / "pretrained_model")
    assert info["coupling_reuse"] == reuse and info["couplings_seen"] == 6 // reuse * 16


def test_resume_falls_back_past_a_damaged_checkpoint_and_removes_leftovers(tmp_path, toy_dataset):
    """A newest checkpoint truncated by a full disk is skipped for the one before; temporary folders a killed
    run left (whatever PID wrote them) are removed; the result still equals the uninterrupted run."""
    settings = dict(steps=6, save_every=2, batch_size=16, dataset__root=str(toy_dataset))
    full = ReflowTrainer(train_config(output_dir=str(tmp_path / "full"), **settings)).train()
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", run, symlinks=True)
    shutil.rmtree(run / "pretrained_model")
    shutil.rmtree(run / "checkpoints" / "000006")
    state = run / "checkpoints" / "000004" / "training_state" / "optimizer_state.safetensors"
    state.write_bytes(state.read_bytes()[:64])  # the newest checkpoint is damaged
    leftovers = [run / ".pretrained_model.tmp-99999", run / "checkpoints" / ".000006.tmp", run / ".pretrained_model.old-7"]
    for folder in leftovers:
        folder.mkdir()
    resumed = ReflowTrainer(train_config(output_dir=str(run), resume=True, **settings)).train()
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # one machine, one process: the resume guarantee is bitwise
    assert not any(folder.exists() for folder in leftovers)



def test_lerobots_own_loader_reads_our_training_state(tmp_path, toy_dataset):
    """The part of the training state lerobot-train also keeps is in LeRobot's files: its
    `load_training_state` restores the step, the AdamW moments and the schedule from our checkpoint."""
    from lerobot.common.train_utils import load_training_state
    from lerobot.utils.random_utils import get_rng_state, set_rng_state

    settings = dict(steps=4, save_every=2, batch_size=16, dataset__root=str(toy_dataset))
    ReflowTrainer(train_config(output_dir=str(tmp_path / "run"), **settings)).train()
    checkpoint = tmp_path / "run" / "checkpoints" / "000002"
    saved = load_file(checkpoint / "training_state" / "optimizer_state.safetensors")  # "state/<i>/exp_avg", ...
    groups = json.loads((checkpoint / "training_state" / "optimizer_param_groups.json").read_text())
    optimizer = torch.optim.AdamW([
        {**{k: v for k, v in group.items() if k != "params"},
         "params": [torch.zeros_like(saved[f"state/{i}/exp_avg"]) for i in group["params"]]}
        for group in groups
    ])  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rng = get_rng_state()
    try:
        step, optimizer, scheduler = load_training_state(checkpoint, optimizer, scheduler)
    finally:
        set_rng_state(rng)  # LeRobot's loader also sets this process's generators
    assert step == 2 and scheduler.last_epoch == 2
    moments = [optimizer.state[p]["exp_avg"] for group in optimizer.param_groups for p in group["params"]]
    assert len(moments) == len(groups[0]["params"]) + sum(len(g["params"]) for g in groups[1:])
    assert all(m.abs().sum() > 0 for m in moments)  # restored, not the zeros a new optimizer starts from


def test_save_checkpoint_false_writes_only_the_final_model(tmp_path, toy_dataset):
    """lerobot-train's --save_checkpoint=false: no checkpoints/ (no training state); the final model, the same
    weights as a run that checkpoints, is still the run's pretrained_model/ and a rerun finds it finished."""
    from hf_reflow.errors import ConfigError

    settings = dict(steps=4, batch_size=16, ema_decay=0.9, dataset__root=str(toy_dataset))
    full = ReflowTrainer(train_config(output_dir=str(tmp_path / "full"), **settings)).train()
    bare = ReflowTrainer(train_config(output_dir=str(tmp_path / "bare"), save_checkpoint=False, **settings)).train()
    assert {p.name for p in (tmp_path / "bare").iterdir()} == {"pretrained_model", "train_config.json", "logs"}
    assert (tmp_path / "full" / "checkpoints" / "last").is_symlink()
    assert sorted(p.name for p in bare.iterdir()) == sorted(p.name for p in full.iterdir())
    a, b = load_file(full / "model.safetensors"), load_file(bare / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # EMA weights, bitwise
    again = train_config(output_dir=str(tmp_path / "bare"), save_checkpoint=False, resume=True, **settings)
    assert ReflowTrainer(again).train() == bare
    with pytest.raises(ConfigError, match="save_every=2 asks for checkpoints but save_checkpoint is false"):
        train_config(output_dir=str(tmp_path / "x"), save_checkpoint=False, save_every=2, **settings)


def test_a_finished_run_from_before_a_field_existed_is_still_this_run(tmp_path, toy_dataset):
    """A `train_config.json` written before a field was added (here optim.type / optim.eps) reads as that field's
    default, so rerunning the same command finds the run finished instead of refusing it."""
    settings = dict(steps=3, batch_size=16, dataset__root=str(toy_dataset), output_dir=str(tmp_path / "run"))
    final = ReflowTrainer(train_config(**settings)).train()
    saved = tmp_path / "run" / "train_config.json"
    old = json.loads(saved.read_text())
    del old["optim"]["type"], old["optim"]["eps"], old["shortcut"]
    saved.write_text(json.dumps(old))
    again = ReflowTrainer(train_config(resume=True, **settings))
    assert again.train() == final and again.history == []


class _PresetConfig:
    """A policy config with LeRobot's pi0 / SmolVLA-style presets (AdamW + cosine_decay_with_warmup)."""

    type = "fake"

    def get_optimizer_preset(self):
        from lerobot.optim import AdamWConfig

        return AdamWConfig(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-10, grad_clip_norm=10.0)

    def get_scheduler_preset(self):
        from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

        return CosineDecayWithWarmupSchedulerConfig(num_warmup_steps=10, num_decay_steps=100, peak_lr=1e-4, decay_lr=2.5e-6)


def _lrs(scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_optimizer_and_schedule_default_to_the_policys_presets():
    import math

    from hf_reflow.configs import OptimConfig
    from hf_reflow.policies.flow_mlp import FlowMLPConfig
    from hf_reflow.training.optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    # flow_mlp's presets are hf-reflow's AdamW + warmup-cosine (what its recipes were tuned with).
    optimizer, scheduler, used = build_optimizer(OptimConfig(), FlowMLPConfig(), params, total_steps=300)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW) and group["weight_decay"] == 1e-4 and group["betas"] == (0.9, 0.999)
    assert used["preset_of"] == "flow_mlp" and used["overridden"] == [] and used["optimizer"]["grad_clip_norm"] == 1.0
    expected = [1e-3 * ((s + 1) / 100 if s < 100 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 100) / 200)))
                for s in range(300)]  # fmt: skip
    assert _lrs(scheduler, 300) == pytest.approx(expected, rel=1e-12)
    # Each field given wins over the preset; the rest stays the preset's.
    optimizer, scheduler, used = build_optimizer(
        OptimConfig(lr=1e-4, warmup_steps=5, min_lr_ratio=0.5), FlowMLPConfig(), params, total_steps=20
    )
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4 and used["overridden"] == ["lr", "min_lr_ratio", "warmup_steps"]
    assert used["scheduler"] == {"type": "warmup_cosine", "num_warmup_steps": 5, "min_lr_ratio": 0.5}
    assert _lrs(scheduler, 21)[-1] == pytest.approx(0.5e-4, rel=1e-9)  # at the last step: min_lr_ratio x lr


def test_lerobot_presets_with_overrides():
    from hf_reflow.configs import OptimConfig
    from hf_reflow.errors import ConfigError
    from hf_reflow.training.optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, scheduler, used = build_optimizer(OptimConfig(), _PresetConfig(), params, total_steps=100)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95) and used["optimizer"]["grad_clip_norm"] == 10.0
    assert used["scheduler"]["type"] == "cosine_decay_with_warmup" and used["scheduler"]["peak_lr"] == 1e-4
    assert _lrs(scheduler, 101)[-1] == pytest.approx(2.5e-6)
    # A new lr keeps the preset's decay ratio; min_lr_ratio and decay_steps map onto LeRobot's fields.
    _, scheduler, used = build_optimizer(OptimConfig(lr=1e-3, decay_steps=50), _PresetConfig(), params, total_steps=100)
    assert used["scheduler"]["peak_lr"] == 1e-3 and used["scheduler"]["decay_lr"] == pytest.approx(2.5e-5)
    assert used["scheduler"]["num_decay_steps"] == 50
    _, _, used = build_optimizer(OptimConfig(min_lr_ratio=0.5), _PresetConfig(), params, total_steps=100)
    assert used["scheduler"]["decay_lr"] == pytest.approx(0.5e-4)
    _, scheduler, used = build_optimizer(OptimConfig(scheduler="constant"), _PresetConfig(), params, total_steps=10)
    assert used["scheduler"] == {"type": "constant"} and set(_lrs(scheduler, 10)) == {1e-4}
    optimizer, _, used = build_optimizer(OptimConfig(type="sgd", lr=0.1), _PresetConfig(), params, total_steps=10)
    assert isinstance(optimizer, torch.optim.SGD) and used["optimizer"]["lr"] == 0.1
    with pytest.raises(ConfigError, match="optim.betas does not apply to the sgd optimizer"):
        build_optimizer(OptimConfig(type="sgd", betas=[0.9, 0.9]), _PresetConfig(), params, total_steps=10)
    with pytest.raises(ConfigError, match="optim.warmup_steps needs a schedule"):
        build_optimizer(OptimConfig(scheduler="constant", warmup_steps=3), _PresetConfig(), params, total_steps=10)


@pytest.mark.slow
def test_accelerate_launch_with_the_cpu_ddp_config(tmp_path, toy_dataset):
    """`accelerate launch --config_file cpu_ddp.yaml -m hf_reflow train` runs (one process without MPI)."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate_configs/cpu_ddp.yaml",
        "--main_process_port", str(free_port()), "-m", "hf_reflow", "train", "--steps=3", "--batch_size=8",
        "--log_with=[]", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--policy.hidden_dim=32",
        "--policy.chunk_size=8", "--policy.n_action_steps=4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "pretrained_model" / "model.safetensors").is_file()
    assert json.loads((out / "pretrained_model" / "reflow.json").read_text())["batch_size"] == 8
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary dirs left behind
    assert load_policy(str(out)).config.num_steps == 10


def test_two_cpu_processes_train_one_model(tmp_path, toy_dataset):
    """Two real CPU processes (gloo DDP), each given what torchrun gives its workers (RANK, WORLD_SIZE,
    MASTER_ADDR, ...; `torchrun --nproc_per_node=2 -m hf_reflow train ...` with ACCELERATE_USE_CPU=true).
    Accelerate's own MULTI_CPU launcher starts one process unless it is given an MPI hostfile, so multi-process
    CPU training goes through torchrun (the launcher itself: test_accelerate_launch_with_the_cpu_ddp_config)."""
    out = tmp_path / "ddp"
    proc = run_cli("train", "--steps=3", "--batch_size=8", "--log_with=[]", f"--dataset.root={toy_dataset}",
                   f"--output_dir={out}", "--policy.hidden_dim=32", "--policy.chunk_size=8", "--policy.n_action_steps=4",
                   nprocs=2, env={**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "pretrained_model" / "reflow.json").read_text())
    assert info["num_processes"] == 2 and info["batch_size"] == 8


def test_a_compiled_teacher_makes_the_eager_couplings(toy_dataset, teacher_1rf):
    """`teacher.compile=true` (torch.compile of the velocity call) changes speed, not the couplings."""
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.data import make_dataset

    config = load_config(str(teacher_1rf))
    pre, _ = load_processors(str(teacher_1rf), config)
    dataset = make_dataset(DatasetConfig(repo_id="local/toy", root=str(toy_dataset), in_memory="never"), config)
    batch = pre(observation_batch(dataset, 64, seed=1))
    noise = torch.randn(64, *adapter_for(load_policy(str(teacher_1rf))).action_shape)
    cpu = torch.device("cpu")
    eager_teacher = OnlineTeacher(TeacherConfig(path=str(teacher_1rf)), device=cpu)
    eager = eager_teacher.end_points(batch, noise)
    compiled_teacher = OnlineTeacher(TeacherConfig(path=str(teacher_1rf), compile=True), device=cpu)
    compiled = compiled_teacher.end_points(batch, noise)
    compiled_fn = getattr(compiled_teacher._velocity, "_torchdynamo_orig_callable", None)  # set by torch.compile
    assert compiled_fn == compiled_teacher.adapter.velocity  # the solve did go through the compiled call
    assert eager_teacher._velocity == eager_teacher.adapter.velocity  # plain bound method, not compiled
    assert torch.allclose(compiled, eager, rtol=0, atol=1e-5), (compiled - eager).abs().max()


def test_cudnn_deterministic_is_lerobot_trains_switch(tmp_path, toy_dataset, monkeypatch):
    import torch
    from conftest import train_config

    from hf_reflow.training.trainer import ReflowTrainer

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    config = train_config(output_dir=str(tmp_path / "run"), dataset__root=str(toy_dataset), steps=1, cudnn_deterministic=True)
    ReflowTrainer(config).train()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
