"""Recipe + CLI-override parsing: merging, aliases, type checks, unknown keys."""

from __future__ import annotations

from pathlib import Path

import draccus
import pytest
import torch
import yaml
from conftest import fake_checkpoint
from lerobot.configs.policies import PreTrainedConfig

from hf_reflow.configs import RECOMMENDED_NUM_STEPS
from hf_reflow.errors import ConfigError, ReflowError
from hf_reflow.parsing import parse_train_config, stage_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture
def teacher(tmp_path):
    """A flow_mlp checkpoint's config.json (hidden_dim 48): what a student initialised from it starts as."""
    return fake_checkpoint(tmp_path / "teacher", hidden_dim=48)


def test_recipe_then_overrides_merge_key_by_key(teacher):
    config = parse_train_config(["--config", str(RECIPES / "toy/2rf.yaml"), f"--teacher.path={teacher}", "--optim.lr=1e-4"])
    assert config.stage == "reflow" and config.teacher.path == teacher
    assert config.teacher.num_inference_steps == 10  # kept from the recipe's teacher section
    assert config.optim.lr == 1e-4 and config.optim.warmup_steps == 100
    assert config.flow.time_sampler == "u_shaped" and config.flow.loss == "pseudo_huber"


def test_seed_guide_names_are_aliases(teacher):
    config = parse_train_config(
        ["--stage=reflow", f"--teacher_model_path={teacher}", "--reflow_num_inference_steps=20", "--num_steps=3"]
    )
    assert config.teacher.path == teacher and config.teacher.num_inference_steps == 20
    assert config.final_num_steps == 3


def test_recommended_num_steps_per_stage(teacher):
    assert parse_train_config([]).final_num_steps == RECOMMENDED_NUM_STEPS["flow_matching"] == 10
    assert parse_train_config(["--stage=reflow", f"--teacher.path={teacher}"]).final_num_steps == 2
    assert parse_train_config(["--stage=distill", f"--teacher.path={teacher}"]).final_num_steps == 1


def test_numbers_written_as_text_are_numbers():
    config = parse_train_config(["--optim.lr=1e-4", "--ema_decay=0.999", "--steps", "7"])
    assert config.optim.lr == 1e-4 and config.ema_decay == 0.999 and config.steps == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nope=1"], "unknown config key(s) nope; valid keys: stage"),
        (["--optim.lrr=1"], "valid keys under optim: lr"),
        (["--steps=ten"], "steps must be int; got 'ten'"),
        (["--steps=0"], "steps must be >= 1"),
        (["--stage=rf3"], "stage must be one of flow_matching, reflow, distill"),
        (["--stage=reflow"], "needs a teacher"),
        (["--teacher.solver=rk4", "--stage=reflow", "--teacher.path=a/b"], "teacher.solver must be one of euler, heun"),
        (["--stage=reflow", "--teacher.path=/no/such/dir"], "no checkpoint at teacher.path '/no/such/dir'"),
        (["--policy.hidden_dim=big"], "policy.hidden_dim must be int; got 'big'"),
        (["--policy.chunk_size=4"], "n_action_steps must be in 1..chunk_size (4), got 8"),
        (["--policy.type=nope"], "policy.type 'nope' is not a LeRobot policy type; known types: act"),
        (["--policy.type=act"], "policy.type 'act' has no hf-reflow adapter; choose one of flow_mlp"),
        (["--optim=3"], "optim must be a mapping of keys"),
        (["--steps.x=1"], "cannot set steps.x: steps is a value, not a section"),
        (["--mixed_precision=fp8"], "mixed_precision must be one of"),
        (["--coupling_reuse=0"], "coupling_reuse must be >= 1"),
        (["--coupling_reuse=4", "--steps=10"], "steps=10 is not a multiple of coupling_reuse=4"),
        (["--coupling_reuse=2", "--save_every=5", "--steps=10"], "save_every=5 is not a multiple of coupling_reuse=2"),
        (["--log_with=[wandb]"], "log_with must be one of tensorboard, trackio"),
        (["--dataset=3"], "dataset must be a mapping"),
        (["--flow.logit_std=1e999"], "flow.logit_std must be a finite number"),
        (["steps=3"], "settings look like --key=value"),
        (["--steps"], "--steps needs a value"),
    ],
)
def test_bad_config_is_explained(args, message):
    with pytest.raises(ReflowError, match=None) as info:  # ConfigError; CheckpointError for a bad teacher.path
        parse_train_config(args)
    assert message in str(info.value)


