"""Recipe + CLI-override parsing: merging, aliases, type checks, unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_reflow.configs import RECOMMENDED_NUM_STEPS, parse_train_config
from hf_reflow.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_recipe_then_overrides_merge_key_by_key():
    config = parse_train_config(["--config", str(RECIPES / "toy/2rf.yaml"), "--teacher.path=me/teacher", "--optim.lr=1e-4"])
    assert config.stage == "reflow" and config.teacher.path == "me/teacher"
    assert config.teacher.num_inference_steps == 10  # kept from the recipe's teacher section
    assert config.optim.lr == 1e-4 and config.optim.warmup_steps == 100
    assert config.flow.time_sampler == "u_shaped" and config.flow.loss == "pseudo_huber"


def test_seed_guide_names_are_aliases():
    config = parse_train_config(
        ["--stage=reflow", "--teacher_model_path=lerobot/smolvla_base", "--reflow_num_inference_steps=20", "--num_steps=3"]
    )
    assert config.teacher.path == "lerobot/smolvla_base" and config.teacher.num_inference_steps == 20
    assert config.final_num_steps == 3


def test_recommended_num_steps_per_stage():
    assert parse_train_config([]).final_num_steps == RECOMMENDED_NUM_STEPS["flow_matching"] == 10
    assert parse_train_config(["--stage=reflow", "--teacher.path=a/b"]).final_num_steps == 2
    assert parse_train_config(["--stage=distill", "--teacher.path=a/b"]).final_num_steps == 1


def test_numbers_written_as_text_are_numbers():
    config = parse_train_config(["--optim.lr=1e-4", "--ema_decay=0.999", "--steps", "7"])
    assert config.optim.lr == 1e-4 and config.ema_decay == 0.999 and config.steps == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nope=1"], "unknown config key(s) nope; valid keys: stage"),
        (["--optim.lrr=1"], "valid keys under optim: lr"),
        (["--steps=ten"], "steps must be int"),
        (["--steps=0"], "steps must be >= 1"),
        (["--stage=rf3"], "stage must be one of flow_matching, reflow, distill"),
        (["--stage=reflow"], "needs a teacher"),
        (["--teacher.solver=rk4", "--stage=reflow", "--teacher.path=a/b"], "teacher.solver must be one of euler, heun"),
        (["--mixed_precision=fp8"], "mixed_precision must be one of"),
        (["--log_with=[wandb]"], "log_with must be one of tensorboard, trackio"),
        (["--dataset=3"], "dataset must be a mapping"),
        (["steps=3"], "overrides look like --key=value"),
        (["--steps"], "--steps needs a value"),
    ],
)
def test_bad_config_is_explained(args, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_train_config(args)
    assert message in str(info.value)
