"""How well one-step students follow their teacher where they were taught and where they were not.

For each training seed of a pipeline run, every student's chunk at its own step count is compared with its
teacher's chunk at 10 steps from the same noise (mean squared error, normalised action space), on three sets of
observations: the demonstrations' frames (where `distill` is taught), each closed-loop states folder of the run
(`seed<s>/states/<policy>`: where `redistill` is taught, the layouts of the demonstrations and, with
`rollout_layout_sets`, more) and the held-out expert frames on evaluation layouts (where nothing is taught):

    python scripts/student_gap.py RUN --teacher=2rf --students 2rf-distill 2rf-redistill [--seeds 0 1 2]

A student whose held-out error is well above its error on the frames it was taught on generalises poorly
from them (docs/results.md). The teacher at 1 and 2 steps is printed beside
it, as what a few-step sampler of the same flow achieves.

`--spread` prints a second table: how much each policy's chunk at one observation varies with the noise (the
standard deviation over noise draws, averaged over frames and action entries), the teacher at 10 steps
included. A student whose spread is well below its teacher's has collapsed toward one chunk per observation,
which held noise showed costs closed-loop success (docs/results.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch

from hf_reflow.artifacts.checkpoints import load_checkpoint
from hf_reflow.configs.train import DatasetConfig
from hf_reflow.data import make_dataset
from hf_reflow.evaluation.offline import REFERENCE_STEPS, observation_batch
from hf_reflow.policies.base import sample_policy
from hf_reflow.sampling import seeded_noise


def drawn_chunks(teacher, students: dict[str, object], root: Path, num_samples: int, seed: int, draws: int,
                 teacher_steps: tuple[int, ...]) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
    """Per noise draw, every policy's (B, chunk, dim) chunk from the same noise on `num_samples` frames of the dataset
    at `root` (all of them when it has fewer): "teacher @ n" for each n in `teacher_steps`, then each student at its
    own step count."""
    dataset = make_dataset(DatasetConfig(root=str(root), in_memory="never"), teacher.config)
    raw = observation_batch(dataset, min(num_samples, len(dataset)), seed)
    batch = teacher.preprocessor(raw)
    inputs = {name: student.preprocessor(raw) for name, student in students.items()}
    action, _ = teacher.adapter.action_target(batch)
    for draw in range(draws):
        noise = seeded_noise((action.shape[0], *teacher.adapter.action_shape), seed + 1 + draw).to(action)
        chunks = {f"teacher @ {n}": sample_policy(teacher.adapter, batch, noise, num_steps=n).action for n in teacher_steps}
        for name, student in students.items():
            chunks[name] = sample_policy(student.adapter, inputs[name], noise, num_steps=student.adapter.num_steps).action
        yield chunks


def chunk_errors(teacher, students: dict[str, object], root: Path, num_samples: int, seed: int, draws: int) -> dict[str, float]:
    """MSE vs the teacher's 10-step chunk, averaged over `draws` noise draws: the teacher at 1 and 2 steps, then each
    student at its own step count. A chunk that takes the other detour costs far more than a near one, so the mean
    needs many chunks: two draws of 1024 frames x 1 noise gave the same student's error 1.4x apart."""
    totals: dict[str, float] = {}
    for chunks in drawn_chunks(teacher, students, root, num_samples, seed, draws, (REFERENCE_STEPS, 1, 2)):
        reference = chunks.pop(f"teacher @ {REFERENCE_STEPS}")
        for name, chunk in chunks.items():
            totals[name] = totals.get(name, 0.0) + float((chunk - reference).pow(2).mean()) / draws
    return totals


def chunk_spread(teacher, students: dict[str, object], root: Path, num_samples: int, seed: int, draws: int) -> dict[str, float]:
    """Std of each policy's chunk over `draws` noise draws at the same frame, averaged over frames and the chunk's
    entries (normalised actions): the teacher at 10, 2 and 1 steps, then each student at its own count."""
    stacked: dict[str, list[torch.Tensor]] = {}
    for chunks in drawn_chunks(teacher, students, root, num_samples, seed, draws, (REFERENCE_STEPS, 2, 1)):
        for name, chunk in chunks.items():
            stacked.setdefault(name, []).append(chunk)
    # (draws, B, chunk, dim) -> std over draws, mean over frames and entries
    return {name: float(torch.stack(c).std(dim=0).mean()) for name, c in stacked.items()}


def _policies(run: Path, seed: int, teacher: str, students: list[str]) -> tuple[Path, object, dict[str, object]]:
    """A training seed's folder, its loaded teacher and its loaded students by folder name."""
    folder = run / f"seed{seed}"
    mine = {name: load_checkpoint(str(folder / name / "pretrained_model")) for name in students}
    return folder, load_checkpoint(str(folder / teacher / "pretrained_model")), mine


def gap_table(run: Path, teacher: str, students: list[str], seeds: list[int], num_samples: int = 4096,
              draws: int = 4) -> list[str]:  # fmt: skip
    """Markdown lines: one row per seed and set of observations, one column per policy."""
    lines = []
    for seed in seeds:
        folder, loaded, mine = _policies(run, seed, teacher, students)
        sets = {"demonstrations": run / "data" / "demos"}
        sets |= {f"states of {p.name}": p for p in sorted((folder / "states").glob("*")) if (p / "meta").is_dir()}
        sets["held-out (evaluation layouts)"] = run / "data" / "heldout"
        for label, root in sets.items():
            errors = chunk_errors(loaded, mine, root, num_samples, seed=7, draws=draws)
            if not lines:
                lines += ["| seed | observations | " + " | ".join(errors) + " |", "|---|---|" + "---|" * len(errors)]
            lines.append(f"| {seed} | {label} | " + " | ".join(f"{v:.5f}" for v in errors.values()) + " |")
    return lines


def spread_table(run: Path, teacher: str, students: list[str], seeds: list[int], num_samples: int = 1024,
                 draws: int = 16) -> list[str]:  # fmt: skip
    """Markdown lines: one row per seed (the held-out frames), one column per policy's spread over noise draws."""
    lines = []
    for seed in seeds:
        _, loaded, mine = _policies(run, seed, teacher, students)
        spread = chunk_spread(loaded, mine, run / "data" / "heldout", num_samples, seed=7, draws=draws)
        if not lines:
            lines += ["| seed | " + " | ".join(spread) + " |", "|---|" + "---|" * len(spread)]
        lines.append(f"| {seed} | " + " | ".join(f"{v:.4f}" for v in spread.values()) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a pipeline run's output_dir")
    parser.add_argument("--teacher", default="2rf", help="the students' teacher's folder in each seed (2rf)")
    parser.add_argument("--students", nargs="+", default=["2rf-distill"], help="student folders in each seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    parser.add_argument("--num-samples", type=int, default=4096, help="observations per set (at most all of them)")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per observation")
    parser.add_argument("--spread", action="store_true", help="the spread over noise draws on held-out frames instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.spread:
        print("\n".join(spread_table(args.run, args.teacher, args.students, args.seeds)))
        return
    print("\n".join(gap_table(args.run, args.teacher, args.students, args.seeds, args.num_samples, args.draws)))


if __name__ == "__main__":
    main()
