"""The benchmark scripts cannot rot: tiny CPU smoke runs in a subprocess, their JSON fields checked."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_stock_python

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "smolvla_gpu.py"
VARIANTS = ("flow_matching", "reflow_shared", "reflow_unshared", "naive")
STEP_COUNTS = ("1", "2", "4", "10")


def _positive(value) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


RUN_SCRIPT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def _load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import smolvla_gpu
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return smolvla_gpu


@pytest.mark.slow
def test_smolvla_gpu_benchmark_tiny_cpu_smoke(tmp_path):
    # The script run as `python smolvla_gpu.py ARGS`, in a fork of a process that has imported torch and LeRobot.
    argv = [str(SCRIPT), f"--out={tmp_path}", "--device=cpu", "--size=tiny", "--reps=2", "--batch-size=2"]
    start = time.perf_counter()
    proc = run_stock_python(RUN_SCRIPT, *argv, timeout=600)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    print(f"smoke run: {elapsed:.1f} s")

    result = json.loads((tmp_path / "smolvla_gpu.json").read_text())
    assert result["complete"] is True and _positive(result["wall_s"])
    env_keys = ("python", "torch", "transformers", "lerobot", "device_name", "torch_threads")
    assert all(result["environment"][k] for k in env_keys), result["environment"]
    assert result["environment"]["device"] == "cpu" and result["environment"]["dtype"] == "bf16"
    settings = result["settings"]
    expected = {"size": "tiny", "batch_size": 2, "reps": 2, "compile": False, "teacher_steps": 10}
    assert {k: settings[k] for k in expected} == expected and settings["step_counts"] == [1, 2, 4, 10]

    # LeRobot 0.6.1's SmolVLA defaults, read from the installed package
    defaults = result["smolvla_config_defaults"]
    assert (defaults["chunk_size"], defaults["max_action_dim"], defaults["num_vlm_layers"]) == (50, 32, 16)
    assert defaults["expert_width_multiplier"] == 0.75

    model = result["model"]
    assert (model["chunk_size"], model["max_action_dim"], model["vlm_layers_used"]) == (50, 32, 4)
    sizes = ("expert_hidden_size", "expert_layers", "prefix_tokens", "scale_factor", "action_dim", "cameras")
    assert all(_positive(model[key]) for key in sizes), model
    for part in ("vlm_text", "vlm_vision"):
        assert model[part] and all(_positive(v) for v in model[part].values()), model[part]
    for part in ("policy", "vlm", "action_expert", "reflow_teacher"):
        params = model["params"][part]
        assert _positive(params["total"]) and sum(params["by_dtype"].values()) == params["total"], part
    # bf16 as pretrained weights load: the VLM in bf16; the trainable expert part stays in the policy
    assert set(model["params"]["vlm"]["by_dtype"]) == {"bfloat16"}
    assert _positive(model["params"]["policy"]["trainable"])

    eager = result["eager"]
    assert set(eager["chunk_latency_ms"]) == set(STEP_COUNTS)
    assert all(_positive(v) for v in eager["chunk_latency_ms"].values())
    assert _positive(eager["latency_ratio_10_to_1_steps"])
    for key in ("step_ms", "time_ratio_vs_flow_matching"):
        assert set(eager[key]) == set(VARIANTS) and all(_positive(v) for v in eager[key].values()), key
    assert eager["time_ratio_vs_flow_matching"]["flow_matching"] == 1.0
    # CPU: memory is not measured, and says so (null), rather than a misleading RSS figure
    for key in ("peak_memory_mb", "memory_ratio_vs_flow_matching"):
        assert eager[key] == dict.fromkeys(VARIANTS), key
    assert result["compiled"] is None  # --compile is off by default on CPU

    table = proc.stdout
    assert "chunk latency, batch 1" in table and "training step" in table
    assert all(name in table for name in VARIANTS)


def test_smolvla_gpu_benchmark_arguments():
    script = _load_script()
    args = script.parse_args(["--out=x", "--device=cpu", "--size=tiny", "--reps=3"])
    assert (args.compile, args.dtype, args.batch_size, args.teacher_steps) == (False, "bf16", 32, 10)
    assert script.parse_args(["--out=x", "--device=cpu", "--compile"]).compile is True
    with pytest.raises(SystemExit):  # a real-size figure is a median of >= 20 repeats
        script.parse_args(["--out=x", "--device=cpu", "--size=real", "--reps=5"])
    if not script.torch.cuda.is_available():
        with pytest.raises(SystemExit):  # no silent fallback to CPU
            script.parse_args(["--out=x"])


def test_smolvlm2_500m_vlm_folder_round_trips(tmp_path):
    """The real size's local VLM folder reads back with SmolVLM2-500M-Video-Instruct's architecture."""
    from transformers import AutoConfig, AutoProcessor

    script = _load_script()
    folder = script.write_vlm(tmp_path / "vlm", "real", "fp32")  # config, processor, tokenizer; no weights
    config = AutoConfig.from_pretrained(folder)
    text = {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
            "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280}  # fmt: skip
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 512, "patch_size": 16}  # fmt: skip
    assert {k: getattr(config.text_config, k) for k in text} == text
    assert {k: getattr(config.vision_config, k) for k in vision} == vision
    assert config.scale_factor == 4 and config.text_config.pad_token_id < 49280
    assert AutoProcessor.from_pretrained(folder).image_seq_len == 64  # (512 / 16)^2 / 4^2 image tokens


def test_couplings_memory_benchmark_smoke(tmp_path):
    """The couplings memory benchmark runs end to end on 2,000 couplings; no memory threshold is asserted."""
    script = REPO / "benchmarks" / "couplings_memory.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(script), "--num-couplings=2000", "--block-size=256", f"--output={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["num_couplings"] == 2000 and result["action_shape"] == [4, 2]
    assert set(result["peak_rss_mb"]) == set(result["read_s"]) == {"memory_mapped", "held", "in_memory"}
    assert _positive(result["read_time_ratio_memory_mapped_to_held"])
    assert all(_positive(v) for v in result["peak_rss_mb"].values())
    assert _positive(result["ratio_in_memory_to_memory_mapped"])
    for path in ("memory_mapped", "held", "in_memory"):
        assert result["details"][path]["couplings_read"] == 2000  # every coupling read once
        assert result["details"][path]["action_sum"] == pytest.approx(result["details"]["in_memory"]["action_sum"])
    assert "peak RSS, 2,000 couplings: memory-mapped" in proc.stdout.splitlines()[-2]
    assert proc.stdout.splitlines()[-1].startswith("read time: memory-mapped")


def _benchmark(name: str):
    """The module `benchmarks/<name>.py`, imported with the benchmarks folder on the path (for its sibling imports)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_batch_read_benchmark_smoke(tmp_path, toy_dataset, teacher_1rf):
    """The batch-read benchmark reads the toy dataset both ways (checked equal inside); no time threshold."""
    batch_read = _benchmark("batch_read")
    result = batch_read.main([f"--teacher={teacher_1rf}", f"--dataset-root={toy_dataset}", "--batch-size=16",
                              "--batches=3", f"--output={tmp_path / 'o.json'}"])  # fmt: skip
    assert json.loads((tmp_path / "o.json").read_text()) == result
    assert result["dataset_class"] == "InMemoryFrames" and result["batches"] == 3
    assert set(result["ms_per_batch"]) == {"per_item", "batched"} and all(_positive(v) for v in result["ms_per_batch"].values())
    assert _positive(result["ratio_per_item_to_batched"])


