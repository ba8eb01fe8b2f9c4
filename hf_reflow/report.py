"""Pipeline results: per-seed rows -> summary with 95 % confidence intervals, `results.json`, `report.md`, plots.

Confidence intervals of success: with >= 2 training seeds, a Student-t interval over the per-seed
success rates (seed-to-seed spread dominates here); with one seed, a Wilson interval over the pooled
episodes (it then says nothing about training-seed variance, and the report says so).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("success_rate", "collision_rate", "left_share", "mean_steps", "straightness", "error_vs_10step",
           "error_vs_data", "latency_ms")  # fmt: skip


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def t_interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean of rates `values` (>= 2 values), clipped to [0, 1]."""
    from scipy import stats

    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return (max(0.0, mean - half), min(1.0, mean + half))  # a rate's interval stays inside [0, 1]


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def summarise(rows: list[dict]) -> list[dict]:
    """One summary row per (stage, step count), averaged over seeds, in chain order."""
    order: list[tuple[str, int]] = []
    for row in rows:
        if (row["name"], row["nfe"]) not in order:
            order.append((row["name"], row["nfe"]))
    summary = []
    for name, nfe in order:
        cell = [r for r in rows if r["name"] == name and r["nfe"] == nfe]
        entry: dict[str, Any] = {"name": name, "k": cell[0]["k"], "stage": cell[0]["stage"], "nfe": nfe,
                                 "seeds": len(cell)}  # fmt: skip
        entry.update({key: _mean(cell, key) for key in METRICS})
        if cell[0].get("episodes"):
            entry["episodes"] = int(sum(r["episodes"] for r in cell))
            if len(cell) >= 2:
                entry["success_ci95"] = t_interval([r["success_rate"] for r in cell])
                entry["ci_method"] = "t over seeds"
            else:
                entry["success_ci95"] = wilson_interval(cell[0]["successes"], cell[0]["episodes"])
                entry["ci_method"] = "Wilson over episodes"
        summary.append(entry)
    return summary


def format_summary(summary: list[dict]) -> str:
    """A plain-text table (what the pipeline prints at the end)."""
    header = [
        "stage",
        "steps",
        "success",
        "95% CI",
        "collisions",
        "left",
        "straightness",
        "err vs 10",
        "ms/chunk",
    ]
    lines = [header]
    for s in summary:
        ci = s.get("success_ci95")
        lines.append([
            s["name"], str(s["nfe"]), _pct(s.get("success_rate")),
            f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else "", _pct(s.get("collision_rate")), _pct(s.get("left_share")),
            _num(s["straightness"]), _num(s["error_vs_10step"]), f"{s['latency_ms']:.2f}",
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown(summary: list[dict], cfg: Any, rows: list[dict]) -> str:
    """`report.md`: settings, the summary table, per-task success, plots."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "# hf-reflow pipeline report",
        "",
        f"Tasks: {', '.join(cfg.data.tasks)} ({cfg.data.mode}); {cfg.data.episodes} demonstrations per task; "
        f"chain: {' -> '.join(dict.fromkeys(r['name'] for r in rows))}; training seeds: {seeds}; "
        f"{cfg.eval.episodes} closed-loop episodes per task and cell on evaluation layouts; offline metrics on "
        f"{cfg.eval.num_samples} held-out observations.",
        "",
        "Success = task solved without touching the obstacle. 95 % CI: "
        + (
            "Student-t over training seeds."
            if len(seeds) >= 2
            else "Wilson over episodes (one training seed)."
        )
        + " Straightness: integral of ||(noise - action_end) - v(x_t, t)||^2 along the N-step path"
        " (0 = straight). err vs 10: MSE of the N-step chunk vs the same stage's 10-step chunk (normalised"
        " actions); err vs expert: vs the demonstrated chunk. Latency: one chunk, batch 1, CPU.",
        "",
        "| stage | steps | success | 95% CI | collisions | left share | straightness | err vs 10 | err vs expert | ms/chunk |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        ci = s.get("success_ci95")
        lines.append(
            f"| {s['name']} | {s['nfe']} | {_pct(s.get('success_rate'))} | "
            f"{f'{_pct(ci[0])}-{_pct(ci[1])}' if ci else ''} | {_pct(s.get('collision_rate'))} | "
            f"{_pct(s.get('left_share'))} | {_num(s['straightness'])} | {_num(s['error_vs_10step'])} | "
            f"{_num(s['error_vs_data'])} | {s['latency_ms']:.2f} |"
        )
    if any("per_task" in r for r in rows):
        lines += ["", "Success by task (mean over seeds):", "", "| stage | steps | " + " | ".join(cfg.data.tasks) + " |",
                  "|---|---|" + "---|" * len(cfg.data.tasks)]  # fmt: skip
        for s in summary:
            cell = [r for r in rows if r["name"] == s["name"] and r["nfe"] == s["nfe"]]
            per = [
                _pct(float(np.mean([r["per_task"][t]["success_rate"] for r in cell]))) for t in cfg.data.tasks
            ]
            lines.append(f"| {s['name']} | {s['nfe']} | " + " | ".join(per) + " |")
    lines += ["", "![success and straightness by step count](report.png)", ""]
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Success vs step count (with CIs) and error vs the 10-step chunk, one line per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_success, ax_error) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(s["name"] for s in summary):
        cells = [s for s in summary if s["name"] == name]
        nfes = [s["nfe"] for s in cells]
        if cells[0].get("success_rate") is not None:
            success = np.array([s["success_rate"] for s in cells])
            ci = np.array([s["success_ci95"] for s in cells]).T
            ax_success.errorbar(
                nfes, success, yerr=[success - ci[0], ci[1] - success], marker="o", capsize=3, label=name
            )
        ax_error.plot(nfes, [max(s["error_vs_10step"], 1e-8) for s in cells], marker="o", label=name)
    ax_success.set(xscale="log", xlabel="Euler steps", ylabel="closed-loop success", ylim=(0, 1.02))
    ax_error.set(xscale="log", yscale="log", xlabel="Euler steps", ylabel="MSE vs own 10-step chunk")
    for ax in (ax_success, ax_error):
        ax.set_xticks(
            sorted({s["nfe"] for s in summary}), labels=[str(n) for n in sorted({s["nfe"] for s in summary})]
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, cfg: Any, rows: list[dict]) -> dict[str, Any]:
    """Write `results.json`, `report.md` and `report.png` into `out`; return the results dict."""
    summary = summarise(rows)
    results = {"recipe": dataclasses.asdict(cfg), "summary": summary, "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "report.md").write_text(markdown(summary, cfg, rows))
    plot(summary, out / "report.png")
    return results
