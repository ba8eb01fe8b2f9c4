"""What an online reflow training step costs with each cheaper option, vs a flow-matching step.

For one teacher checkpoint and dataset (any policy type; or `--smolvla-size` to build a random-weight
SmolVLA, as `smolvla_reflow_step.py` does), measured side by side in one process, on the same batch,
noise and times, repeats interleaved round-robin (other load on the machine hits every option alike):

- `flow_matching`: the 1-RF step: `StudentLoss` on the dataset chunk, backward, AdamW step;
- `reflow`: today's online reflow step: the trainer's `OnlineTeacher` (10 Euler steps, the frozen
  backbone shared with the student when the policy has one), then the same student step;
- `reuse_r{2,4,8}`: `coupling_reuse`: one teacher solve serves r student updates (fresh t each); the
  time is that of the teacher solve + r updates, divided by r;
- `euler{3,5}`, `heun{2,3}`: a teacher solve with fewer velocity evaluations (NFE: Euler N = N,
  Heun N = 2N - 1, diffusers' grid); `heun3_r4`, `euler{5,3}_r8`: that and reuse together;
- `compiled`: `teacher.compile=true` (torch.compile of the teacher's velocity call, compiled before timing).

Also, for every teacher solve, its end points' error vs the 10-step Euler teacher on the batch and noise
(RMS over the normalised action chunk, and relative to the RMS of the reference end points), and vs a
200-step Euler solve (`ode_error`: how far each is from the ODE's own end point). With a trained teacher
(`--teacher`) the first is the coupling error a cheaper solve costs; a random-weight SmolVLA's velocity
field is not a trained one, so its errors say little.

    python benchmarks/reflow_step_options.py --teacher=outputs/metaworld/seed0/1rf --dataset-root=outputs/metaworld/data/demo
    python benchmarks/reflow_step_options.py --smolvla-size=small --batch-size=8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smolvla_reflow_step import report_json  # noqa: E402

# name -> (teacher solver, teacher steps, reuse r, compiled)
OPTIONS: dict[str, tuple[str, int, int, bool]] = {
    "reflow": ("euler", 10, 1, False),
    "reuse_r2": ("euler", 10, 2, False),
    "reuse_r4": ("euler", 10, 4, False),
    "reuse_r8": ("euler", 10, 8, False),
    "euler5": ("euler", 5, 1, False),
    "euler3": ("euler", 3, 1, False),
    "heun3": ("heun", 3, 1, False),
    "heun2": ("heun", 2, 1, False),
    "heun3_r4": ("heun", 3, 4, False),
    "euler5_r8": ("euler", 5, 8, False),
    "euler3_r8": ("euler", 3, 8, False),
    "compiled": ("euler", 10, 1, True),
}


@dataclass
class Setup:
    """The student (adapter, loss, optimizer), one teacher per solver setting, the batch and the inputs."""

    adapter: Any
    loss_module: Any
    optimizer: Any
    teachers: dict[tuple[str, int, bool], Any]
    batch: dict[str, Any]
    noise: torch.Tensor
    times: torch.Tensor  # (max r, B): the update times of a group


def build(teacher_path: str, dataset_root: str, batch_size: int, options: list[str]) -> Setup:
    """Load the student from the teacher's checkpoint (init_from_teacher), one `OnlineTeacher` per setting."""
    from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors
    from hf_reflow.configs import DatasetConfig, FlowConfig, TeacherConfig
    from hf_reflow.data import make_dataset
    from hf_reflow.evaluation.offline import observation_batch
    from hf_reflow.policies.factory import adapter_for
    from hf_reflow.training.losses import StudentLoss
    from hf_reflow.training.teacher import OnlineTeacher

    config = load_config(teacher_path)
    dataset = make_dataset(DatasetConfig(repo_id="local/bench", root=dataset_root, in_memory="never"), config)
    pre, _ = load_processors(teacher_path, config)
    batch = pre(observation_batch(dataset, batch_size, seed=0))
    adapter = adapter_for(load_policy(teacher_path).train())
    trainable = [p for p in adapter.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)  # tiny: the weights barely move between repeats
    teachers = {}
    for name in ["reflow", *options]:
        solver, steps, _, compiled = OPTIONS[name]
        key = (solver, steps, compiled)
        if key not in teachers:
            cfg = TeacherConfig(path=teacher_path, solver=solver, num_inference_steps=steps, compile=compiled)
            teacher = OnlineTeacher(cfg, device=torch.device("cpu"))
            if adapter.backbone_frozen():  # what the trainer does with a frozen backbone (SmolVLA expert-only)
                teacher.share_backbone_with(adapter)
            teachers[key] = teacher
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch_size, *adapter.action_shape, generator=generator)
    times = torch.rand(max(OPTIONS[n][2] for n in options + ["reflow"]), batch_size, generator=generator)
    return Setup(adapter, StudentLoss(adapter, FlowConfig()), optimizer, teachers, batch, noise, times)