# ---- issue 11: LeRobot's names, typed options, every recipe parses ---------------------------------------


def test_lerobot_train_names_are_accepted():
    config = parse_train_config(
        ["--config_path", str(RECIPES / "toy/1rf.yaml"), "--save_freq=7", "--log_freq=3", "--num_workers=2",
         "--policy.device=cpu", "--policy.repo_id=me/toy-1rf", "--policy.push_to_hub=true", "--wandb.enable=true",
         "--wandb.project=p", "--wandb.mode=offline", "--job_name=j"]
    )  # fmt: skip
    assert config.save_every == 7 and config.log_every == 3 and config.dataset.num_workers == 2
    assert config.policy.device == "cpu" and config.policy.hidden_dim == 256  # merged with the recipe's
    assert config.push_to_hub and config.hub_model_id == "me/toy-1rf"
    assert config.hub_repo_template == "{hub_model_id}"  # lerobot-train pushes to exactly policy.repo_id
    assert config.wandb.enable and config.wandb.project == "p" and config.wandb.mode == "offline"
    assert config.job_name == "j"
    explicit = parse_train_config(["--hub_repo_template={hub_model_id}-v2", "--policy.repo_id=me/x"])
    assert explicit.hub_repo_template == "{hub_model_id}-v2"


def test_lists_values_and_policy_fields_are_typed():
    config = parse_train_config(["--policy.hidden_dim=32", "--policy.tasks=a,b", "--dataset.episodes=0,2,3",
                                 "--optim.betas=0.9,0.95", "--optim.lr=1e-4"])  # fmt: skip
    assert config.policy.hidden_dim == 32 and config.policy.tasks == ["a", "b"]
    assert config.dataset.episodes == [0, 2, 3] and config.optim.betas == [0.9, 0.95]
    assert config.optim.given() == {"lr": 1e-4, "betas": [0.9, 0.95]}  # the rest comes from the policy's presets


def test_train_config_json_is_a_recipe(tmp_path, teacher):
    from hf_reflow.configs import save_config

    config = parse_train_config(["--config_path", str(RECIPES / "toy/2rf.yaml"), f"--teacher.path={teacher}", "--steps=9"])
    assert config.policy.hidden_dim == 48 and str(config.policy.pretrained_path) == teacher  # the teacher's config
    save_config(config, tmp_path / "train_config.json", {"optim_used": {"optimizer": {"type": "adamw"}}})
    again = parse_train_config([f"--config_path={tmp_path / 'train_config.json'}"])
    assert again.output_dir == str(Path(config.output_dir).resolve())  # stored resolved: reproducible from anywhere
    again.output_dir = config.output_dir
    assert again.to_dict() == config.to_dict()  # as JSON (LeRobot's image-transform defaults hold tuples)


def _train_recipes() -> list[Path]:
    return sorted(p for p in RECIPES.glob("*/*.yaml") if p.parent.name not in ("accelerate_configs", "metaworld"))


