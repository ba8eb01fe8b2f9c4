"""Wall time to a 2-RF, end to end, for the same number of student updates, one way after another.

For one teacher checkpoint and dataset (any policy type; or `--smolvla-size` for a random-weight SmolVLA
built as `smolvla_reflow_step.py` builds it), each way runs hf-reflow's own code in this process:

- `online_shared`: `ReflowTrainer`, couplings made online per batch, the frozen backbone shared with
  the student where the policy has one (SmolVLA with train_expert_only; `flow_mlp` has none);
- `online_unshared`: the same with `teacher.shared_backbone=false`: a second full model, as the seed
  guide's naive approach (its own sampler aside) holds it; only run for a policy with a shareable backbone;
- `online_cheap`: `--coupling_reuse` r with a `--cheap-steps` Euler teacher (default r = 8, 5 steps);
- `stored`: `couplings.generate` of `--stored-couplings` couplings (default: updates x batch size, each
  seen once), then `ReflowTrainer` on them (`couplings.path`).

Every way trains `--updates` optimizer steps at `--batch-size` from the teacher's weights with the same
settings otherwise (seed 0, no checkpoints but the final one, no trackers), after one short untimed warm-up run. Reported: seconds per way
(stored: generation and training apart) and the ratio to `online_shared`. Quality is not measured here:
the README's closed-loop table gives it for the built-in policy (full-length runs of the same ways).

    python benchmarks/reflow_end_to_end.py --teacher=RUN/1rf --dataset-root=DATA --updates=300 --batch-size=256
    python benchmarks/reflow_end_to_end.py --smolvla-size=small --updates=20 --batch-size=8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smolvla_reflow_step import report_json  # noqa: E402


def train_config(args, way: str, out: Path, couplings: Path | None = None) -> Any:
    from hf_reflow.parsing import train_config_from_dict

    cheap = way == "online_cheap"
    data = {
        "stage": "reflow", "output_dir": str(out / way), "steps": args.updates, "batch_size": args.batch_size,
        "seed": 0, "log_with": [], "log_every": max(1, args.updates), "init_from_teacher": True,
        "policy": {"type": args.policy_type, "device": "cpu"},
        "dataset": {"repo_id": "local/bench", "root": args.dataset_root},
        "teacher": {"path": args.teacher, "num_inference_steps": args.cheap_steps if cheap else 10,
                    "shared_backbone": False if way == "online_unshared" else None},
        "coupling_reuse": args.reuse if cheap else 1,
        "couplings": {"path": str(couplings) if couplings else None},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
    }  # fmt: skip
    return train_config_from_dict(data)


def run_way(args, way: str, out: Path) -> dict[str, float]:
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.training.couplings import generate
    from hf_reflow.training.trainer import ReflowTrainer

    timings = {}
    couplings = None
    if way == "stored":
        start = time.perf_counter()
        couplings = generate(
            out / "couplings", TeacherConfig(path=args.teacher), DatasetConfig(repo_id="local/bench", root=args.dataset_root),
            num_couplings=args.stored_couplings or args.updates * args.batch_size, batch_size=args.batch_size, seed=0,
        )  # fmt: skip
        timings["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ReflowTrainer(train_config(args, way, out, couplings)).train()
    timings["train_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())
    return timings


def run_warmup(config: Any) -> None:
    from hf_reflow.training.trainer import ReflowTrainer

    ReflowTrainer(config).train()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from hf_reflow.artifacts.checkpoints import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="a trained k-RF checkpoint or run dir (any policy type)")
    parser.add_argument("--dataset-root", help="the LeRobotDataset the teacher was trained on")
    parser.add_argument("--smolvla-size", choices=["tiny", "small"], help="instead: a random-weight SmolVLA")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reuse", type=int, default=8, help="online_cheap: coupling_reuse")
    parser.add_argument("--cheap-steps", type=int, default=5, help="online_cheap: the teacher's Euler steps")
    parser.add_argument("--stored-couplings", type=int, default=0, help="stored: couplings generated; 0: updates x batch")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="reflow_e2e_"))
    if args.smolvla_size:
        from reflow_step_options import smolvla_fixture

        args.teacher, args.dataset_root = smolvla_fixture(args.smolvla_size, work / "fixture")
    elif not (args.teacher and args.dataset_root):
        parser.error("give --teacher and --dataset-root, or --smolvla-size")
    if args.updates % args.reuse:
        parser.error(f"--updates ({args.updates}) must be a multiple of --reuse ({args.reuse})")
    config = load_config(args.teacher)
    args.policy_type = config.type
    shareable = bool(getattr(config, "train_expert_only", False))
    ways = ["online_shared", *(["online_unshared"] if shareable else []), "online_cheap", "stored"]
    try:
        # One-time costs (imports, first allocations) must not land on the first way timed.
        warm = argparse.Namespace(**{**vars(args), "updates": args.reuse, "batch_size": min(args.batch_size, 8)})
        warmup_config = train_config(warm, "online_cheap", work / "warmup")
        run_warmup(warmup_config)
        seconds = {way: run_way(args, way, work) for way in ways}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = seconds["online_shared"]["total_s"]
    result = {
        "teacher": args.teacher, "policy_type": args.policy_type, "updates": args.updates,
        "batch_size": args.batch_size, "reuse": args.reuse, "cheap_steps": args.cheap_steps,
        "stored_couplings": args.stored_couplings or args.updates * args.batch_size, "shared_backbone_possible": shareable, "seconds": seconds,
        "ratio_vs_online_shared": {way: t["total_s"] / base for way, t in seconds.items()},
    }  # fmt: skip
    report_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