def _context(setup: Setup) -> Any:
    with torch.no_grad():
        return setup.adapter.backbone_context(setup.batch) if setup.adapter.backbone_frozen() else None


def student_update(setup: Setup, targets) -> None:
    loss = setup.loss_module(setup.batch, targets)
    loss.backward()
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)


def run_option(setup: Setup, name: str) -> None:
    """One group: the teacher's solve (none for flow_matching), then r student updates at fresh times."""
    from hf_reflow.training.losses import Targets

    if name == "flow_matching":
        action, mask = setup.adapter.action_target(setup.batch)
        student_update(setup, Targets(setup.noise, action, setup.times[0], mask))
        return
    solver, steps, reuse, compiled = OPTIONS[name]
    context = _context(setup)
    action = setup.teachers[(solver, steps, compiled)].end_points(setup.batch, setup.noise, context)
    targets = Targets(setup.noise, action, setup.times[0], None, context)
    for r in range(reuse):
        student_update(setup, replace(targets, t=setup.times[r]))


def time_options(setup: Setup, names: list[str], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per student update of each option (group time / r), repeats interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup + repeats):
        for name in names:
            start = time.perf_counter()
            run_option(setup, name)
            reuse = 1 if name == "flow_matching" else OPTIONS[name][2]
            times[name].append((time.perf_counter() - start) * 1000 / reuse)
    return {name: float(np.median(values[warmup:])) for name, values in times.items()}


@torch.no_grad()
def end_point_errors(setup: Setup) -> dict[str, dict[str, float]]:
    """Per teacher setting: NFE, RMS error of its end points vs the 10-step Euler teacher's, and relative."""
    context = _context(setup)
    euler10 = setup.teachers[("euler", 10, False)]
    reference = euler10.end_points(setup.batch, setup.noise, context)
    euler10.cfg = replace(euler10.cfg, num_inference_steps=200)  # ~ the ODE's own end point
    ode = euler10.end_points(setup.batch, setup.noise, context)
    euler10.cfg = replace(euler10.cfg, num_inference_steps=10)
    scale = float(reference.pow(2).mean().sqrt())
    errors = {}
    for (solver, steps, compiled), teacher in setup.teachers.items():
        action = teacher.end_points(setup.batch, setup.noise, context)
        rms = float((action - reference).pow(2).mean().sqrt())
        key = f"{solver}{steps}" + ("_compiled" if compiled else "")
        nfe = steps if solver == "euler" else 2 * steps - 1
        errors[key] = {"nfe": nfe, "rms_error": rms, "relative_error": rms / scale,
                       "max_abs_error": float((action - reference).abs().max()),
                       "ode_error": float((action - ode).pow(2).mean().sqrt())}  # fmt: skip
    return errors


def smolvla_fixture(size: str, workdir: Path) -> tuple[str, str]:
    """A random-weight SmolVLA (expert-only training, frozen VLM) and its tiny image dataset."""
    from smolvla_reflow_step import build_fixture

    teacher, data = build_fixture(workdir, size, chunk_size=50)
    return str(teacher), str(data)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="a trained k-RF checkpoint or run dir (any policy type)")
    parser.add_argument("--dataset-root", help="the LeRobotDataset the teacher was trained on")
    parser.add_argument("--smolvla-size", choices=["tiny", "small"], help="instead: a random-weight SmolVLA")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated subset of " + ", ".join(OPTIONS))
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.smolvla_size:
        args.teacher, args.dataset_root = smolvla_fixture(args.smolvla_size, Path(tempfile.mkdtemp(prefix="bench_")))
    elif not (args.teacher and args.dataset_root):
        parser.error("give --teacher and --dataset-root, or --smolvla-size")
    options = [o for o in args.options.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown options {unknown}; choose from {', '.join(OPTIONS)}")
    setup = build(args.teacher, args.dataset_root, args.batch_size, options)
    names = ["flow_matching", *dict.fromkeys(["reflow", *options])]
    for name in names:  # compile (and any lazy load) before timing
        run_option(setup, name)
    ms = time_options(setup, names, args.repeats)
    params = sum(p.numel() for p in setup.adapter.policy.parameters())
    result = {
        "teacher": args.teacher, "policy_type": setup.adapter.policy_type, "params_million": params / 1e6,
        "shared_backbone": setup.adapter.backbone_frozen(), "batch_size": args.batch_size, "repeats": args.repeats,
        "device": f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "options": {name: list(OPTIONS[name]) for name in names if name in OPTIONS},
        "ms_per_update": ms, "ratio_vs_flow_matching": {k: v / ms["flow_matching"] for k, v in ms.items()},
        "end_point_error_vs_euler10": end_point_errors(setup),
    }  # fmt: skip
    report_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
