"""SmolVLA on one GPU: chunk latency by Euler step count and the cost of a reflow training step.

Builds a SmolVLA on a SmolVLM of the real SmolVLM2-500M-Video-Instruct architecture (config values
written out below; random weights, nothing downloaded) with LeRobot 0.6.1's SmolVLAConfig defaults
(first 16 VLM layers, action expert 0.75x wide, chunk 50, max action dim 32). With `--dtype=bf16` the
random VLM weights are written to the local SmolVLM folder in bf16 and the policy is built with
`load_vlm_weights=True`, so LeRobot loads them exactly as it loads pretrained SmolVLM2 weights.
Then, all in one process and side by side:

- chunk latency: LeRobot's `predict_action_chunk` (prefix + N x `denoise_step`) at batch 1 and
  N = 1, 2, 4, 10 Euler steps;
- one training step (forward, backward, AdamW) of each variant of `smolvla_reflow_step.py`:
  `flow_matching` (1-RF), `reflow_shared` (hf-reflow, frozen VLM shared with the teacher),
  `reflow_unshared`, `naive` (the guide's second model + `sample_actions`), on the same batch, noise
  and times, repeats interleaved round-robin; its time and peak memory;
- all of it again with `torch.compile` of every model's `denoise_step` (`--compile`, on by default
  on CUDA).

Times are medians of `--reps` warm repeats, CUDA-synchronised (wall time on CPU). Peak memory (CUDA
only) of a variant = what it holds after its first step (weights, teacher, AdamW state) + the peak
of `torch.cuda.max_memory_allocated` above the allocation before one warm step. On CPU it is null:
one process cannot separate the variants' resident memory honestly (see `smolvla_reflow_step.py`
for subprocess RSS figures).

    python benchmarks/smolvla_gpu.py --out=DIR                          # CUDA, real size, bf16, compile
    python benchmarks/smolvla_gpu.py --out=DIR --device=cpu --size=tiny --reps=3 --batch-size=2

Writes DIR/smolvla_gpu.json (after each phase, "complete": true at the end) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smolvla_reflow_step import (  # noqa: E402
    VARIANTS,
    Variant,
    _inputs,
    _sync,
    build_policy_fixture,
    first_observation,
    make_batch,
    make_step,
    median_ms,
    time_steps,
)

STEP_COUNTS = (1, 2, 4, 10)
JSON_NAME = "smolvla_gpu.json"

# HuggingFaceTB/SmolVLM2-500M-Video-Instruct, config.json (text: SmolLM2-360M; vision: SigLIP base
# patch16 at 512 px; 3 pixel-shuffle: scale_factor 4 gives (512/16)^2 / 16 = 64 image tokens).
SMOLVLM2_500M_TEXT = {
    "model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
    "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49280,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192, "hidden_act": "silu",
    "tie_word_embeddings": False,
}  # fmt: skip
SMOLVLM2_500M_VISION = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 512, "patch_size": 16, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh",
}  # fmt: skip
SMOLVLM2_500M_SCALE_FACTOR = 4


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)


# ---- the model --------------------------------------------------------------------------------
def write_vlm(directory: Path, size: str, dtype: str) -> Path:
    """A local SmolVLM folder (config, processor, tokenizer; bf16: random weights too) of `size`."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from hf_reflow.testing import tiny_smolvla

    if size == "tiny":
        tiny_smolvla.write_smolvlm_folder(directory, tiny_smolvla.TINY)
    else:  # tokenizer and 512-px processor from tiny_smolvla, then the exact architecture config
        tiny_smolvla.write_smolvlm_folder(directory, tiny_smolvla.SMOLVLM2_500M)
        written = SmolVLMConfig.from_pretrained(directory)
        SmolVLMConfig(
            text_config={**SMOLVLM2_500M_TEXT, "pad_token_id": written.text_config.pad_token_id},
            vision_config=SMOLVLM2_500M_VISION,
            scale_factor=SMOLVLM2_500M_SCALE_FACTOR,
            image_token_id=written.image_token_id,
            pad_token_id=written.pad_token_id,
            tie_word_embeddings=False,
        ).save_pretrained(directory)
    if dtype == "bf16":  # what `load_vlm_weights=True` reads, in the dtype LeRobot asks for
        with torch.random.fork_rng():
            torch.manual_seed(0)
            vlm = SmolVLMForConditionalGeneration(SmolVLMConfig.from_pretrained(directory))
        vlm.to(torch.bfloat16).save_pretrained(directory)
        del vlm
    return directory


