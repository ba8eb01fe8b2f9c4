"""One name for the step count (`num_steps`): the old `nfe` still reads, from flags, recipes and stored rows."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import run_cli

from hf_reflow.configs.commands import EvaluateConfig
from hf_reflow.configs.pipeline import EvalConfig, TargetsConfig
from hf_reflow.errors import ConfigError, RenamedSettingWarning
from hf_reflow.evaluation.chain import evaluate_chain
from hf_reflow.evaluation.closed_loop import PROTOCOL
from hf_reflow.metrics import upgrade_row
from hf_reflow.parsing import parse_config, parse_pipeline_config, parse_train_config
from hf_reflow.pipeline import Stage
from hf_reflow.publish.eval_rows import load_eval_rows


def test_the_old_flag_sets_num_steps_with_a_warning_naming_the_new_one():
    with pytest.warns(RenamedSettingWarning, match=r"`nfe` is renamed `num_steps`.*--num_steps="):
        cfg = parse_config(EvaluateConfig, ["--policy.path=a", "--nfe=1,2"], command="eval")
    assert cfg.num_steps == [1, 2]


def test_only_the_commands_that_had_the_old_key_read_it(capsys):
    """`train` never had `nfe` (its `num_steps` is the saved step count): `--nfe` stays an unknown key there."""
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) nfe"):
        parse_train_config(["--nfe=2"])
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) nfe"):
        parse_pipeline_config(["--nfe=2"])


def test_a_recipe_with_the_old_key_sets_num_steps(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("eval:\n  nfe: [1, 4]\n  episodes: 3\n")
    with pytest.warns(RenamedSettingWarning, match="`eval.nfe` is renamed `eval.num_steps`"):
        cfg = parse_pipeline_config([f"--config_path={recipe}"])
    assert (cfg.eval.num_steps, cfg.eval.episodes) == ([1, 4], 3)


def test_the_cli_prints_the_rename_on_one_line_before_its_error():
    result = run_cli("eval", "--policy.path=a", "--nfe=0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "hf-reflow: warning: `nfe` is renamed `num_steps`; the old name is read until hf-reflow 1.0, "
        "write --num_steps=... (or `num_steps:` in a recipe) instead.",
        "hf-reflow: error: num_steps must list step counts in 1..1000, e.g. --num_steps=1,2,4,10; got [0].",
    ]


def test_rows_written_before_the_rename_read_with_todays_names(tmp_path):
    assert upgrade_row({"nfe": 2, "success_rate": 0.5}) == {"num_steps": 2, "success_rate": 0.5}
    assert upgrade_row({"nfe": 3, "num_steps": 2}) == {"nfe": 3, "num_steps": 2}  # Heun: both columns, both kept
    old = tmp_path / "eval.json"
    old.write_text(json.dumps([{"nfe": 2, "straightness": 0.1}, {"nfe": 1, "straightness": 0.0}]))
    assert [r["num_steps"] for r in load_eval_rows(old, tmp_path / "ckpt")] == [1, 2]


def test_a_pipeline_cache_written_before_the_rename_is_reused(tmp_path):
    """A stage's `eval.json` from before the rename (settings and rows under `nfe`) is read, not redone: the
    checkpoint does not exist, so any evaluation would fail. It predates `eval.targets` too, which the recipe
    now sets: what the report checks changes no row, so it does not count against the cache."""
    eval_cfg = EvalConfig(num_steps=[1, 2], episodes=2, workers=1, targets=TargetsConfig(min_gap_1_step=-0.02))
    settings = {**dataclasses.asdict(eval_cfg), "tasks": ["reach-v3"], "mode": "multimodal", "protocol": PROTOCOL}
    settings.pop("workers"), settings.pop("targets")
    settings["nfe"] = settings.pop("num_steps")
    run = tmp_path / "seed0" / "2rf"
    (run / "pretrained_model").mkdir(parents=True)
    rows = [{"checkpoint": str(run / "pretrained_model"), "nfe": n, "success_rate": 0.5} for n in (1, 2)]
    (run / "eval.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    trained = {0: [(Stage("reflow", 2, "2rf"), run / "pretrained_model")]}
    got = evaluate_chain(trained, None, eval_cfg, tasks=["reach-v3"], mode="multimodal", log=lambda _: None)
    assert [(r["num_steps"], r["success_rate"]) for r in got] == [(1, 0.5), (2, 0.5)]
    assert all("nfe" not in r for r in got)