def test_reflow_step_options_benchmark_smoke(tmp_path, toy_dataset, teacher_1rf):
    """The cheaper-reflow-step benchmark runs on the toy teacher; per-update times and the end-point
    errors are there (no time threshold is asserted)."""
    reflow_step_options = _benchmark("reflow_step_options")
    options = ["reuse_r2", "euler3", "heun2", "euler3_r8"]
    result = reflow_step_options.main([f"--teacher={teacher_1rf}", f"--dataset-root={toy_dataset}", "--batch-size=16",
                                       "--repeats=1", f"--options={','.join(options)}", f"--output={tmp_path / 'o.json'}"])  # fmt: skip
    assert json.loads((tmp_path / "o.json").read_text()) == result
    names = {"flow_matching", "reflow", *options}
    assert set(result["ms_per_update"]) == names and all(_positive(v) for v in result["ms_per_update"].values())
    assert result["ratio_vs_flow_matching"]["flow_matching"] == 1.0
    errors = result["end_point_error_vs_euler10"]
    assert set(errors) == {"euler10", "euler3", "heun2"} and errors["euler10"]["rms_error"] < 1e-6
    assert (errors["euler3"]["nfe"], errors["heun2"]["nfe"]) == (3, 3)
    assert all(_positive(errors[k]["rms_error"]) and _positive(errors[k]["ode_error"]) for k in ("euler3", "heun2"))
    assert errors["euler10"]["ode_error"] > 0 and errors["euler3"]["ode_error"] != errors["euler3"]["rms_error"]


def test_reflow_end_to_end_benchmark_smoke(tmp_path, toy_dataset, teacher_1rf):
    """Every way to a 2-RF runs end to end on the toy teacher (no time threshold is asserted)."""
    reflow_end_to_end = _benchmark("reflow_end_to_end")
    result = reflow_end_to_end.main([f"--teacher={teacher_1rf}", f"--dataset-root={toy_dataset}", "--updates=4",
                                     "--batch-size=8", "--reuse=2", "--cheap-steps=3", f"--output={tmp_path / 'o.json'}"])  # fmt: skip
    assert json.loads((tmp_path / "o.json").read_text()) == result
    assert set(result["seconds"]) == {"online_shared", "online_cheap", "stored"}  # flow_mlp: nothing to share
    assert all(_positive(t["total_s"]) for t in result["seconds"].values())
    assert _positive(result["seconds"]["stored"]["generate_s"])
    assert result["ratio_vs_online_shared"]["online_shared"] == 1.0