@pytest.mark.parametrize("recipe", _train_recipes(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_train_recipe_parses_and_says_which_optimizer(recipe, tmp_path):
    policy = yaml.safe_load(recipe.read_text()).get("policy", {})
    checkpoint = fake_checkpoint(tmp_path / "ckpt", policy.get("type", "flow_mlp"))  # the teacher, or policy.path
    args = ["--policy.path=" + checkpoint] if policy.get("path") else []
    config = parse_train_config([f"--config_path={recipe}", f"--teacher_model_path={checkpoint}", *args])
    assert config.policy.type == policy.get("type", "flow_mlp")
    text = recipe.read_text()
    assert "--config_path=" in text and "--config=" not in text  # its command line uses the new flag
    if config.optim.given():  # explicit settings: every field, with the schedule named
        assert config.optim.scheduler == "warmup_cosine" and config.optim.type == "adamw"
        assert {"lr", "betas", "eps", "weight_decay", "grad_clip_norm", "warmup_steps", "min_lr_ratio"} <= set(config.optim.given())
    else:  # the policy's LeRobot presets, said in the recipe
        assert "presets" in text


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("metaworld/*.yaml")), ids=lambda p: p.name)
def test_metaworld_recipes_train_as_before(recipe, teacher):
    """Each stage's optimizer is AdamW + warmup-cosine, set in full (not left to a preset): hf-reflow's settings
    for flow_mlp; for the SmolVLA recipe, SmolVLA's own betas and clipping."""
    from hf_reflow.parsing import parse_pipeline_config

    config = parse_pipeline_config([f"--config_path={recipe}"])
    smolvla = config.train["policy"]["type"] == "smolvla"
    first = stage_config(config, "flow_matching", seed=0, output_dir="o", teacher=None, dataset_root="d")
    # later stages' teachers are the recipe's own 1-RF (as `check_stages` checks them): its config stands in
    stand_in = {"teacher": "<1-RF>" if smolvla else teacher, "teacher_config": draccus.encode(first.policy, PreTrainedConfig)}
    for stage in config.stages:
        optim = stage_config(config, stage, seed=0, output_dir="o", dataset_root="d", **stand_in).optim
        assert optim.type == "adamw" and optim.scheduler == "warmup_cosine"
        assert (optim.betas, optim.grad_clip_norm) == (([0.9, 0.95], 10.0) if smolvla else ([0.9, 0.999], 1.0))
        assert optim.eps == 1e-8 and optim.weight_decay == 1e-4
        assert optim.min_lr_ratio == 0.1 and optim.lr is not None and optim.warmup_steps is not None


def test_a_recipe_states_the_targets_its_report_checks():
    """The multi-task recipe wants the best 1-step stage within 2 points; the default keeps the defaults (3)."""
    from hf_reflow.parsing import parse_pipeline_config

    multitask = parse_pipeline_config([f"--config_path={RECIPES / 'metaworld/multitask.yaml'}"]).eval.targets
    default = parse_pipeline_config([f"--config_path={RECIPES / 'metaworld/default.yaml'}"]).eval.targets
    assert multitask.min_gap_1_step == -0.02 and default.min_gap_1_step == -0.03
    assert multitask.min_speedup == default.min_speedup == 5.0
    overridden = parse_pipeline_config([f"--config_path={RECIPES / 'metaworld/default.yaml'}", "--eval.targets.left_share=[0.3,0.7]"])
    assert overridden.eval.targets.left_share == [0.3, 0.7]


# ---- the student's policy: a LeRobot PreTrainedConfig resolved at parse time ---------------------------------


def test_policy_path_starts_from_the_checkpoints_config(tmp_path):
    from hf_reflow.configs import save_config

    checkpoint = fake_checkpoint(tmp_path / "ckpt", hidden_dim=48, chunk_size=8, n_action_steps=4)
    config = parse_train_config([f"--policy.path={checkpoint}", "--policy.n_action_steps=2"])
    policy = config.policy
    assert policy.type == "flow_mlp" and policy.hidden_dim == 48 and policy.chunk_size == 8
    assert policy.n_action_steps == 2 and str(policy.pretrained_path) == checkpoint
    save_config(config, tmp_path / "train_config.json")
    again = parse_train_config([f"--config_path={tmp_path / 'train_config.json'}", f"--output_dir={config.output_dir}"])
    assert again.to_dict() == config.to_dict()  # same start, same fields (the output dir is stored resolved)


