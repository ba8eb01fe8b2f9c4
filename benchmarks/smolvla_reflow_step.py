"""Cost of a SmolVLA reflow training step vs a plain flow-matching step, and chunk latency by step count.

Measured side by side in one run, on the same batch, noise and times:

- `flow_matching`: the 1-RF step (LeRobot's forward on the dataset chunk, backward, AdamW step).
- `reflow_shared`: hf-reflow's reflow step with the shared frozen VLM (prefix once per batch for the
  teacher's ODE and the student's loss; the teacher has no VLM copy): the trainer's `OnlineTeacher`
  and `StudentLoss`.
- `reflow_unshared`: the same with `teacher.shared_backbone=false`.
- `naive`: the seed guide's approach: a full second SmolVLA and LeRobot's `sample_actions` per batch,
  then LeRobot's forward on the teacher's chunk.

Step times are medians over interleaved repeats (other load on the machine hits every variant
alike). Peak memory is measured per variant in its own subprocess (CUDA: `max_memory_allocated`;
CPU: growth of the peak RSS after the batch is built), so weights, optimizer state and activations
all count. Latency: one observation, encode + N velocity calls, N = 1, 2, 5, 10.

    python benchmarks/smolvla_reflow_step.py --size=tiny --output=benchmarks/results/smolvla_tiny_cpu.json
    python benchmarks/smolvla_reflow_step.py --size=smolvlm2_500m --device=cuda --vlm-bf16 --batch-size=32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

VARIANTS = ("flow_matching", "reflow_shared", "reflow_unshared", "naive")


def build_fixture(workdir: Path, size_name: str, chunk_size: int) -> tuple[Path, Path]:
    """A random-weight SmolVLA checkpoint on a local SmolVLM of `size_name`, and a small image dataset."""
    from hf_reflow.testing import tiny_smolvla

    size = {
        "tiny": tiny_smolvla.TINY,
        "small": tiny_smolvla.SMALL,
        "smolvlm2_500m": tiny_smolvla.SMOLVLM2_500M,
    }[size_name]
    vlm = tiny_smolvla.write_smolvlm_folder(workdir / "vlm", size)
    return build_policy_fixture(workdir, vlm, chunk_size=chunk_size, num_vlm_layers=min(size.text_layers, 16))


def build_policy_fixture(
    workdir: Path, vlm: Path, *, chunk_size: int, action_dim: int = 4, **overrides: Any
) -> tuple[Path, Path]:
    """A small image dataset in `workdir/data` and a seeded random SmolVLA on the VLM folder `vlm` in
    `workdir/teacher` (`overrides`: SmolVLAConfig fields); returns (checkpoint, dataset root)."""
    from hf_reflow.testing import tiny_smolvla

    data = tiny_smolvla.write_image_dataset(
        workdir / "data", episodes=2, length=max(40, chunk_size), image_size=96, action_dim=action_dim
    )
    teacher = tiny_smolvla.write_smolvla_checkpoint(
        workdir / "teacher", vlm_dir=vlm, dataset_root=data, chunk_size=chunk_size, n_action_steps=chunk_size,
        **overrides,
    )  # fmt: skip
    return teacher, data


def make_batch(teacher: Path, data: Path, batch_size: int, device: str) -> dict[str, Any]:
    from hf_reflow.artifacts.checkpoints import load_config, load_processors
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import make_dataset

    config = load_config(str(teacher))
    dataset = make_dataset(DatasetConfig(repo_id="local/tiny_images", root=str(data)), config)
    items = [dataset[i % len(dataset)] for i in range(batch_size)]
    pre, _ = load_processors(str(teacher), config, device=device)
    return pre(torch.utils.data.default_collate(items))


def load_student(teacher: Path, device: str, vlm_bf16: bool) -> Any:
    from hf_reflow.artifacts.checkpoints import load_policy

    policy = load_policy(str(teacher), device=device)
    if vlm_bf16:  # as LeRobot loads pretrained SmolVLM weights: VLM in bf16, the rest in float32
        policy.model.vlm_with_expert.vlm.to(torch.bfloat16)
    return policy.train()


@dataclass
class Variant:
    """One training-step variant: `step(batch, noise, t)` runs a step and returns the loss; `adapter` is
    the student's; `models` are the `VLAFlowMatching` modules whose `denoise_step` the step runs
    (student first, then the teacher's, if any)."""

    step: Callable[..., float]
    adapter: Any
    models: list[torch.nn.Module]
    teacher: Any = None  # the teacher's policy (OnlineTeacher's or the naive second model), if any


def make_step(name: str, teacher: Path, device: str, teacher_steps: int, vlm_bf16: bool) -> Variant:
    """Variant `name` ready to run: student, optimizer and (for reflow / naive) the loaded teacher."""
    from hf_reflow.configs import FlowConfig, TeacherConfig
    from hf_reflow.policies.factory import adapter_for
    from hf_reflow.training.losses import StudentLoss, Targets
    from hf_reflow.training.teacher import OnlineTeacher

    student = load_student(teacher, device, vlm_bf16)
    adapter = adapter_for(student)
    loss_module = StudentLoss(adapter, FlowConfig())
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-6)
    online = OnlineTeacher(
        TeacherConfig(path=str(teacher), num_inference_steps=teacher_steps), device=torch.device(device)
    )
    if name == "reflow_shared":
        online.share_backbone_with(adapter)
    if name in ("reflow_shared", "reflow_unshared") and vlm_bf16:
        online.adapter.model.vlm_with_expert.vlm.to(torch.bfloat16)
    naive_teacher = (
        load_student(teacher, device, vlm_bf16).eval().requires_grad_(False) if name == "naive" else None
    )

    def loss_of(batch, noise, t):
        if name == "flow_matching":
            action, mask = adapter.action_target(batch)
            return loss_module(batch, Targets(noise, action, t, mask))
        if name == "naive":
            return _naive_loss(student, naive_teacher, batch, noise, t, teacher_steps)
        with torch.no_grad():  # the shared frozen VLM's keys / values, reused by teacher and student
            context = online.adapter.backbone_context(batch) if name == "reflow_shared" else None
        return loss_module(batch, Targets(noise, online.end_points(batch, noise, context), t, None, context))

    def step(batch, noise, t):
        loss = loss_of(batch, noise, t)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    teacher_policy = {"flow_matching": None, "naive": naive_teacher}.get(name)
    if name in ("reflow_shared", "reflow_unshared"):  # load the teacher now (lazy otherwise: first step)
        teacher_policy = online.adapter.policy
    models = [student.model] + ([teacher_policy.model] if teacher_policy is not None else [])
    return Variant(step, adapter, models, teacher_policy)


