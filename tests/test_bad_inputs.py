"""Every bad input we know of: one line `hf-reflow: error: ...`, exit code 2, no traceback, nothing left behind.

Each case runs as its own process (`run_cli`: a fork of `cli_forkserver.py`, which imports torch and LeRobot
once) through `hf_reflow.cli.main`, exactly what `python -m hf_reflow` runs. Placeholders in the arguments:
{data} a toy dataset, {teacher} a tiny trained 1-RF, {bad_*} damaged copies of it, {file} a plain file,
{empty} an empty folder, {missing} a path that does not exist, {ro} a read-only folder, {out} this case's
output dir (absent unless the case prepares it). After each case the whole world is as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import run_cli

TINY = ["--steps=3", "--batch_size=8", "--log_with=[]", "--policy.hidden_dim=16", "--policy.num_blocks=1",
        "--policy.chunk_size=4", "--policy.n_action_steps=2"]  # fmt: skip
TRAIN = ["train", "--dataset.root={data}", "--output_dir={out}", *TINY]
REFLOW = ["train", "--stage=reflow", "--dataset.root={data}", "--output_dir={out}", "--steps=3", "--batch_size=8",
          "--log_with=[]"]  # fmt: skip
EVAL = ["eval", "--policy.path={teacher}", "--dataset.root={data}", "--num_samples=4"]


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    says: str  # a fragment of the one error line (what was wrong / received / how to fix)
    prepare: str | None = None  # how to set up {out} first: "file", "foreign_run", "truncated_config", "ro_parent"
    fsize: int | None = None  # file-size limit of the process (a full disk)
    extra: tuple[str, ...] = field(default=())


CASES = [
    # ---- recipes and the command line
    Case("yaml_list_unclosed", [*TRAIN, "--steps=[unclosed"], "is not a valid YAML list"),
    Case("recipe_bad_yaml", [*TRAIN, "--config_path={bad_yaml}"], "not valid YAML"),
    Case("recipe_not_mapping", [*TRAIN, "--config_path={list_yaml}"], "must be a YAML mapping"),
    Case("recipe_missing", [*TRAIN, "--config_path={missing}/r.yaml"], "not found"),
    Case("recipe_unknown_key", [*TRAIN, "--config_path={unknown_key_yaml}"], "unknown config key"),
    Case("positional_argument", ["train", "oops", *TINY], "unexpected argument"),
    Case("flag_without_value", ["train", "--steps"], "needs a value"),
    Case("unknown_command", ["trian"], "unknown command"),
    Case("unknown_key", [*TRAIN, "--stpes=3"], "unknown config key"),
    Case("unknown_section_key", [*TRAIN, "--optim.learning_rate=1"], "unknown config key"),
    # ---- train values
    Case("lr_nan", [*TRAIN, "--optim.lr=nan"], "optim.lr"),
    Case("lr_inf", [*TRAIN, "--optim.lr=inf"], "optim.lr"),
    Case("lr_negative", [*TRAIN, "--optim.lr=-1"], "optim.lr"),
    Case("lr_zero", [*TRAIN, "--optim.lr=0"], "optim.lr"),
    Case("lr_text", [*TRAIN, "--optim.lr=fast"], "optim.lr"),
    Case("betas_out_of_range", [*TRAIN, "--optim.betas=[2,3]"], "optim.betas"),
    Case("betas_one_value", [*TRAIN, "--optim.betas=[0.9]"], "optim.betas"),
    Case("eps_negative", [*TRAIN, "--optim.eps=-1"], "optim.eps"),
    Case("weight_decay_negative", [*TRAIN, "--optim.weight_decay=-0.1"], "optim.weight_decay"),
    Case("grad_clip_nan", [*TRAIN, "--optim.grad_clip_norm=nan"], "optim.grad_clip_norm"),
    Case("warmup_negative", [*TRAIN, "--optim.warmup_steps=-5"], "optim.warmup_steps"),
    Case("min_lr_ratio_above_one", [*TRAIN, "--optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
    Case("optim_type_unknown", [*TRAIN, "--optim.type=lion9"], "optim.type"),
    Case("scheduler_unknown", [*TRAIN, "--optim.scheduler=zigzag"], "optim.scheduler"),
    Case("seed_negative", [*TRAIN, "--seed=-1"], "seed"),
    Case("seed_text", [*TRAIN, "--seed=abc"], "seed"),
    Case("steps_zero", [*TRAIN, "--steps=0"], "steps must be >= 1"),
    Case("steps_fraction", [*TRAIN, "--steps=1.5"], "steps must be"),
    Case("steps_text", [*TRAIN, "--steps=abc"], "steps must be"),
    Case("batch_size_zero", [*TRAIN, "--batch_size=0"], "batch_size must be >= 1"),
    Case("batch_size_negative", [*TRAIN, "--batch_size=-3"], "batch_size must be >= 1"),
    Case("accumulation_zero", [*TRAIN, "--gradient_accumulation_steps=0"], "gradient_accumulation_steps"),
    Case("save_every_negative", [*TRAIN, "--save_every=-5"], "save_every must be >= 0"),
    Case("log_every_zero", [*TRAIN, "--log_every=0"], "log_every must be >= 1"),
    Case("num_steps_zero", [*TRAIN, "--num_steps=0"], "num_steps must be >= 1"),
    Case("ema_above_one", [*TRAIN, "--ema_decay=1.5"], "ema_decay"),
    Case("ema_negative", [*TRAIN, "--ema_decay=-0.1"], "ema_decay"),
    Case("ema_nan", [*TRAIN, "--ema_decay=nan"], "ema_decay"),
    Case("coupling_reuse_zero", [*TRAIN, "--coupling_reuse=0"], "coupling_reuse must be >= 1"),
    Case("coupling_reuse_not_dividing_steps", [*TRAIN, "--coupling_reuse=3", "--steps=10"], "not a multiple of coupling_reuse=3"),
    Case("num_workers_negative", [*TRAIN, "--dataset.num_workers=-1"], "num_workers must be >= 0"),
    Case("in_memory_unknown", [*TRAIN, "--dataset.in_memory=sometimes"], "in_memory"),
    Case("policy_field_text", [*TRAIN, "--policy.hidden_dim=abc"], "policy.hidden_dim"),
    Case("policy_field_negative", [*TRAIN, "--policy.hidden_dim=-4"], "hidden_dim"),
    Case("policy_chunk_zero", [*TRAIN, "--policy.chunk_size=0"], "chunk_size"),
    Case("policy_unknown_field", [*TRAIN, "--policy.wings=2"], "policy.wings"),
    Case("policy_unknown_type", [*TRAIN, "--policy.type=nonsense"], "nonsense"),
    Case("stage_unknown", [*TRAIN, "--stage=bogus"], "stage"),
    Case("mixed_precision_unknown", [*TRAIN, "--mixed_precision=fp8"], "mixed_precision"),
    Case("tracker_unknown", [*TRAIN, "--log_with=[bogus]"], "log_with"),
    Case("time_sampler_unknown", [*TRAIN, "--flow.time_sampler=bogus"], "time_sampler"),
    Case("loss_unknown", [*TRAIN, "--flow.loss=bogus"], "loss"),
    Case("logit_std_negative", [*TRAIN, "--flow.logit_std=-1"], "logit_std"),
    Case("teacher_steps_zero", [*REFLOW, "--teacher.path={teacher}", "--teacher.num_inference_steps=0"], "num_inference_steps"),
    Case("teacher_solver_unknown", [*REFLOW, "--teacher.path={teacher}", "--teacher.solver=rk4"], "solver"),
    Case("reflow_without_teacher", [*REFLOW], "needs a teacher"),
    Case("push_without_model_id", [*TRAIN, "--push_to_hub=true"], "hub_model_id"),
    Case("repo_template_unknown_field", [*TRAIN, "--hub_repo_template={{nope}}"], "hub_repo_template"),
    Case("shortcut_min_step_not_power_of_two", [*REFLOW, "--stage=shortcut", "--teacher.path={teacher}", "--shortcut.min_step=0.3"], "min_step"),
    Case("couplings_with_flow_matching", [*TRAIN, "--couplings.path={empty}"], "couplings.path"),
    # ---- the dataset
    Case("episodes_out_of_range", [*TRAIN, "--dataset.episodes=[99999]"], "99999"),
    Case("episodes_text", [*TRAIN, "--dataset.episodes=abc"], "dataset.episodes"),
    Case("dataset_root_is_a_file", ["train", "--dataset.root={file}", "--output_dir={out}", *TINY], "no dataset at"),
    Case("dataset_root_missing", ["train", "--dataset.root={missing}", "--output_dir={out}", *TINY], "no dataset at"),
    Case("dataset_root_empty", ["train", "--dataset.root={empty}", "--output_dir={out}", *TINY], "no dataset at"),
    Case("dataset_nan_actions", ["train", "--dataset.root={nan_data}", "--output_dir={out}", *TINY], "not finite"),
    # ---- the output dir
    Case("output_dir_is_a_file", TRAIN, "output dir", prepare="file"),
    Case("output_dir_holds_another_run", TRAIN, "already holds a run", prepare="foreign_run"),
    Case("resume_truncated_train_config", [*TRAIN, "--resume=true"], "train_config.json", prepare="truncated_config"),
    Case("output_dir_read_only", TRAIN, "not writable", prepare="ro_parent"),
    Case("output_dir_on_proc", ["train", "--dataset.root={data}", "--output_dir=/proc/hf-reflow-run", *TINY], "not writable"),
    Case("disk_full", TRAIN, "free disk space", fsize=4096),
    # ---- the teacher
    Case("teacher_missing", [*REFLOW, "--teacher.path={missing}"], "no checkpoint at teacher.path"),
    Case("teacher_is_a_dataset", [*REFLOW, "--teacher.path={data}"], "holds no checkpoint"),
    Case("teacher_truncated_weights", [*REFLOW, "--teacher.path={bad_truncated}"], "model.safetensors"),
    Case("teacher_random_weights", [*REFLOW, "--teacher.path={bad_random}"], "model.safetensors"),
    Case("teacher_without_weights", [*REFLOW, "--teacher.path={bad_noweights}"], "model.safetensors"),
    Case("teacher_garbage_reflow_json", [*REFLOW, "--teacher.path={bad_reflowjson}"], "reflow.json"),
    Case("teacher_garbage_config", [*REFLOW, "--teacher.path={bad_config}"], "config"),
    # ---- the student's starting checkpoint (`--policy.path`)
    Case("policy_path_missing", [*TRAIN, "--policy.path={missing}"], "policy.path"),
    Case("policy_path_other_type", [*TRAIN, "--policy.path={teacher}", "--policy.type=smolvla"], "policy.type is 'smolvla'"),
    Case("policy_path_on_reflow", [*REFLOW, "--teacher.path={teacher}", "--policy.path={teacher}"], "drop --policy.path"),
    Case("policy_plugin_missing", [*TRAIN, "--policy.discover_packages_path=no_such_hf_reflow_plugin"], "no_such_hf_reflow_plugin"),
    # ---- eval
    Case("eval_num_steps_zero", [*EVAL, "--num_steps=0"], "num_steps"),
    Case("eval_num_steps_negative", [*EVAL, "--num_steps=-1"], "num_steps"),
    Case("eval_num_steps_fraction", [*EVAL, "--num_steps=1.5"], "num_steps"),
    Case("eval_num_steps_text", [*EVAL, "--num_steps=abc"], "num_steps"),
    Case("eval_num_samples_zero", [*EVAL, "--num_samples=0"], "num_samples"),
    Case("eval_output_folder_missing", [*EVAL, "--output={missing}/results.json"], "--output"),
    Case("eval_episodes_negative", [*EVAL, "--episodes=-1"], "episodes"),
    Case("eval_env_unknown", [*EVAL, "--env=moon"], "env"),
    Case("eval_unknown_task", [*EVAL, "--env=metaworld", "--tasks=[fly-v3]", "--episodes=1"], "fly-v3"),
    Case("eval_policy_missing", ["eval", "--policy.path={missing}", "--dataset.root={data}"], "no checkpoint at"),
    Case("eval_policy_truncated_weights", ["eval", "--policy.path={bad_truncated}", "--dataset.root={data}"], "model.safetensors"),
    Case("eval_policy_random_weights", ["eval", "--policy.path={bad_random}", "--dataset.root={data}"], "model.safetensors"),
    Case("eval_policy_without_weights", ["eval", "--policy.path={bad_noweights}", "--dataset.root={data}"], "model.safetensors"),
    Case("eval_dataset_missing", ["eval", "--policy.path={teacher}", "--dataset.root={missing}"], "no dataset at"),
    # ---- dataset
    Case("dataset_toy_episodes_text", ["dataset", "toy", "--root={out}", "--episodes=abc"], "episodes"),
    Case("dataset_toy_episodes_zero", ["dataset", "toy", "--root={out}", "--episodes=0"], "episodes must be >= 1"),
    Case("dataset_toy_root_is_a_file", ["dataset", "toy", "--root={file}", "--episodes=2"], "--root"),
    Case("dataset_toy_root_holds_data", ["dataset", "toy", "--root={data}", "--episodes=2"], "--root"),
    Case("dataset_unknown_source", ["dataset", "moon", "--root={out}"], "needs a source"),
    Case("dataset_metaworld_unknown_task", ["dataset", "metaworld", "--root={out}", "--tasks=[fly-v3]"], "fly-v3"),
    Case("dataset_metaworld_expert_aim", ["dataset", "metaworld", "--root={out}", "--expert_aim=nose"],
         "expert_aim must be one of hand, fingertips"),
    Case("pipeline_expert_aim", ["pipeline", "--data.expert_aim=elbow"], "data.expert_aim must be one of hand"),
    # ---- couplings
    Case("couplings_without_subcommand", ["couplings"], "generate"),
    Case("couplings_zero", ["couplings", "generate", "--teacher.path={teacher}", "--dataset.root={data}", "--output={out}", "--num_couplings=0"], "num_couplings"),
    Case("couplings_garbage_teacher", ["couplings", "generate", "--teacher.path={bad_random}", "--dataset.root={data}", "--output={out}", "--num_couplings=8"], "model.safetensors"),
    Case("couplings_missing_teacher", ["couplings", "generate", "--teacher.path={missing}", "--dataset.root={data}", "--output={out}", "--num_couplings=8"], "no checkpoint at"),
    # ---- push (offline: each must be refused before any Hub request)
    Case("push_missing_checkpoint", ["push", "--checkpoint={missing}", "--repo_id=alice/x"], "no checkpoint at"),
    Case("train_push_bad_repo_id", [*TRAIN, "--push_to_hub=true", "--hub_model_id=alice/bad name"], "invalid Hub repo id"),
    Case("push_bad_repo_id", ["push", "--checkpoint={teacher}", "--repo_id=not a repo"], "invalid Hub repo id"),
    Case("push_missing_eval_file", ["push", "--checkpoint={teacher}", "--repo_id=alice/x", "--eval={missing}/r.json"], "--eval"),
    Case("push_missing_dataset", ["push", "--dataset={missing}", "--repo_id=alice/x"], "no dataset folder at"),
    Case("push_dataset_and_checkpoint", ["push", "--dataset={data}", "--checkpoint={teacher}", "--repo_id=alice/x"], "one of --checkpoint"),
    Case("push_eval_without_checkpoint", ["push", "--dataset={data}", "--repo_id=alice/x", "--eval={missing}/r.json"], "use it with --checkpoint"),
    Case("pipeline_meanflow_share_zero", ["pipeline", "--output_dir={out}", "--stages=[flow_matching,meanflow]", "--meanflow.meanflow.mean_share=0"], "mean_share"),
    # ---- pipeline
    Case("pipeline_unknown_stage", ["pipeline", "--output_dir={out}", "--stages=[flow_matching,warp]"], "warp"),
    Case("pipeline_unknown_task", ["pipeline", "--output_dir={out}", "--data.tasks=[fly-v3]"], "fly-v3"),
    Case("pipeline_seed_negative", ["pipeline", "--output_dir={out}", "--seeds=[-1]"], "seed"),
    Case("pipeline_target_gap_points", ["pipeline", "--output_dir={out}", "--eval.targets.min_gap_1_step=-3"], "eval.targets.min_gap_1_step is a success-rate fraction"),
    Case("pipeline_target_percent", ["pipeline", "--output_dir={out}", "--eval.targets.min_reference_success=95"], "in 0..1, e.g. 0.95; got 95"),
    Case("pipeline_target_left_share", ["pipeline", "--output_dir={out}", "--eval.targets.left_share=[0.6,0.4]"], "eval.targets.left_share must be [low, high]"),
    Case("pipeline_target_speedup", ["pipeline", "--output_dir={out}", "--eval.targets.min_speedup=0"], "eval.targets.min_speedup must be > 0"),
    # ---- the probe of issue 27: once tracebacks, hangs or silent acceptance
    Case("lr_overflow", [*TRAIN, "--optim.lr=1e300"], "optim.lr must be in (0, 1e6]"),
    Case("seed_beyond_32_bits", [*TRAIN, "--seed=4294967296"], "seed must be <= 4,294,967,295"),
    Case("steps_unbounded", [*TRAIN, "--steps=99999999999999999999"], "steps must be <= 100,000,000"),
    Case("dataset_episodes_empty", [*TRAIN, "--dataset.episodes=[]"], "dataset.episodes is an empty list"),
    Case("device_not_here", [*TRAIN, "--policy.device=cuda"], "policy.device='cuda' is not available"),
    # lerobot-train would train adapters; full weights + a saved `use_peft: true` is a checkpoint stock LeRobot refuses
    Case("lerobot_train_flag_refused", [*TRAIN, "--tolerance_s=0.1"], "lerobot-train's --tolerance_s is not supported"),
    Case("train_eval_env_unknown", [*TRAIN, "--env.type=nowhere"], "env.type: invalid choice: 'nowhere'"),
    Case("train_eval_env_bad_task", [*TRAIN, "--env.type=metaworld_detour", "--env.task=fly-v3"], "env.task 'fly-v3'"),
    Case("train_eval_episodes_zero", [*TRAIN, "--eval.n_episodes=0"], "eval.n_episodes must be >= 1"),
    Case("peft_not_supported", [*TRAIN, "--policy.use_peft=true"], "policy.use_peft=true: hf-reflow trains every weight"),
    Case("recipe_duplicate_key", [*TRAIN, "--config_path={dup_yaml}"], "duplicate key 'steps'"),
    Case("recipe_nested_too_deep", [*TRAIN, "--config_path={deep_yaml}"], "nested too deeply"),
    Case("recipe_damaged_json", [*TRAIN, "--config_path={bad_json}"], "not valid YAML"),
    Case("teacher_steps_unbounded", [*REFLOW, "--teacher.path={teacher}", "--teacher.num_inference_steps=100000000"], "<= 1,000"),
    Case("eval_num_steps_unbounded", [*EVAL, "--num_steps=1000000000"], "num_steps must list step counts in 1..1000"),
    Case("eval_n_action_steps_zero", [*EVAL, "--n_action_steps=0"], "n_action_steps must list"),
    Case("dataset_toy_episodes_unbounded", ["dataset", "toy", "--root={out}", "--episodes=1000000000"], "episodes must be <= 1,000,000"),
    Case("couplings_unbounded", ["couplings", "generate", "--teacher.path={teacher}", "--dataset.root={data}", "--output={out}", "--num_couplings=1000000000000000"], "num_couplings must be <= 100,000,000"),
    Case("couplings_into_the_dataset", ["couplings", "generate", "--teacher.path={teacher}", "--dataset.root={data}", "--output={data}/couplings", "--num_couplings=8"], "lies inside the dataset"),
    Case("space_port_out_of_range", ["space", "--port=99999"], "port must be in 1..65535"),
    Case("space_any_policy_when_pushed", ["space", "--bundle={out}", "--allow_any_policy=true"], "allow_any_policy is for a server"),
    Case("teacher_revision_escapes", [*REFLOW, "--teacher.path={teacher}", "--teacher.revision=../../main"], "is not a valid Hub revision"),
    Case("teacher_lineage_k_text", [*REFLOW, "--teacher.path={bad_k_text}"], "holds k='two'"),
    Case("dataset_garbage_parquet", [*TRAIN, "--dataset.root={garbage_parquet}"], "a data file is damaged"),
    Case("dataset_without_stats", [*TRAIN, "--dataset.root={no_stats}"], "no normalisation statistics"),
    Case("couplings_json_garbage", [*REFLOW, "--teacher.path={teacher}", "--couplings.path={couplings_garbage}"], "unreadable JSON"),
    Case("couplings_json_extra_key", [*REFLOW, "--teacher.path={teacher}", "--couplings.path={couplings_extra_key}"], "unknown key 'evil'"),
    Case("couplings_json_out_of_range", [*REFLOW, "--teacher.path={teacher}", "--couplings.path={couplings_out_of_range}"], "num_couplings = '-5'"),
    Case("couplings_shard_damaged", [*REFLOW, "--teacher.path={teacher}", "--couplings.path={couplings_shard}"], "a shard is damaged"),
    Case("eval_policy_without_preprocessor", ["eval", "--policy.path={bad_no_preprocessor}", "--dataset.root={data}", "--num_steps=1"], "policy_preprocessor.json' not found"),
    Case("eval_policy_without_normaliser_stats", ["eval", "--policy.path={bad_no_normaliser_stats}", "--dataset.root={data}", "--num_steps=1"], "normalizer_processor.safetensors' was not found"),
    Case("push_eval_mixed_step_types", ["push", "--checkpoint={teacher}", "--repo_id=alice/x", "--eval={mixed_eval}"], "whose `num_steps` is a step count"),
    Case("push_revision_escapes", ["push", "--checkpoint={teacher}", "--repo_id=alice/x", "--revision=../../main"], "is not a valid Hub revision"),
]


def test_the_corpus_is_large():
    assert len(CASES) >= 85 and len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------------- the world


@pytest.fixture(scope="session")
def world(tmp_path_factory, toy_dataset, teacher_1rf) -> dict[str, str]:
    """The files the cases point at, made once."""
    root = tmp_path_factory.mktemp("bad_inputs")
    teacher = teacher_1rf / "pretrained_model"
    paths = {"data": str(toy_dataset), "teacher": str(teacher_1rf), "missing": str(root / "missing")}
    (root / "file").write_text("not a folder\n")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("steps: [1, 2\n")
    (root / "list.yaml").write_text("- steps\n- 3\n")
    (root / "unknown.yaml").write_text("stpes: 3\n")
    (root / "dup.yaml").write_text("steps: 3\nsteps: 4\n")
    (root / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "bad.json").write_text('{"steps": 3, ')
    (root / "mixed_eval.json").write_text(json.dumps([{"num_steps": 1, "success_rate": 0.5}, {"num_steps": "2", "success_rate": 0.6}]))
    paths.update(file=str(root / "file"), empty=str(root / "empty"), bad_yaml=str(root / "bad.yaml"),
                 list_yaml=str(root / "list.yaml"), unknown_key_yaml=str(root / "unknown.yaml"),
                 dup_yaml=str(root / "dup.yaml"), deep_yaml=str(root / "deep.yaml"), bad_json=str(root / "bad.json"),
                 mixed_eval=str(root / "mixed_eval.json"))  # fmt: skip
    damage = {
        "truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
        "random": lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
        "noweights": lambda d: (d / "model.safetensors").unlink(),
        "reflowjson": lambda d: (d / "reflow.json").write_text("{not json"),
        "config": lambda d: (d / "config.json").write_text('{"type": "flow_mlp", "chunk_size": "many"}'),
        "no_preprocessor": lambda d: (d / "policy_preprocessor.json").unlink(),
        "no_normaliser_stats": lambda d: next(d.glob("policy_preprocessor_step_*normalizer*.safetensors")).unlink(),
        "k_text": lambda d: (d / "reflow.json").write_text(json.dumps({**json.loads((d / "reflow.json").read_text()), "k": "two"})),
    }
    for name, hurt in damage.items():
        copy = root / f"bad_{name}"
        shutil.copytree(teacher, copy)
        hurt(copy)
        paths[f"bad_{name}"] = str(copy)
    paths["nan_data"] = str(_nan_dataset(root / "nan_data"))
    for name, hurt in {
        "garbage_parquet": lambda d: next((d / "data").rglob("*.parquet")).write_text("garbage\n"),
        "no_stats": lambda d: (d / "meta" / "stats.json").unlink(),
    }.items():
        copy = root / name
        shutil.copytree(toy_dataset, copy)
        hurt(copy)
        paths[name] = str(copy)
    paths.update(_damaged_couplings(root, teacher, toy_dataset))
    return paths


def _damaged_couplings(root: Path, teacher: Path, toy_dataset: Path) -> dict[str, str]:
    """Copies of a small couplings folder with a damaged couplings.json or shard."""
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.training.couplings import generate

    good = generate(root / "couplings", TeacherConfig(path=str(teacher), num_inference_steps=2),
                    DatasetConfig(root=str(toy_dataset)), num_couplings=16, block_size=8, batch_size=8)  # fmt: skip

    def edit(change):
        return lambda d: (d / "couplings.json").write_text(json.dumps(change(json.loads((d / "couplings.json").read_text()))))

    damage = {
        "garbage": lambda d: (d / "couplings.json").write_text("{nope"),
        "extra_key": edit(lambda spec: {**spec, "evil": 1}),
        "out_of_range": edit(lambda spec: {**spec, "num_couplings": -5}),
        "shard": lambda d: next((d / "data").glob("*.parquet")).write_bytes(b"PAR1 truncated"),
    }
    paths = {}
    for name, hurt in damage.items():
        copy = root / f"couplings_{name}"
        shutil.copytree(good, copy)
        hurt(copy)
        paths[f"couplings_{name}"] = str(copy)
    return paths


def _nan_dataset(root: Path) -> Path:
    from conftest import write_random_dataset

    write_random_dataset(root, state_key="observation.state", action_dim=2)
    stats = root / "meta" / "stats.json"
    data = json.loads(stats.read_text())
    data["action"]["mean"] = [float("nan")] * len(data["action"]["mean"])
    stats.write_text(json.dumps(data))
    return root


def _snapshot(*roots: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_size if p.is_file() else -1) for r in roots if r.exists() for p in [r, *r.rglob("*")]}


def _prepare(kind: str | None, out: Path) -> None:
    if kind == "file":
        out.write_text("a file where the run dir should go\n")
    elif kind == "foreign_run":
        out.mkdir()
        (out / "notes.txt").write_text("someone else's files\n")
    elif kind == "truncated_config":
        out.mkdir()
        (out / "train_config.json").write_text('{"stage": "flow_ma')
    elif kind == "ro_parent":
        out.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, world, tmp_path):
    if case.prepare == "ro_parent" and os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions")
    out = tmp_path / "case" / "out"
    out.parent.mkdir()
    _prepare(case.prepare, out)
    args = [a.format(**world, out=out) for a in case.args]
    watched = [Path(tmp_path), *(Path(p) for k, p in world.items() if k != "missing")]
    before = _snapshot(*watched)
    try:
        result = run_cli(*args, fsize=case.fsize)
    finally:
        out.parent.chmod(stat.S_IRWXU)
    stderr = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert case.says in errors[0], errors[0]
    assert _snapshot(*watched) == before, "files were left behind or changed"
    assert not Path(world["missing"]).exists()