def smolvla_defaults() -> dict[str, Any]:
    """LeRobot's SmolVLAConfig defaults that shape the model (read from the installed LeRobot)."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    keys = ("chunk_size", "max_action_dim", "max_state_dim", "num_vlm_layers", "expert_width_multiplier",
            "num_expert_layers", "self_attn_every_n_layers", "attention_mode", "resize_imgs_with_padding",
            "tokenizer_max_length", "num_steps", "train_expert_only", "freeze_vision_encoder")  # fmt: skip
    fields = {f.name: f.default for f in dataclasses.fields(SmolVLAConfig)}
    return {k: fields[k] for k in keys}


def build_fixture(workdir: Path, size: str, dtype: str) -> tuple[Path, Path, dict[str, Any]]:
    """VLM folder, dataset and a random SmolVLA checkpoint; returns (checkpoint, data, config overrides)."""
    defaults = smolvla_defaults()
    vlm = write_vlm(workdir / "vlm", size, dtype)
    overrides: dict[str, Any] = {"load_vlm_weights": dtype == "bf16"}
    if size == "real":
        keep = ("num_vlm_layers", "tokenizer_max_length", "resize_imgs_with_padding")
        overrides.update({k: defaults[k] for k in keep})
    else:  # tiny: 4 text layers, 64 px (set by tiny_smolvla), short prompts
        overrides["num_vlm_layers"] = min(defaults["num_vlm_layers"], 4)
    teacher, data = build_policy_fixture(workdir, vlm, chunk_size=defaults["chunk_size"], **overrides)
    return teacher, data, overrides


def count_params(module: torch.nn.Module) -> dict[str, Any]:
    by_dtype: dict[str, int] = {}
    for p in module.parameters():
        key = str(p.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + p.numel()
    return {
        "total": sum(p.numel() for p in module.parameters()),
        "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "by_dtype": by_dtype,
    }


def describe_model(variants: dict[str, Variant], single: dict[str, Any]) -> dict[str, Any]:
    policy = variants["flow_matching"].adapter.policy
    vwe = policy.model.vlm_with_expert
    from hf_reflow.policies.smolvla import _lerobot_inputs

    with torch.no_grad():
        _, pad_masks, _ = policy.model.embed_prefix(*_lerobot_inputs(policy, single))
    text, vision = vwe.vlm.config.text_config, vwe.vlm.config.vision_config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    return {
        "vlm_text": {k: getattr(text, k) for k in (*keys, "num_key_value_heads", "head_dim", "vocab_size")},
        "vlm_vision": {k: getattr(vision, k) for k in (*keys, "image_size", "patch_size")},
        "scale_factor": vwe.vlm.config.scale_factor,
        "vlm_layers_used": vwe.num_vlm_layers,
        "expert_hidden_size": vwe.expert_hidden_size,
        "expert_layers": vwe.num_expert_layers,
        "chunk_size": policy.config.chunk_size,
        "max_action_dim": policy.config.max_action_dim,
        "action_dim": policy.config.action_feature.shape[0],
        "image_size": list(policy.config.resize_imgs_with_padding),
        "cameras": len(policy.config.image_features),
        "prefix_tokens": int(pad_masks.shape[1]),
        "params": {
            "policy": count_params(policy),
            "vlm": count_params(vwe.vlm),
            "action_expert": count_params(vwe.lm_expert),
            # the frozen k-RF teacher as hf-reflow's OnlineTeacher holds it (reflow_unshared)
            "reflow_teacher": count_params(variants["reflow_unshared"].teacher),
        },
    }


# ---- measurements -----------------------------------------------------------------------------
def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else 0


def build_variants(args, teacher: Path, batch, noise, t, start: float) -> tuple[dict[str, Variant], dict]:
    """Every variant, built one after the other; CUDA: bytes each holds after its first step."""
    variants, held = {}, {}
    for name in VARIANTS:
        gc.collect()
        _sync(args.device)
        before = _allocated(args.device)
        variants[name] = make_step(name, teacher, args.device, args.teacher_steps, vlm_bf16=False)
        variants[name].step(batch, noise, t)  # creates the AdamW state
        variants[name].adapter.policy.train()
        gc.collect()
        _sync(args.device)
        held[name] = _allocated(args.device) - before
        log(start, f"built {name}")
    return variants, held


def step_memory(variants: dict[str, Variant], held: dict, batch, noise, t, device: str) -> dict:
    """Peak MiB of one warm step per variant: what it holds + its step's peak above that (CUDA; else None)."""
    if device != "cuda":
        return {name: None for name in variants}
    peaks = {}
    for name, variant in variants.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        variant.step(batch, noise, t)
        torch.cuda.synchronize()
        peaks[name] = (held[name] + torch.cuda.max_memory_allocated() - before) / 2**20
    return peaks


def chunk_latency(policy, single, noise, device: str, reps: int, warmup: int) -> dict[str, float]:
    """Median ms of LeRobot's `predict_action_chunk` (batch 1, no grad) at each Euler step count."""
    saved, result = policy.config.num_steps, {}
    with torch.no_grad():
        for n in STEP_COUNTS:
            policy.config.num_steps = n
            result[str(n)] = median_ms(
                lambda: policy.predict_action_chunk(dict(single), noise=noise), device, reps, warmup
            )
    policy.config.num_steps = saved
    policy.train()
    return result