def _naive_loss(student, teacher, batch, noise, t, teacher_steps: int):
    """The guide's approach: the full teacher's `sample_actions`, then the student's LeRobot forward."""
    from hf_reflow.policies.smolvla import _lerobot_inputs

    teacher.config.num_steps = teacher_steps
    with torch.no_grad():
        action = teacher.model.sample_actions(*_lerobot_inputs(teacher, batch), noise=noise)  # (B, chunk, 32)
    targets = {k: v for k, v in batch.items() if k != "action_is_pad"}
    targets["action"] = action[:, :, : student.config.action_feature.shape[0]]
    loss, _ = student.forward(targets, noise=noise, time=t)
    return loss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall ms of `fn()` over `repeats` calls after `warmup` calls, synchronised on CUDA."""
    values = []
    for _ in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        values.append((time.perf_counter() - start) * 1000)
    return float(np.median(values[warmup:]))


def time_steps(steps: dict, batch, noise, t, device: str, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median ms per step of each variant, repeats interleaved round-robin after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats + warmup):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step(batch, noise, t)
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(values[warmup:])) for name, values in times.items()}


@torch.no_grad()
def chunk_latency(adapter, batch, device: str, repeats: int, step_counts=(1, 2, 5, 10)) -> dict[str, float]:
    """Median ms of one action chunk (one observation: encode + N velocity calls) per step count."""
    from hf_reflow.policies.base import sample_policy

    adapter.policy.eval()
    single = first_observation(batch)
    noise = torch.randn(1, *adapter.action_shape, device=device)
    return {
        str(n): median_ms(lambda n=n: sample_policy(adapter, single, noise, num_steps=n), device, repeats)
        for n in step_counts
    }


def first_observation(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch cut to its first sample (tensors and lists; other values as they are)."""
    return {k: v[:1] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}


