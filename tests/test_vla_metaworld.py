"""The embedded benchmark with a VLA: LeRobot's SmolVLAPolicy on rendered images, instructions and the state
(recipes/metaworld/smolvla.yaml, tiny sizes), through the pipeline, `hf-reflow eval` and stock LeRobot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli, run_stock_python

from hf_reflow.errors import ConfigError
from hf_reflow.policies import smolvlm

RECIPE = str(REPO / "recipes" / "metaworld" / "smolvla.yaml")
# The recipe at test size: 32-px images, a 2-layer backbone, a few episodes and steps, one closed-loop episode.
TINY = [
    "--data.episodes=2", "--data.heldout_episodes=1", "--data.image_size=32", "--vlm.size.image_size=32",
    "--vlm.size.text_layers=2", "--flow_matching.steps=4", "--reflow.steps=4", "--distill.steps=4",
    "--train.batch_size=4", "--eval.num_steps=[1]", "--eval.episodes=1", "--eval.num_samples=8", "--eval.workers=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def vla_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vla") / "run"
    result = run_cli("pipeline", f"--config_path={RECIPE}", f"--output_dir={out}", *TINY, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_vla_chain_trains_reads_images_and_evaluates_every_stage(vla_run):
    rows = json.loads((vla_run / "results.json").read_text())["rows"]
    assert {(row["name"], row["num_steps"]) for row in rows} == {("1-RF", 1), ("2-RF", 1), ("2-RF distilled", 1)}
    assert all(row["episodes"] == 2 and row["ms_per_env_step"] > 0 for row in rows)  # 1 episode x 2 tasks
    # The VLM prefix and the whole chunk are both measured; which is larger is timing (two medians taken apart,
    # close at 1 step on a tiny model), so it is benchmarks/vla_chunk_latency.py's to show, not a test's.
    assert all(row["prefix_ms"] > 0 and row["latency_ms"] > 0 for row in rows)
    configs = {name: json.loads((vla_run / "seed0" / name / "pretrained_model" / "config.json").read_text())
               for name in ("1rf", "2rf", "2rf-distill")}  # fmt: skip
    for name, config in configs.items():
        assert config["type"] == "smolvla" and config["vlm_model_name"] == str((vla_run / "vlm").resolve())
        assert config["input_features"]["observation.images.corner"]["shape"] == [3, 32, 32]
        assert config["load_vlm_weights"] is False and config["num_vlm_layers"] == 2
        assert config["train_expert_only"] is (name != "1rf")  # the 1-RF trains its VLM; later stages share it
    assert smolvlm.read_size(vla_run / "vlm").image_size == 32
    tokenizer = json.loads((vla_run / "vlm" / "tokenizer.json").read_text())["model"]["vocab"]
    assert any("obstacle" in token for token in tokenizer)  # trained on the instructions


def test_demonstrations_carry_the_camera_the_instruction_and_the_state(vla_run):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hf_reflow.envs import metaworld as mw

    dataset = LeRobotDataset(mw.DEFAULT_REPO_ID, root=vla_run / "data" / "demos")
    frame = dataset[0]
    assert tuple(frame[mw.IMAGE_KEY].shape) == (3, 32, 32) and tuple(frame["observation.state"].shape) == (mw.STATE_DIM,)
    assert frame["task"] in {mw.task_prompt(task, "multimodal") for task in ("reach-v3", "push-v3")}
    image = (frame[mw.IMAGE_KEY] * 255).permute(1, 2, 0).numpy()  # (32, 32, 3), as the policy reads it
    blue = (image[..., 2] > 150) & (image[..., 0] < 100)  # the obstacle's colour (0.15, 0.35, 0.95)
    assert blue.sum() >= 4, "the obstacle is drawn into the camera image"


def test_eval_runs_a_closed_loop_vla_episode_and_stock_lerobot_loads_the_2rf(vla_run, tmp_path):
    output = tmp_path / "eval.json"
    result = run_cli(
        "eval", f"--policy.path={vla_run / 'seed0' / '2rf'}", f"--dataset.root={vla_run / 'data' / 'heldout'}",
        "--num_steps=2", "--env=metaworld", "--tasks=reach-v3", "--episodes=1", "--workers=1", f"--output={output}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(output.read_text())
    assert row["episodes"] == 1 and row["env_steps"] > 0 and row["chunks"] >= row["env_steps"] / 8
    code = (
        "import sys; from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy; "
        "p = SmolVLAPolicy.from_pretrained(sys.argv[1]); print(p.config.num_steps, p.config.train_expert_only)"
    )
    stock = run_stock_python(code, str(vla_run / "seed0" / "2rf" / "pretrained_model"))
    assert stock.returncode == 0, stock.stderr[-2000:]
    assert stock.stdout.split()[-2:] == ["2", "True"]  # the 2-RF's saved step count


def test_a_vla_episode_renders_once_per_chunk_with_the_same_actions(vla_run):
    """The policy reads its image only when a chunk starts, so the controller renders then and hands the steps
    between the last frame: the same actions as a frame rendered at every step (the path of a policy that
    keeps past frames, `reads_history`), with one render per chunk instead of one per env step."""
    import numpy as np

    from hf_reflow.artifacts.checkpoints import load_checkpoint
    from hf_reflow.evaluation.closed_loop import EPISODE_SEED_BASE, metaworld_episodes

    loaded = load_checkpoint(str(vla_run / "seed0" / "2rf"))
    runs = {}
    for every_step in (False, True):
        with metaworld_episodes(loaded, "reach-v3", max_steps=40) as episodes:
            camera, renders = episodes.controller.camera, []
            render = camera.render
            camera.render = lambda render=render, renders=renders: renders.append(1) or render()
            episodes.controller.reads_history = every_step
            result = episodes.play(EPISODE_SEED_BASE)
            runs[every_step] = (np.stack(episodes.controller.actions), len(renders), result.steps)
    (lazy, lazy_renders, steps), (eager, eager_renders, eager_steps) = runs[False], runs[True]
    assert steps == eager_steps > 8 and eager_renders == steps
    assert lazy_renders == -(-steps // 8)  # one per chunk of n_action_steps = 8
    np.testing.assert_allclose(lazy, eager, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--data.images=false"], "vlm.build makes a SmolVLM backbone"),
     (["--data.image_size=48"], "data.image_size=64"),
     (["--vlm.size.image_size=60"], "must be a multiple of patch_size"),
     (["--vlm.size.text_heads=3"], "text_hidden must be a multiple of text_heads"),
     (["--coupling_states=closed_loop"], "states of coupling_states=closed_loop come from rollouts without a camera"),
     (["--stages=[flow_matching,reflow,distill,redistill]"], "states of a redistill stage come from rollouts without a camera")],
)  # fmt: skip
def test_bad_vla_settings_fail_at_parse_time(args, message):
    from hf_reflow.parsing import parse_pipeline_config

    with pytest.raises(ConfigError, match=message):
        parse_pipeline_config([f"--config_path={RECIPE}", *args])


def test_the_builder_writes_a_folder_transformers_loads(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    size = smolvlm.SmolVLMSize(text_layers=1, vision_layers=1, image_size=32)
    folder = smolvlm.write_smolvlm_folder(tmp_path / "vlm", size, texts=["reach the goal"])
    config, processor = AutoConfig.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    assert config.text_config.num_hidden_layers == 1 and config.vision_config.image_size == 32
    assert processor.image_seq_len == size.image_seq_len == 4
    assert smolvlm.smolvla_fields(folder)["resize_imgs_with_padding"] == [32, 32]
    assert not list(tmp_path.glob(".vlm*"))  # written via a temporary name, nothing left beside it


def test_chunk_latency_benchmark_splits_prefix_and_denoising(vla_run, tmp_path, monkeypatch, capsys):
    """benchmarks/vla_chunk_latency.py on the tiny 2-RF: the cached chunk beats recomputing the prefix each step."""
    import runpy

    output = tmp_path / "latency.json"
    monkeypatch.setattr(sys, "argv", ["vla_chunk_latency.py", f"--checkpoint={vla_run / 'seed0' / '2rf'}",
                                      f"--dataset={vla_run / 'data' / 'heldout'}", "--repeats=1", "--episodes=1",
                                      f"--output={output}"])  # fmt: skip
    runpy.run_path(str(REPO / "benchmarks" / "vla_chunk_latency.py"), run_name="__main__")
    result = json.loads(output.read_text())
    assert set(result["by_steps"]) == {"1", "2", "4", "10"} and result["prefix_ms"] > 0
    ten = result["by_steps"]["10"]
    assert ten["uncached_chunk_ms"] > ten["chunk_ms"] > result["prefix_ms"]  # 10 prefixes cost more than one
    episodes = result["episodes"]
    assert episodes["same_actions"] is True and episodes["env_steps"] > 0
    assert episodes["ms_per_env_step_render_per_chunk"] > 0 and episodes["ms_per_env_step_render_every_step"] > 0
    assert "uncached / cached" in capsys.readouterr().out


def test_offline_metrics_read_the_real_action_dims_only(vla_run):
    """SmolVLA's ODE runs in a (chunk, 32) padded space whose padding is never trained: the error vs the
    demonstration is measured on the 4 real action dims, as LeRobot's policy returns them."""
    import torch

    from hf_reflow.artifacts.checkpoints import load_checkpoint
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import make_dataset
    from hf_reflow.evaluation.offline import observation_batch, offline_metrics
    from hf_reflow.policies.base import sample_policy
    from hf_reflow.sampling import seeded_noise

    loaded = load_checkpoint(str(vla_run / "seed0" / "2rf"))
    dataset = make_dataset(DatasetConfig(root=str(vla_run / "data" / "heldout")), loaded.config)
    batch = loaded.preprocessor(observation_batch(dataset, 4, seed=0))
    (row,) = offline_metrics(loaded.adapter, batch, [2])
    action, _ = loaded.adapter.action_target(batch)  # (4, chunk, 32): the real 4 dims, then zeros
    assert loaded.adapter.action_shape[-1] == 32 and loaded.adapter.action_dim == 4
    noise = seeded_noise((4, *loaded.adapter.action_shape), 0)
    with torch.no_grad():
        sampled = sample_policy(loaded.adapter, batch, noise, num_steps=2).action
    expected = float((sampled[..., :4] - action[..., :4]).pow(2).mean())
    assert row["error_vs_data"] == pytest.approx(expected, rel=1e-5)