def reference_chunk(policy, single, noise) -> torch.Tensor:
    """The 10-step chunk from `noise` (to compare compiled with eager)."""
    saved = policy.config.num_steps
    policy.config.num_steps = 10
    with torch.no_grad():
        chunk = policy.predict_action_chunk(dict(single), noise=noise).float()
    policy.config.num_steps = saved
    policy.train()
    return chunk


def compile_denoise_steps(variants: dict[str, Variant], mode: str, backend: str) -> int:
    """Replace every model's `denoise_step` with its `torch.compile`d version; returns how many."""
    import torch._dynamo

    # one code object for all models, batch 1 and B, grad and no grad: more than the default 8 entries
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    models = {id(m): m for variant in variants.values() for m in variant.models}
    for model in models.values():
        model.denoise_step = torch.compile(model.denoise_step, mode=mode, backend=backend, dynamic=False)
    return len(models)


def ratios(values: dict[str, float | None]) -> dict[str, float | None]:
    base = values["flow_matching"]
    return {k: None if v is None or base is None else v / base for k, v in values.items()}


def measure_mode(args, variants, held, batch, single, noise, t, chunk_noise, warmup, start, label) -> dict:
    policy = variants["flow_matching"].adapter.policy
    latency = chunk_latency(policy, single, chunk_noise, args.device, args.reps, warmup)
    log(start, f"{label}: chunk latency {latency}")
    steps = {name: v.step for name, v in variants.items()}
    ms = time_steps(steps, batch, noise, t, args.device, args.reps, warmup=warmup)
    log(start, f"{label}: step ms {ms}")
    memory = step_memory(variants, held, batch, noise, t, args.device)
    return {
        "chunk_latency_ms": latency,
        "latency_ratio_10_to_1_steps": latency["10"] / latency["1"],
        "step_ms": ms,
        "time_ratio_vs_flow_matching": ratios(ms),
        "peak_memory_mb": memory,
        "memory_ratio_vs_flow_matching": ratios(memory),
    }


# ---- the run ----------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def environment(args) -> dict[str, Any]:
    cuda = args.device == "cuda"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "transformers": version("transformers"),
        "lerobot": version("lerobot"),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "device_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul": cuda,  # set on CUDA, as lerobot-train does
        "dtype": args.dtype,
        "dtype_note": "bf16: VLM weights loaded by LeRobot with load_vlm_weights=True (torch_dtype bfloat16)"
        if args.dtype == "bf16"
        else "fp32: model built from config (load_vlm_weights=False)",
    }


def run(args) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "complete": False,
        "environment": environment(args),
        "settings": {
            "size": args.size, "batch_size": args.batch_size, "teacher_steps": args.teacher_steps,
            "reps": args.reps, "step_counts": list(STEP_COUNTS), "compile": args.compile,
            "compile_mode": args.compile_mode if args.compile else None,
            "compile_backend": args.compile_backend if args.compile else None,
            "memory": "CUDA: held after first step + max_memory_allocated above it in one warm step"
            if args.device == "cuda" else "not measured on CPU (null)",
        },
        "smolvla_config_defaults": smolvla_defaults(),
    }  # fmt: skip

    def save() -> None:
        result["wall_s"] = time.perf_counter() - start
        (out / JSON_NAME).write_text(json.dumps(result, indent=2) + "\n")

    workdir = Path(tempfile.mkdtemp(prefix="smolvla_gpu_"))
    try:
        teacher, data, overrides = build_fixture(workdir, args.size, args.dtype)
        result["settings"]["smolvla_overrides"] = {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in overrides.items()}  # fmt: skip
        log(start, f"fixture written in {workdir}")
        if args.device == "cuda":  # cuBLAS workspaces etc. before any variant's accounting
            torch.backends.cuda.matmul.allow_tf32 = True  # as lerobot-train sets it
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(64, 64, device="cuda", dtype=dtype, requires_grad=True)
                (x @ x).sum().backward()
            _sync(args.device)
        batch = make_batch(teacher, data, args.batch_size, args.device)
        single = first_observation(batch)
        shape_args = argparse.Namespace(batch_size=args.batch_size)
        defaults = result["smolvla_config_defaults"]
        noise, t = _inputs(shape_args, args.device, (defaults["chunk_size"], defaults["max_action_dim"]))
        chunk_noise = noise[:1].clone()
        variants, held = build_variants(args, teacher, batch, noise, t, start)
        result["model"] = describe_model(variants, single)
        save()

        result["eager"] = measure_mode(
            args, variants, held, batch, single, noise, t, chunk_noise, 1, start, "eager"
        )
        result["compiled"] = None
        save()
        if args.compile:
            policy = variants["flow_matching"].adapter.policy
            eager_chunk = reference_chunk(policy, single, chunk_noise)
            compiled_models = compile_denoise_steps(variants, args.compile_mode, args.compile_backend)
            begin = time.perf_counter()
            compiled_chunk = reference_chunk(policy, single, chunk_noise)  # compiles the batch-1 graph
            for variant in variants.values():  # compiles the training-batch graphs
                variant.step(batch, noise, t)
            _sync(args.device)
            warm_s = time.perf_counter() - begin
            log(start, f"compiled {compiled_models} denoise_step(s), first calls {warm_s:.1f} s")
            compiled = measure_mode(
                args, variants, held, batch, single, noise, t, chunk_noise, 2, start, "compiled"
            )
            compiled["compiled_models"] = compiled_models
            compiled["first_calls_s"] = warm_s
            compiled["chunk_max_abs_diff_vs_eager"] = float((compiled_chunk - eager_chunk).abs().max())
            result["compiled"] = compiled
        result["complete"] = True
        save()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---- the table --------------------------------------------------------------------------------
