"""The `hf-reflow` CLI as a subprocess: bad input gives one line, exit code 2, nothing half-written."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli, run_console_script, write_random_dataset

from hf_reflow.metrics import COLUMNS

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


LOG_LINE = re.compile(
    r"^step:\d+ smpl:\S+ ep:\S+ epch:[\d.]+ loss:[\d.]+ grdn:[\d.]+ lr:[\d.e+-]+ updt_s:[\d.]+ data_s:[\d.]+ smp/s:\d+"
    r"(?P<reflow> tchr_s:[\d.]+ cpl:\S+)?$"
)  # lerobot-train's line (LeRobot's MetricsTracker) + the teacher's time per update and couplings served


def test_console_prints_a_startup_summary_and_lerobot_train_log_lines(tmp_path, toy_dataset, teacher_1rf):
    args = [f"--dataset.root={toy_dataset}", "--steps=4", "--log_freq=2", "--log_with=[]", "--batch_size=8"]
    first = run_cli("train", f"--output_dir={tmp_path / 'a'}", *args, *TINY)
    second = run_cli("train", "--stage=reflow", f"--teacher.path={teacher_1rf}", f"--output_dir={tmp_path / 'b'}", *args)
    for proc, stage in ((first, "flow_matching"), (second, "reflow")):
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = [line for line in proc.stdout.splitlines() if line != "Loading weights from local directory"]  # LeRobot's
        assert out[0].startswith(f"stage {stage} (flow_mlp policy), output dir: ")
        assert any(line.startswith("effective batch size: 8 x 1 accumulation x 1 process(es) = 8") for line in out)
        assert any(re.match(r"learnable parameters: \d+ \(", line) for line in out)
        logs = [LOG_LINE.match(line) for line in out if line.startswith("step:")]
        assert len(logs) == 2 and all(logs), out
        assert [bool(m["reflow"]) for m in logs] == [stage == "reflow"] * 2
    assert f"teacher: {teacher_1rf} (flow_mlp); couplings: made online, 10 euler steps per coupling" in second.stdout
    assert "smpl:32 " in second.stdout and "cpl:32" in second.stdout  # 4 steps x batch 8


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
    assert_user_error(run_cli("train", f"--dataset.root={tmp_path / 'nothing'}", *TINY), "no dataset at")


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
        "train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=50", "--optim.lr=1e6",
        "--optim.grad_clip_norm=null", "--optim.warmup_steps=1", *TINY,
    )  # fmt: skip
    assert_user_error(proc, "loss became", "--optim.lr")
    assert not out.exists()


def test_rename_map_feeds_a_differently_named_dataset_to_the_teacher_and_student(tmp_path, teacher_1rf):
    """lerobot-train's --rename_map (dataset key -> policy key): a reflow stage on a dataset whose state is
    called observation.environment_state; the saved student's own rename step carries the map."""
    import json

    data = write_random_dataset(tmp_path / "ds", state_key="observation.environment_state", action_dim=2)
    args = ["train", "--stage=reflow", f"--teacher.path={teacher_1rf}", f"--dataset.root={data}", "--steps=2",
            "--batch_size=8", "--log_with=[]"]  # fmt: skip
    assert_user_error(run_cli(*args, f"--output_dir={tmp_path / 'a'}"), "has no 'observation.state'", "--rename_map")
    out = tmp_path / "b"
    proc = run_cli(*args, f"--output_dir={out}", "--rename_map={observation.environment_state: observation.state}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads((out / "pretrained_model" / "policy_preprocessor.json").read_text())["steps"]
    rename = next(step for step in steps if step["registry_name"] == "rename_observations_processor")
    assert rename["config"]["rename_map"] == {"observation.environment_state": "observation.state"}
    assert json.loads((out / "train_config.json").read_text())["dataset"]["rename_map"] == rename["config"]["rename_map"]
    fresh = ["train", f"--dataset.root={data}", f"--output_dir={tmp_path / 'c'}", "--steps=2", *TINY,
             "--rename_map={observation.environment_state: observation.state}"]  # fmt: skip
    assert_user_error(run_cli(*fresh), "--rename_map needs a pretrained policy")
    assert_user_error(run_cli(*fresh[:-1], "--rename_map={action: act}"), "renames observations")


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
        "eval", f"--policy.path={teacher_1rf}", f"--dataset.root={toy_dataset}", "--num_steps=1,2", "--env=toy",
        "--episodes=3", "--num_samples=16", f"--output={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Loading a checkpoint and its dataset prints no traceback (LeRobot's torchcodec fallback is avoided).
    assert "Traceback" not in proc.stderr and "torchcodec" not in proc.stderr, proc.stderr[-2000:]
    import json

    rows = json.loads(out.read_text())
    assert [r["num_steps"] for r in rows] == [1, 2]
    assert {"success_rate", "collision_rate", "left_share", "straightness", "error_vs_10step", "latency_ms"} <= rows[0].keys()
    assert set(rows[0]) <= set(COLUMNS), set(rows[0]) - set(COLUMNS)  # every column is named in hf_reflow.metrics
    assert_user_error(run_cli("eval", f"--dataset.root={toy_dataset}"), "--policy.path is required")


# ---- issue 11: a LeRobot-native command line ---------------------------------------------------------

HELP_OPTIONS = {
    ("train",): ["--config_path", "--steps", "--optim.lr", "--policy.type", "--teacher.path", "--wandb.enable",
                 "--save_every", "--teacher_model_path = --teacher.path", "--save_freq = --save_every"],
    ("pipeline",): ["--config_path", "--stages", "--seeds", "--eval.num_steps", "--train.<key>"],
    ("eval",): ["--policy.path", "--dataset.root", "--num_steps", "--env", "--episodes"],
    ("dataset",): ["hf-reflow dataset metaworld", "hf-reflow dataset toy", "--tasks", "--root", "--layout"],
    ("dataset", "toy"): ["--root", "--episodes", "--repo_id"],
    ("dataset", "metaworld"): ["--root", "--tasks", "--mode", "--images"],
    ("couplings",): ["--teacher.path", "--output", "--num_couplings"],
    ("couplings", "generate"): ["--teacher.path", "--output", "--num_couplings"],
    ("push",): ["--checkpoint", "--couplings", "--repo_id", "--private"],
    ("space",): ["--chain", "--policies", "--port", "--bundle"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(HELP_OPTIONS), ids=" ".join)
def test_help_of_every_command_lists_its_options(command, capsys):
    from hf_reflow import cli

    for flag in ("--help", "-h"):
        assert cli.main([*command, flag]) == 0
        out = capsys.readouterr().out
        for option in HELP_OPTIONS[command]:
            assert option in out, (flag, option)
        assert "default:" in out


def test_help_through_the_console_script_and_with_other_flags():
    proc = run_console_script("train", "--stepz=1", "-h")  # a fresh interpreter; help wins over a bad key
    assert proc.returncode == 0 and "--optim.grad_clip_norm" in proc.stdout and not proc.stderr.strip()
    assert "(float | None, default: null)" in proc.stdout  # name, type, default, then a help line
    proc = run_cli("--help")
    assert proc.returncode == 0 and "hf-reflow <command> --help" in proc.stdout


def test_train_help_lists_a_policy_types_fields(capsys):
    from hf_reflow import cli

    assert cli.main(["train", "--policy.type=flow_mlp", "--help"]) == 0
    out = capsys.readouterr().out
    assert "policy fields of type flow_mlp" in out and "--policy.hidden_dim  (int, default: 256)" in out


def test_train_help_lists_the_teachers_policy_fields(tmp_path, capsys):
    from conftest import fake_checkpoint

    from hf_reflow import cli

    teacher = fake_checkpoint(tmp_path / "smolvla", "smolvla")
    assert cli.main(["train", "--stage=reflow", f"--teacher.path={teacher}", "-h"]) == 0
    assert "policy fields of type smolvla" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--stepz=3"], ["unknown config key(s) stepz", "valid keys: stage"]),
        (["--steps=ten"], ["steps must be int; got 'ten'"]),
        (["--policy.bogus_field=1"], ["unknown policy key(s) policy.bogus_field for type 'flow_mlp'", "hidden_dim"]),
        (["--policy.hidden_dim=wide"], ["policy.hidden_dim must be int"]),
        (["--policy.type=nope"], ["policy.type 'nope' is not a LeRobot policy type", "smolvla"]),
        (["--optim.lr=fast"], ["optim.lr must be float; got 'fast'"]),
        (["--wandb.mode=loud"], ["wandb.mode must be one of online, offline, disabled"]),
    ],
)
def test_bad_train_keys_fail_before_anything_loads(args, fragments, tmp_path, toy_dataset, capsys, monkeypatch):
    """In process, with the trainer replaced by a trap: nothing is built, nothing written, one line, exit 2."""
    from hf_reflow import cli
    from hf_reflow.training import trainer

    def trap(*_args, **_kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(trainer.ReflowTrainer, "__init__", trap)
    out = tmp_path / "run"
    assert cli.main(["train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-reflow: error: "), lines
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not out.exists()


def test_policy_fields_are_checked_against_the_teachers_type(tmp_path, teacher_1rf, toy_dataset):
    """A reflow student takes its teacher's type, read from the teacher's config.json only (no model load)."""
    out = tmp_path / "run"
    proc = run_cli("train", "--stage=reflow", f"--teacher.path={teacher_1rf}", f"--dataset.root={toy_dataset}",
                   f"--output_dir={out}", "--policy.vlm_model_name=x")  # fmt: skip
    assert_user_error(proc, "policy.vlm_model_name for type 'flow_mlp'")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["eval", "--policy.path=a", "--num_steps=1,two"], "num_steps[] must be int; got 'two'"),
        (["eval", "--policy.path=a", "--bogus=1"], "unknown config key(s) bogus; valid keys: num_steps, num_samples, episodes, workers, n_action_steps, policy, dataset"),
        (["eval", "--policy.pth=a"], "valid keys under policy: path"),
        (["eval", "--policy.path=a", "--env=moon"], "env must be one of none, toy, metaworld"),
        (["dataset", "toy", "--root=R", "--episodes=many"], "episodes must be int"),
        (["dataset", "metaworld", "--root=R", "--layuot=eval"], "unknown config key(s) layuot"),
        (["couplings", "generate", "--teacher.path=t", "--output=o", "--num_couplings=1e3x"], "num_couplings must be int"),
        (["push", "--checkpoint=c", "--repo_id=a/b", "--private=maybe"], "private must be bool"),
        (["space", "--port=eighty"], "port must be int"),
        (["pipeline", "--seeds=a,b"], "seeds[] must be int"),
    ],
)
def test_every_command_parses_typed_options(args, fragment, capsys):
    from hf_reflow import cli

    assert cli.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