def _inputs(args, batch_device: str, adapter_shape) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(args.batch_size, *adapter_shape, generator=g).to(batch_device)
    t = torch.rand(args.batch_size, generator=g).to(batch_device)
    return noise, t


class RssSampler:
    """Peak resident memory (bytes) of this process, sampled every millisecond in a thread."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure_memory(args, teacher: Path, data: Path) -> dict[str, float]:
    """Peak memory growth (MB) while building `args.memory_of` and running 3 steps, in this fresh process."""
    batch = make_batch(teacher, data, args.batch_size, args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = RssSampler.current()
    with RssSampler() as rss:
        variant = make_step(args.memory_of, teacher, args.device, args.teacher_steps, args.vlm_bf16)
        noise, t = _inputs(args, args.device, variant.adapter.action_shape)
        for _ in range(3):
            variant.step(batch, noise, t)
    if args.device == "cuda":
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    return {"peak_mb": (rss.peak - base_rss) / 2**20}


def memory_in_subprocess(args, name: str, teacher: Path, data: Path) -> float:
    cmd = [sys.executable, __file__, f"--memory-of={name}", f"--teacher={teacher}", f"--data={data}",
           f"--device={args.device}", f"--batch-size={args.batch_size}", f"--teacher-steps={args.teacher_steps}"]  # fmt: skip
    cmd += ["--vlm-bf16"] if args.vlm_bf16 else []
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def run(args) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="smolvla_bench_"))
    teacher, data = build_fixture(workdir, args.size, args.chunk_size)
    batch = make_batch(teacher, data, args.batch_size, args.device)
    steps, adapters = {}, {}
    for name in VARIANTS:
        variant = make_step(name, teacher, args.device, args.teacher_steps, args.vlm_bf16)
        steps[name], adapters[name] = variant.step, variant.adapter
    noise, t = _inputs(args, args.device, adapters["flow_matching"].action_shape)
    ms = time_steps(steps, batch, noise, t, args.device, args.repeats)
    del steps
    memory = {name: memory_in_subprocess(args, name, teacher, data) for name in VARIANTS}
    params = sum(p.numel() for p in adapters["flow_matching"].policy.parameters())
    return {
        "size": args.size, "params_million": params / 1e6, "device": _device_name(args.device),
        "vlm_bf16": args.vlm_bf16, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "teacher_steps": args.teacher_steps, "step_ms": ms,
        "time_ratio_vs_flow_matching": {k: v / ms["flow_matching"] for k, v in ms.items()},
        "peak_memory_mb": memory,
        "memory_ratio_vs_flow_matching": {k: v / memory["flow_matching"] for k, v in memory.items()},
        "chunk_latency_ms": chunk_latency(adapters["flow_matching"], batch, args.device, args.repeats),
    }  # fmt: skip


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def report_json(result: dict[str, Any], output: str | None) -> None:
    """Print `result` as indented JSON and, with `output`, write it there too (folders made as needed)."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "smolvlm2_500m"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--vlm-bf16", action="store_true", help="VLM weights in bf16 (as LeRobot loads them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--teacher-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: one variant's memory
    parser.add_argument("--teacher", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_of:
        print(json.dumps(measure_memory(args, Path(args.teacher), Path(args.data))))
        return
    result = run(args)
    report_json(result, args.output)


if __name__ == "__main__":
    main()