def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + unit


def table(result: dict[str, Any]) -> str:
    env, settings, model = result["environment"], result["settings"], result["model"]
    params = model["params"]["policy"]
    modes = [m for m in ("eager", "compiled") if result.get(m)]
    lines = [
        f"SmolVLA {settings['size']} ({params['total'] / 1e6:.1f} M params, {model['vlm_layers_used']} VLM layers, "
        f"expert {model['expert_hidden_size']}), random weights, {env['dtype']}, {env['device_name']}, "
        f"torch {env['torch']}",
        f"batch {settings['batch_size']}, chunk {model['chunk_size']} x {model['max_action_dim']}, "
        f"prefix {model['prefix_tokens']} tokens, teacher {settings['teacher_steps']} Euler steps, "
        f"median of {settings['reps']}",
        "",
        "chunk latency, batch 1, predict_action_chunk (ms)",
        f"{'':10}"
        + "".join(f"{f'{n} step' + ('s' if n > 1 else ''):>11}" for n in STEP_COUNTS)
        + f"{'10/1':>8}",
    ]
    for mode in modes:
        lat = result[mode]["chunk_latency_ms"]
        lines.append(
            f"{mode:10}" + "".join(f"{lat[str(n)]:>11.2f}" for n in STEP_COUNTS)
            + f"{result[mode]['latency_ratio_10_to_1_steps']:>7.2f}x"
        )  # fmt: skip
    lines += ["", "training step (ratios: variant / flow_matching, same run)"]
    header = f"{'':17}"
    for mode in modes:
        header += f"{mode + ' ms':>14}{'x':>7}{'peak MiB':>11}{'x':>7}"
    lines.append(header)
    for name in VARIANTS:
        row = f"{name:17}"
        for mode in modes:
            r = result[mode]
            row += (
                f"{r['step_ms'][name]:>14.2f}{r['time_ratio_vs_flow_matching'][name]:>6.2f}x"
                f"{_num(r['peak_memory_mb'][name], '.0f'):>11}"
                f"{_num(r['memory_ratio_vs_flow_matching'][name], '.2f', 'x'):>7}"
            )
        lines.append(row)
    if result.get("compiled"):
        c = result["compiled"]
        lines.append(
            f"\ncompiled: {c['compiled_models']} denoise_step(s), first calls {c['first_calls_s']:.1f} s, "
            f"10-step chunk max |compiled - eager| = {c['chunk_max_abs_diff_vs_eager']:.2e}"
        )
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help=f"folder for {JSON_NAME}")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="real", choices=["real", "tiny"],
                        help="real: SmolVLM2-500M architecture; tiny: a 1.7 M-param smoke model")  # fmt: skip
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                        help="bf16: VLM loaded as pretrained weights load (default); fp32: built from config")  # fmt: skip
    parser.add_argument(
        "--reps", type=int, default=20, help="timed repeats per figure (>= 20 unless --size=tiny)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch")
    parser.add_argument("--teacher-steps", type=int, default=10, help="Euler steps of the reflow teacher")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure with torch.compile'd denoise_step (default: on for CUDA, off for CPU)")  # fmt: skip
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = args.device == "cuda"
    if args.size == "real" and args.reps < 20:
        parser.error("--reps must be >= 20 with --size=real (fewer only for the tiny smoke run)")
    if args.reps < 1 or args.batch_size < 1 or args.teacher_steps < 1:
        parser.error("--reps, --batch-size and --teacher-steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device=cuda but torch sees no CUDA device; use --device=cpu --size=tiny for a smoke run"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    result = run(args)
    print(table(result))
    print(f"\nwrote {Path(args.out) / JSON_NAME}")


if __name__ == "__main__":
    main()