def test_a_student_starts_from_its_teachers_config(teacher):
    student = parse_train_config(["--stage=reflow", f"--teacher.path={teacher}", "--policy.n_action_steps=2"]).policy
    assert student.hidden_dim == 48 and student.n_action_steps == 2 and str(student.pretrained_path) == teacher
    new = parse_train_config(["--stage=reflow", f"--teacher.path={teacher}", "--init_from_teacher=false"]).policy
    assert new.type == "flow_mlp" and new.hidden_dim != 48 and new.pretrained_path is None  # a new policy


def test_a_pipeline_stages_policy_keys_are_checked_up_front():
    from hf_reflow.parsing import parse_pipeline_config

    with pytest.raises(ConfigError, match=r"stage reflow: unknown policy key\(s\) policy.hidden_dimm for type 'flow_mlp'"):
        parse_pipeline_config([f"--config_path={RECIPES / 'metaworld/tiny.yaml'}", "--reflow.policy.hidden_dimm=3"])


PLUGIN = """
from dataclasses import dataclass

from lerobot.configs.policies import PreTrainedConfig

from hf_reflow.policies.factory import register_adapter
from hf_reflow.policies.flow_mlp.adapter import FlowMLPAdapter
from hf_reflow.policies.flow_mlp.configuration_flow_mlp import FlowMLPConfig


@PreTrainedConfig.register_subclass("hf_reflow_test_plugin")
@dataclass
class PluginConfig(FlowMLPConfig):
    extra_width: int = 3


@register_adapter
class PluginAdapter(FlowMLPAdapter):
    policy_type = "hf_reflow_test_plugin"
"""


def test_a_plugin_package_registers_a_policy_type(tmp_path, monkeypatch):
    """`--policy.discover_packages_path=PKG`, as lerobot-train: the package registers a config class."""
    from lerobot.configs.policies import PreTrainedConfig

    from hf_reflow.policies import factory

    (tmp_path / "hf_reflow_test_plugin").mkdir()
    (tmp_path / "hf_reflow_test_plugin" / "__init__.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    # The registrations go into copies, dropped after the test: other tests list the registered types.
    monkeypatch.setattr(factory, "_REGISTERED", dict(factory._REGISTERED))
    monkeypatch.setattr(PreTrainedConfig, "_choice_registry", dict(PreTrainedConfig._choice_registry))
    config = parse_train_config(["--policy.discover_packages_path=hf_reflow_test_plugin",
                                 "--policy.type=hf_reflow_test_plugin", "--policy.extra_width=5"])  # fmt: skip
    assert type(config.policy).__name__ == "PluginConfig" and config.policy.extra_width == 5


def test_a_run_of_the_previous_schema_resumes(tmp_path):
    """A train_config.json written before the policy became a LeRobot config (only the fields set, keys added
    since missing) still identifies its run for `--resume=true`; another setting is still refused."""
    import json

    from conftest import TINY_POLICY

    from hf_reflow.artifacts.run_dir import check_run_dir
    from hf_reflow.errors import CheckpointError

    out = tmp_path / "run"
    args = [f"--output_dir={out}", "--steps=20", *(f"--policy.{k}={v}" for k, v in TINY_POLICY.items())]
    config = parse_train_config([*args, "--resume=true"])
    old = {k: v for k, v in config.to_dict().items() if k not in ("coupling_reuse", "wandb")}
    old["policy"] = dict(TINY_POLICY)
    out.mkdir()
    (out / "train_config.json").write_text(json.dumps(old))
    assert check_run_dir(config) is False  # this run, unfinished: resumed
    with pytest.raises(CheckpointError, match="differs in steps"):
        check_run_dir(parse_train_config([*args, "--resume=true", "--steps=40"]))


def _lerobot_train_keys() -> list[str]:
    """Every flag lerobot-train (LeRobot 0.6.1's `TrainPipelineConfig`) takes, one level into each section; a
    choice section (optimizer, scheduler, env, peft, ...) lists the fields of every registered choice."""
    import dataclasses
    import typing

    import draccus
    from lerobot.configs.train import TrainPipelineConfig

    def fields_of(hint) -> list[str] | None:
        inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if isinstance(inner, type) and issubclass(inner, draccus.ChoiceRegistry):
            choices = inner.get_known_choices().values()
            return sorted({"type", *(f.name for c in choices for f in dataclasses.fields(c))})
        return [f.name for f in dataclasses.fields(inner)] if dataclasses.is_dataclass(inner) else None

    keys = []
    for name, hint in typing.get_type_hints(TrainPipelineConfig).items():
        inner = fields_of(hint)
        keys += [f"{name}.{k}" for k in inner] if inner and name != "policy" else [name]
    return keys


def test_every_lerobot_train_flag_is_accepted_or_refused_by_name():
    from hf_reflow.configs import TrainConfig
    from hf_reflow.parsing import ALIASES, LEROBOT_TRAIN_REFUSED, refuse_lerobot_train_flags
    from hf_reflow.parsing.decode import field_of

    unhandled = []
    for key in _lerobot_train_keys():
        if key == "policy" or key in ALIASES:
            continue
        try:
            refuse_lerobot_train_flags([key])
        except ConfigError as e:
            assert f"lerobot-train's --{key} is not supported by hf-reflow: " in str(e)
            continue
        try:
            field_of(TrainConfig, key)
        except ConfigError:
            unhandled.append(key)
    assert not unhandled, f"lerobot-train flags neither accepted nor refused by name: {unhandled}"
    assert all(any(k == r or k.startswith(r + ".") for k in _lerobot_train_keys()) for r in LEROBOT_TRAIN_REFUSED)


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--optimizer.lr=3e-4", "--optimizer.weight_decay=0.01", "--optimizer.type=adam"], {"lr": 3e-4, "weight_decay": 0.01, "type": "adam"}),
     (["--scheduler.type=cosine_decay_with_warmup", "--scheduler.num_warmup_steps=7", "--scheduler.num_decay_steps=90"],
      {"scheduler": "cosine_decay_with_warmup", "warmup_steps": 7, "decay_steps": 90})],
)  # fmt: skip
def test_lerobot_train_optimizer_and_scheduler_flags(args, expected):
    optim = parse_train_config(args).optim
    assert {k: getattr(optim, k) for k in expected} == expected


