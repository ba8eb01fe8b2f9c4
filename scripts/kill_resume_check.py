"""Kill -9 a training run at spread-out moments, resume it, and compare with the uninterrupted run.

    .venv/bin/python scripts/kill_resume_check.py --kills=9

Each run is `hf-reflow train` on a small toy dataset (tiny flow_mlp, checkpoints every `--save_every` steps);
run i is sent SIGKILL `i / kills` of the way through the reference run's wall time (start-up, training,
checkpoint writes), then rerun with `--resume=true` until it finishes. It prints how many of the killed runs
ended with a final model and every numbered checkpoint's weights byte-for-byte equal to the reference's,
and whether any temporary folder was left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hf_reflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_reflow", *args]


def train_args(data: Path, out: Path, steps: int, save_every: int) -> list[str]:
    return hf_reflow(
        "train", f"--dataset.root={data}", f"--output_dir={out}", f"--steps={steps}", f"--save_every={save_every}",
        "--batch_size=32", "--log_with=[]", "--policy.hidden_dim=32", "--policy.num_blocks=1",
        "--policy.chunk_size=8", "--policy.n_action_steps=4", "--ema_decay=0.9", "--resume=true",
    )  # fmt: skip


def weights(run: Path) -> dict[str, bytes]:
    files = [run / "pretrained_model" / "model.safetensors", *sorted(run.glob("checkpoints/[0-9]*/pretrained_model/model.safetensors"))]
    return {str(f.relative_to(run)): f.read_bytes() for f in files if f.is_file()}


def leftovers(run: Path) -> list[str]:
    return [str(p) for folder in (run, run / "checkpoints") if folder.is_dir() for p in folder.iterdir()
            if p.name.startswith(".") and (".tmp" in p.name or ".old-" in p.name)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=9)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--save_every", type=int, default=50)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run(hf_reflow("dataset", "toy", f"--root={root / 'data'}", "--episodes=30"), check=True, env=env,
                       capture_output=True, cwd=REPO)  # fmt: skip
        start = time.perf_counter()
        subprocess.run(train_args(root / "data", root / "ref", args.steps, args.save_every), check=True, env=env,
                       capture_output=True, cwd=REPO)  # fmt: skip
        duration = time.perf_counter() - start
        reference, equal, clean = weights(root / "ref"), 0, 0
        print(f"reference run: {duration:.1f} s, {len(reference)} weight files")
        for i in range(1, args.kills + 1):
            out, delay = root / f"killed{i}", duration * i / (args.kills + 1)
            proc = subprocess.Popen(train_args(root / "data", out, args.steps, args.save_every), env=env, cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            for _ in range(3):
                if subprocess.run(train_args(root / "data", out, args.steps, args.save_every), env=env, cwd=REPO,
                                  capture_output=True).returncode == 0:  # fmt: skip
                    break
            same = weights(out) == reference
            equal += same
            clean += not leftovers(out)
            print(f"run {i}: killed at {delay:.1f} s{'' if killed else ' (had already finished)'}: "
                  f"{'bitwise equal' if same else 'DIFFERENT'}, leftovers {leftovers(out) or 'none'}")  # fmt: skip
        print(f"{equal} of {args.kills} runs killed with kill -9 resumed to weights bitwise equal to the "
              f"uninterrupted run (final model and every numbered checkpoint); {clean} of {args.kills} left no temporary folder")


if __name__ == "__main__":
    main()
