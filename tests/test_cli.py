"""The `hf-reflow` CLI as a subprocess: bad input gives one line, exit code 2, nothing half-written."""

from __future__ import annotations

import pytest
from conftest import run_cli, write_random_dataset

TINY = ["--policy.hidden_dim=32", "--policy.chunk_size=8", "--policy.n_action_steps=4", "--log_with=[]", "--batch_size=8"]


def assert_user_error(proc, *fragments: str) -> str:
    """Exit code 2, no traceback, one `hf-reflow: error:` line that contains every fragment."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def wide_action_dataset(tmp_path_factory):
    """observation.state (4,) but a 3-d action: incompatible with the 2-d toy teacher."""
    return write_random_dataset(tmp_path_factory.mktemp("wide") / "ds", state_key="observation.state", action_dim=3)


def test_help_and_unknown_command():
    assert run_cli("--help").returncode == 0
    assert_user_error(run_cli("fly"), "unknown command 'fly'", "train")


def test_train_end_to_end_writes_a_checkpoint(tmp_path, toy_dataset):
    out = tmp_path / "run"
    proc = run_cli("train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=3", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"final checkpoint: {out / 'pretrained_model'}" in proc.stdout
    assert (out / "pretrained_model" / "model.safetensors").is_file()


def test_reflow_without_teacher(tmp_path, toy_dataset):
    out = tmp_path / "run"
    proc = run_cli("train", "--stage=reflow", f"--dataset.root={toy_dataset}", f"--output_dir={out}", *TINY)
    assert_user_error(proc, "needs a teacher", "--teacher.path")
    assert not out.exists()


def test_unknown_config_key_lists_valid_keys(tmp_path, toy_dataset):
    assert_user_error(run_cli("train", "--stepz=3"), "unknown config key(s) stepz", "valid keys", "steps")
    assert_user_error(run_cli("train", "--teacher.pth=x"), "teacher.pth", "valid keys under teacher", "path")
    proc = run_cli("train", f"--dataset.root={toy_dataset}", f"--output_dir={tmp_path / 'r'}", "--policy.widht=3", *TINY)
    assert_user_error(proc, "policy.widht", "hidden_dim")
    assert_user_error(run_cli("train", "--flow.loss=l1"), "flow.loss must be one of mse, pseudo_huber")
    assert_user_error(run_cli("train", "--config=does/not/exist.yaml"), "not found")


def test_teacher_student_action_dimension_mismatch(tmp_path, teacher_1rf, wide_action_dataset):
    out = tmp_path / "run"
    args = ["train", "--stage=reflow", f"--teacher.path={teacher_1rf}", f"--dataset.root={wide_action_dataset}"]
    # A fresh student sized from the dataset (3-d action) cannot learn the 2-d teacher's chunks...
    proc = run_cli(*args, f"--output_dir={out}", "--init_from_teacher=false", *TINY)
    assert_user_error(proc, "teacher action shape (2,)", "(3,)")
    # ... and a student copied from the teacher does not match the dataset.
    proc = run_cli(*args, f"--output_dir={out}", "--log_with=[]")
    assert_user_error(proc, "dataset action shape (3,)", "(2,)")
    assert not out.exists()


def test_dataset_without_the_needed_keys(tmp_path):
    root = write_random_dataset(tmp_path / "ds", state_key="observation.environment_state", action_dim=2)
    proc = run_cli("train", f"--dataset.root={root}", f"--output_dir={tmp_path / 'run'}", *TINY)
    assert_user_error(proc, "observation.state", "observation.environment_state")
    assert_user_error(run_cli("train", f"--dataset.root={tmp_path / 'nothing'}", *TINY), "cannot open the dataset")


def test_output_dir_already_holding_a_run(tmp_path, toy_dataset):
    out = tmp_path / "run"
    common = [f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=2", *TINY]
    assert run_cli("train", *common).returncode == 0
    assert_user_error(run_cli("train", *common), "already holds a run", "--resume=true")
    assert_user_error(run_cli("train", *common, "--resume=true", "--seed=5"), "holds a different run", "seed")
    assert run_cli("train", *common, "--resume=true").returncode == 0  # finished: nothing to do


def test_non_finite_loss_stops_cleanly(tmp_path, toy_dataset):
    out = tmp_path / "run"
    proc = run_cli(
        "train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=50", "--optim.lr=1e30",
        "--optim.grad_clip_norm=null", "--optim.warmup_steps=1", *TINY,
    )  # fmt: skip
    assert_user_error(proc, "loss became", "--optim.lr")
    assert not out.exists()


def test_bad_teacher_path(tmp_path, toy_dataset):
    proc = run_cli("train", "--stage=reflow", f"--teacher.path={tmp_path}", f"--dataset.root={toy_dataset}", *TINY)
    assert_user_error(proc, "holds no checkpoint")


def test_dataset_toy_bad_input(tmp_path):
    assert_user_error(run_cli("dataset", "toy", f"--root={tmp_path / 'd'}", "--episodes=0"), "episodes must be >= 1")
    assert_user_error(run_cli("dataset", "toy"), "--root is required")
    assert_user_error(run_cli("dataset", "moon"), "needs a source")


def test_eval_prints_a_table_by_step_count(tmp_path, teacher_1rf, toy_dataset):
    out = tmp_path / "results.json"
    proc = run_cli(
        "eval", f"--policy.path={teacher_1rf}", f"--dataset.root={toy_dataset}", "--nfe=1,2", "--env=toy",
        "--episodes=3", "--num_samples=16", f"--output={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    rows = json.loads(out.read_text())
    assert [r["nfe"] for r in rows] == [1, 2]
    assert {"success_rate", "collision_rate", "left_share", "straightness", "error_vs_10step", "latency_ms"} <= rows[0].keys()
    assert_user_error(run_cli("eval", f"--dataset.root={toy_dataset}"), "--policy.path is required")
