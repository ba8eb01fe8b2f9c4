"""Compare two pipeline runs cell by cell, paired: the same training seeds, evaluation episodes and noise.

Two runs of one recipe that differ in one setting (e.g. `--data.expert_aim`) evaluate every cell on the same
episode seeds with the same noise per chunk, so their per-episode successes pair up across runs:

    python scripts/compare_runs.py BASE/results.json NEW/results.json [--base-label=hand --new-label=fingertips]

prints, per stage and step count (the policies' own re-planning), both success rates, the paired difference
NEW - BASE with its 95 % bootstrap interval (`hf_reflow.evaluation.report.paired_difference`), timeouts,
collisions, per-task success and the training seeds compared. A cell is compared on the training seeds both
runs hold for it (a 3-seed variant against a 6-seed base uses the three seeds they share), and skipped when it is
missing from either run or they share no seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_reflow.evaluation import report
from hf_reflow.metrics import upgrade_row


def _cells(results: dict) -> dict[tuple[str, int], list[dict]]:
    """(stage name, steps) -> its rows (one per training seed), at the policies' own re-planning."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for row in map(upgrade_row, results["rows"]):  # results of any version: today's column names
        if "success_rate" in row and row.get("n_action_steps") == row.get("policy_n_action_steps"):
            cells.setdefault((row["name"], row["num_steps"]), []).append(row)
    return cells


def _mean(rows: list[dict], key: str, task: str | None = None) -> float:
    """Episode-weighted mean of `key` in percent (of one task's results when `task` is given)."""
    parts = [row["per_task"][task] if task else row for row in rows]
    return 100 * sum(p[key] * p["episodes"] for p in parts) / sum(p["episodes"] for p in parts)


def compare(base: dict, new: dict, base_label: str = "base", new_label: str = "new") -> list[str]:
    """The paired comparison as markdown table lines."""
    old_cells, tasks = _cells(base), list(next(iter(new["rows"]))["per_task"])
    lines = [
        f"| stage | steps | {base_label} | {new_label} | {new_label} - {base_label}, points (paired 95% CI) | timeouts | "
        f"collisions | {' | '.join(tasks)} | seeds |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(tasks) + 1),
    ]
    for key, rows in _cells(new).items():
        seeds = sorted({r["seed"] for r in old_cells.get(key, [])} & {r["seed"] for r in rows})
        if not seeds:
            continue
        old = [r for r in old_cells[key] if r["seed"] in seeds]
        rows = [r for r in rows if r["seed"] in seeds]
        mean, (low, high) = report.paired_difference(rows, old)
        per_task = " | ".join(f"{_mean(old, 'success_rate', t):.0f} -> {_mean(rows, 'success_rate', t):.0f}%" for t in tasks)
        lines.append(
            f"| {key[0]} | {key[1]} | {_mean(old, 'success_rate'):.1f}% | {_mean(rows, 'success_rate'):.1f}% | "
            f"{100 * mean:+.1f} ({100 * low:+.1f}, {100 * high:+.1f}) | {_mean(old, 'timeout_rate'):.1f} -> "
            f"{_mean(rows, 'timeout_rate'):.1f}% | {_mean(old, 'collision_rate'):.1f} -> {_mean(rows, 'collision_rate'):.1f}% | "
            f"{per_task} | {', '.join(map(str, seeds))} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="results.json of the baseline run")
    parser.add_argument("new", type=Path, help="results.json of the changed run")
    parser.add_argument("--base-label", default="base")
    parser.add_argument("--new-label", default="new")
    args = parser.parse_args()
    base, new = (json.loads(path.read_text()) for path in (args.base, args.new))
    print("\n".join(compare(base, new, args.base_label, args.new_label)))


if __name__ == "__main__":
    main()