def test_use_policy_training_preset_false_takes_the_optimizers_own_defaults():
    """lerobot-train's meaning: no preset; the optimizer and schedule must be named, and every field not given
    is that optimizer's LeRobot default (AdamWConfig's weight decay 0.01, clip 10), not flow_mlp's preset."""
    from lerobot.optim.optimizers import AdamWConfig

    from hf_reflow.policies.flow_mlp.configuration_flow_mlp import FlowMLPConfig
    from hf_reflow.training.optim import build_optimizer

    with pytest.raises(ConfigError, match="without the policy's preset .* got optimizer.type=None, scheduler.type=None"):
        parse_train_config(["--use_policy_training_preset=false"])
    optim = parse_train_config(["--use_policy_training_preset=false", "--optimizer.type=adamw", "--scheduler.type=constant",
                                "--optimizer.lr=2e-4"]).optim  # fmt: skip
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, _, used = build_optimizer(optim, FlowMLPConfig(), params, total_steps=10)
    defaults = AdamWConfig()
    group = optimizer.param_groups[0]
    assert group["lr"] == 2e-4 and group["weight_decay"] == defaults.weight_decay and group["eps"] == defaults.eps
    assert used["preset_of"] is None and used["optimizer"]["grad_clip_norm"] == defaults.grad_clip_norm
    assert used["scheduler"] == {"type": "constant"}
    preset = build_optimizer(parse_train_config([]).optim, FlowMLPConfig(), params, total_steps=10)[2]
    assert preset["preset_of"] == "flow_mlp" and preset["optimizer"] != used["optimizer"]


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [("--eval.batch_size=4", "one env in the training process"), ("--eval.recording=true", "no episode recording"),
     ("--peft.r=8", "no PEFT / LoRA adapters"),
     ("--dataset.streaming=true", "not streamed"),
     ("--dataset.use_imagenet_stats=true", "dataset's own stats")],
)  # fmt: skip
def test_unsupported_lerobot_train_flags_are_refused_by_name(flag, fragment):
    with pytest.raises(ConfigError, match=f"lerobot-train's {flag.split('=')[0]} is not supported by hf-reflow: .*{fragment}"):
        parse_train_config([flag])