LEROBOT_STYLE = [
    "--policy.device=cpu", "--batch_size=16", "--steps=6", "--save_freq=3", "--log_freq=2", "--num_workers=0",
    "--log_with=[]", "--wandb.enable=false", "--job_name=toy_2rf", "--teacher.num_inference_steps=3", "--seed=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def lerobot_style_2rf(tmp_path_factory, teacher_1rf, toy_dataset):
    """A toy 2-RF trained from a lerobot-train-style command line (+ the seed guide's teacher flag)."""
    out = tmp_path_factory.mktemp("lerobot_style") / "2rf"
    proc = run_cli("train", "--stage=reflow", f"--teacher_model_path={teacher_1rf}", f"--dataset.root={toy_dataset}",
                   "--dataset.repo_id=local/toy", f"--output_dir={out}", *LEROBOT_STYLE)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_lerobot_train_style_command_line_trains_a_2rf(lerobot_style_2rf):
    import json

    out = lerobot_style_2rf
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000003", "000006", "last"]  # save_freq=3
    assert (checkpoints / "last").is_symlink() and (checkpoints / "last").resolve() == (checkpoints / "000006").resolve()
    for step in ("000003", "000006"):
        assert {p.name for p in (checkpoints / step).iterdir()} == {"pretrained_model", "training_state"}
        assert (checkpoints / step / "pretrained_model" / "train_config.json").is_file()
    final = checkpoints / "last" / "pretrained_model"
    assert (final / "model.safetensors").read_bytes() == (out / "pretrained_model" / "model.safetensors").read_bytes()
    assert json.loads((final / "reflow.json").read_text())["k"] == 2
    assert json.loads((final / "config.json").read_text())["num_steps"] == 2  # the final model, saved for 2 steps
    saved = json.loads((final / "train_config.json").read_text())
    assert saved["save_every"] == 3 and saved["log_every"] == 2 and saved["policy"]["device"] == "cpu"
    assert saved["job_name"] == "toy_2rf" and saved["dataset"]["num_workers"] == 0
    used = saved["optim_used"]  # the flow_mlp presets, nothing overridden
    assert used["preset_of"] == "flow_mlp" and used["overridden"] == []
    assert used["optimizer"]["type"] == "adamw" and used["scheduler"]["type"] == "warmup_cosine"


def test_train_config_json_reproduces_the_run_bit_for_bit(lerobot_style_2rf, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "again"
    recipe = lerobot_style_2rf / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    proc = run_cli("train", f"--config_path={recipe}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = "checkpoints/000003/training_state"
    for path in ("pretrained_model/model.safetensors", f"{state}/model.safetensors", f"{state}/optimizer_state.safetensors"):
        a, b = load_file(lerobot_style_2rf / path), load_file(out / path)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), path


def test_wandb_offline_writes_its_run_folder(tmp_path, toy_dataset):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    proc = run_cli("train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=2", *TINY,
                   "--wandb.enable=true", "--wandb.mode=offline", "--wandb.project=hf-reflow-test")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))  # lerobot-train's place: output_dir/wandb
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), runs
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # the run's record: tags and the model artifact
    assert b"policy:flow_mlp" in log and b"stage:flow_matching" in log and b"run-000002" in log
    (out / "pretrained_model" / "model.safetensors").write_bytes(b"")  # damaged: --resume=true rebuilds it
    proc = run_cli("train", f"--dataset.root={toy_dataset}", f"--output_dir={out}", "--steps=2", *TINY, "--resume=true",
                   "--wandb.enable=true", "--wandb.mode=offline", "--wandb.project=hf-reflow-test")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = {f.name for f in (out / "wandb").glob("offline-run-*/run-*.wandb")}
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1, ids  # one W&B run, continued