def test_dataset_video_backend_reaches_the_dataset(toy_dataset, monkeypatch):
    from lerobot.datasets import lerobot_dataset

    from hf_reflow import data

    seen = {}
    real = lerobot_dataset.LeRobotDataset.__init__
    monkeypatch.setattr(lerobot_dataset.LeRobotDataset, "__init__",
                        lambda self, *a, **k: seen.update(k) or real(self, *a, **k))  # fmt: skip
    config = parse_train_config([f"--dataset.root={toy_dataset}", "--dataset.video_backend=pyav"])
    data.make_dataset(config.dataset, config.policy)
    assert seen["video_backend"] == "pyav"
    with pytest.raises(ConfigError, match="dataset.video_backend"):
        parse_train_config(["--dataset.video_backend=ffmpeg"])


def test_dataset_revision_reaches_lerobot_and_the_lineage(toy_dataset, monkeypatch, tmp_path):
    """lerobot-train's --dataset.revision: passed to LeRobot's dataset and metadata, kept in train_config.json
    and in reflow.json (a local root has no Hub commit to resolve)."""
    from lerobot.datasets import lerobot_dataset

    from hf_reflow import data
    from hf_reflow.artifacts.checkpoints import stage_lineage

    seen = {}
    for cls in (lerobot_dataset.LeRobotDataset, lerobot_dataset.LeRobotDatasetMetadata):
        real = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _real=real, _cls=cls.__name__, **k:
                            seen.update({_cls: k.get("revision")}) or _real(self, *a, **k))  # fmt: skip
    config = parse_train_config([f"--dataset.root={toy_dataset}", "--dataset.revision=v1.0"])
    data.make_dataset(config.dataset, config.policy)
    assert seen["LeRobotDataset"] == "v1.0"
    assert config.to_dict()["dataset"]["revision"] == "v1.0"
    lineage = stage_lineage(config, num_processes=1, lr=1e-3)["dataset"]
    assert lineage == {"repo_id": config.dataset.repo_id, "root": str(toy_dataset), "revision": "v1.0", "commit": None}
    with pytest.raises(ConfigError, match="dataset.revision .* is not a valid Hub revision"):
        parse_train_config(["--dataset.revision=bad rev"])


def test_a_runs_train_config_reproduces_it_from_another_directory(tmp_path, toy_dataset, monkeypatch):
    """Relative paths typed in one directory are stored resolved, so the run's train_config.json, given as
    --config_path from elsewhere, trains the same weights (bitwise on this machine) and resumes as the same run."""
    import json
    import shutil

    from safetensors.torch import load_file

    from hf_reflow.artifacts.run_dir import check_run_dir
    from hf_reflow.training.trainer import ReflowTrainer

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(toy_dataset, work / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    args = ["--dataset.root=data", "--output_dir=runs/1rf", "--steps=3", "--batch_size=8", "--log_with=[]",
            "--policy.hidden_dim=16", "--policy.chunk_size=4", "--policy.n_action_steps=2"]  # fmt: skip
    first = Path(ReflowTrainer(parse_train_config(args)).train()).resolve()
    saved = json.loads((work / "runs" / "1rf" / "train_config.json").read_text())
    assert saved["dataset"]["root"] == str(work / "data") and saved["output_dir"] == str(work / "runs" / "1rf")
    assert check_run_dir(parse_train_config([*args, "--resume=true"]))  # the same run, typed relative: finished
    monkeypatch.chdir(elsewhere)
    config = parse_train_config([f"--config_path={work / 'runs' / '1rf' / 'train_config.json'}", "--output_dir=again"])
    assert config.dataset.root == str(work / "data")
    again = ReflowTrainer(config).train()
    a, b = (load_file(str(Path(p) / "model.safetensors")) for p in (first, again))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
