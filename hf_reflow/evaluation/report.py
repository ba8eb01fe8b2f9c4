"""Pipeline results: per-seed rows -> summary with 95 % confidence intervals, `results.json`, `report.md`, plots.

Confidence intervals of success: with >= 2 training seeds, a Student-t interval over the per-seed
success rates (seed-to-seed spread dominates here); with one seed, a Wilson interval over the pooled
episodes (it then says nothing about training-seed variance, and the report says so).

Paired differences: every cell (stage x step count) ran the same episode seeds with the same noise per
chunk (`closed_loop.PolicyController`), so each cell is compared with the reference cell (the 1-RF at its
largest step count, 10 by default) episode by episode: the mean of the per-episode success differences
and a 95 % paired bootstrap interval that resamples episodes within each training seed and task.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("success_rate", "collision_rate", "stall_rate", "timeout_rate", "left_share", "side_switches",
           "mean_steps", "straightness", "error_vs_10step", "error_vs_data", "latency_ms")  # fmt: skip
OUTCOME_RATES = ("success_rate", "collision_rate", "stall_rate", "timeout_rate")
BOOTSTRAP_SAMPLES = 4000
# The targets, checked in report.md (points are success-rate differences to the reference cell).
TARGET_REFERENCE_SUCCESS = 0.95
TARGET_GAP = {1: -0.03, 2: -0.01}
TARGET_COLLISIONS_1_STEP = 0.02
TARGET_LEFT_SHARE = (0.40, 0.60)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    low = 0.0 if successes == 0 else centre - half  # exact at the ends; elsewhere rounding can
    high = 1.0 if successes == trials else centre + half  # put a bound a hair past p (1 - 1e-16 at 50/50)
    return _containing(p, low, high)


def _containing(estimate: float, low: float, high: float) -> tuple[float, float]:
    """(low, high) clipped to [0, 1] and widened to contain `estimate`, so error bars are never negative."""
    return (max(0.0, min(low, estimate)), min(1.0, max(high, estimate)))


def t_interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean of rates `values` (>= 2 values), clipped to [0, 1]."""
    from scipy import stats

    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return _containing(mean, mean - half, mean + half)  # a rate's interval stays inside [0, 1]


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def reference_cell(rows: list[dict]) -> tuple[str, int] | None:
    """The cell every other is compared with: the 1-RF (k = 1, flow matching) at its largest step count."""
    cells = [(r["name"], r["nfe"]) for r in rows if r.get("stage") == "flow_matching" and r.get("episodes")]
    return max(cells, key=lambda cell: cell[1]) if cells else None


def _paired_vectors(rows: list[dict]) -> dict[int, np.ndarray]:
    """seed -> (episodes,) per-episode success of one cell, tasks in row order, episodes in seed order."""
    return {
        r["seed"]: np.concatenate([np.asarray(t["episode_success"], dtype=np.float64) for t in r["per_task"].values()])
        for r in rows
    }


def paired_difference(cell: list[dict], reference: list[dict], *, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean per-episode success difference cell - reference and its 95 % paired bootstrap interval.

    Rows of both cells must hold the same episodes (same training seeds, tasks and episode seeds);
    episodes are resampled with replacement within each training seed.
    """
    mine, theirs = _paired_vectors(cell), _paired_vectors(reference)
    if mine.keys() != theirs.keys() or any(mine[s].shape != theirs[s].shape for s in mine):
        raise ValueError("paired cells must hold the same training seeds and episodes")
    for row, ref in zip(sorted(cell, key=lambda r: r["seed"]), sorted(reference, key=lambda r: r["seed"]), strict=True):
        if [t["episode_seeds"] for t in row["per_task"].values()] != [t["episode_seeds"] for t in ref["per_task"].values()]:
            raise ValueError("paired cells must run the same episode seeds")
    diffs = [mine[s] - theirs[s] for s in sorted(mine)]  # per seed, (episodes,)
    total = sum(len(d) for d in diffs)
    rng = np.random.default_rng(seed)
    sums = np.zeros(BOOTSTRAP_SAMPLES)
    for d in diffs:
        sums += d[rng.integers(0, len(d), size=(BOOTSTRAP_SAMPLES, len(d)))].sum(axis=1)
    mean = float(np.concatenate(diffs).mean())
    low, high = np.quantile(sums / total, [0.025, 0.975])
    return mean, (min(float(low), mean), max(float(high), mean))


def summarise(rows: list[dict]) -> list[dict]:
    """One summary row per (stage, step count), averaged over seeds, in chain order, with paired differences."""
    order = list(dict.fromkeys((row["name"], row["nfe"]) for row in rows))
    reference = reference_cell(rows)
    ref_rows = [r for r in rows if (r["name"], r["nfe"]) == reference]
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
            if reference is not None and all("episode_success" in t for r in cell for t in r["per_task"].values()):
                entry["reference"] = f"{reference[0]} @ {reference[1]}"
                entry["diff_vs_reference"], entry["diff_ci95"] = paired_difference(cell, ref_rows)
        summary.append(entry)
    return summary


def per_task(rows: list[dict], summary: list[dict], tasks: list[str]) -> list[dict]:
    """Per (stage, step count, task): outcome rates, left share and side switches, averaged over seeds."""
    table = []
    for s in summary:
        cell = [r for r in rows if r["name"] == s["name"] and r["nfe"] == s["nfe"] and "per_task" in r]
        for task in tasks if cell else []:
            stats = [r["per_task"][task] for r in cell]
            table.append({"name": s["name"], "nfe": s["nfe"], "task": task,
                          **{key: _mean(stats, key) for key in (*OUTCOME_RATES, "left_share", "side_switches")}})  # fmt: skip
    return table


def targets(summary: list[dict]) -> list[dict]:
    """The benchmark's targets, measured: what, target, measured, met (None when not measured)."""
    closed = [s for s in summary if s.get("success_rate") is not None]
    ref = next((s for s in closed if f"{s['name']} @ {s['nfe']}" == s.get("reference")), None)
    out = []
    if ref is not None:
        out.append({"what": f"{ref['name']} at {ref['nfe']} steps: success", "target": f">= {_pct(TARGET_REFERENCE_SUCCESS)}",
                    "measured": _pct(ref["success_rate"]), "met": ref["success_rate"] >= TARGET_REFERENCE_SUCCESS})  # fmt: skip
    for nfe, gap in TARGET_GAP.items():
        cells = [s for s in closed if s["nfe"] == nfe and "diff_vs_reference" in s]
        if ref is not None and cells:
            best = max(cells, key=lambda s: s["success_rate"])
            low, high = best["diff_ci95"]
            out.append({"what": f"best at {nfe} step{'s' * (nfe > 1)} ({best['name']}) - reference",
                        "target": f">= {100 * gap:+.0f} points", "met": best["diff_vs_reference"] >= gap,
                        "measured": f"{100 * best['diff_vs_reference']:+.1f} points (paired 95% CI "
                                    f"{100 * low:+.1f} to {100 * high:+.1f}; "
                                    f"{'CI above the target' if low >= gap else 'CI includes values below the target'})"})  # fmt: skip
    one_step = [s for s in closed if s["nfe"] == 1]
    if one_step:
        best = max(one_step, key=lambda s: s["success_rate"])
        out.append({"what": f"collisions at 1 step ({best['name']})", "target": f"<= {_pct(TARGET_COLLISIONS_1_STEP)}",
                    "measured": _pct(best["collision_rate"]), "met": best["collision_rate"] <= TARGET_COLLISIONS_1_STEP})  # fmt: skip
        low, high = TARGET_LEFT_SHARE
        out.append({"what": f"left share at 1 step ({best['name']})", "target": f"{_pct(low)}-{_pct(high)}",
                    "measured": _pct(best["left_share"]), "met": low <= best["left_share"] <= high})  # fmt: skip
    return out


def format_summary(summary: list[dict]) -> str:
    """A plain-text table (what the pipeline prints at the end)."""
    header = ["stage", "steps", "success", "95% CI", "vs ref (paired CI)", "collisions", "stalls", "left",
              "straightness", "err vs 10", "ms/chunk"]  # fmt: skip
    lines = [header]
    for s in summary:
        lines.append([
            s["name"], str(s["nfe"]), _pct(s.get("success_rate")), _ci(s.get("success_ci95")), _diff(s),
            _pct(s.get("collision_rate")), _pct(s.get("stall_rate")), _pct(s.get("left_share")),
            _num(s["straightness"]), _num(s["error_vs_10step"]), f"{s['latency_ms']:.2f}",
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return f"{_pct(ci[0])}-{_pct(ci[1])}" if ci else ""


def _diff(s: dict) -> str:
    if "diff_vs_reference" not in s:
        return ""
    low, high = s["diff_ci95"]
    return f"{100 * s['diff_vs_reference']:+.1f} ({100 * low:+.1f}, {100 * high:+.1f})"


def markdown(summary: list[dict], cfg: Any, rows: list[dict]) -> str:
    """`report.md`: settings, the summary table, targets, per-task outcomes, plots."""
    seeds = sorted({r["seed"] for r in rows})
    reference = next((s["reference"] for s in summary if "reference" in s), None)
    lines = [
        "# hf-reflow pipeline report",
        "",
        f"Tasks: {', '.join(cfg.data.tasks)} ({cfg.data.mode}); {cfg.data.episodes} demonstrations per task; "
        f"chain: {' -> '.join(dict.fromkeys(r['name'] for r in rows))}; training seeds: {seeds}; "
        f"{cfg.eval.episodes} closed-loop episodes per task and cell on evaluation layouts; offline metrics on "
        f"{cfg.eval.num_samples} held-out observations.",
        "",
        "Success = task solved without touching the obstacle. 95 % CI: "
        + ("Student-t over training seeds." if len(seeds) >= 2 else "Wilson over episodes (one training seed).")
        + f" Paired: every cell ran the same episodes with the same noise per chunk; 'vs ref' is the mean"
        f" per-episode success difference to {reference or 'the reference'} (points) with a 95 % paired"
        " bootstrap interval (episodes resampled within each training seed). Failures: collision, stall (hand"
        " within 1 cm for its last 20 steps) or timeout (still moving); side switches: changes of side of the"
        " start -> target line from one chunk to the next. Straightness: integral of ||(noise - action_end) -"
        " v(x_t, t)||^2 along the N-step path (0 = straight). err vs 10: MSE of the N-step chunk vs the same"
        " stage's 10-step chunk (normalised actions); err vs expert: vs the demonstrated chunk. Latency: one"
        " chunk, batch 1, CPU. A distilled student is evaluated at the step count it was trained for only.",
        "",
        "| stage | steps | success | 95% CI | vs ref, points (paired 95% CI) | collisions | stalls | timeouts "
        "| left share | side switches | straightness | err vs 10 | err vs expert | ms/chunk |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['name']} | {s['nfe']} | {_pct(s.get('success_rate'))} | {_ci(s.get('success_ci95'))} | {_diff(s)} | "
            f"{_pct(s.get('collision_rate'))} | {_pct(s.get('stall_rate'))} | {_pct(s.get('timeout_rate'))} | "
            f"{_pct(s.get('left_share'))} | {_num(s.get('side_switches'), 2)} | {_num(s['straightness'])} | {_num(s['error_vs_10step'])} | "
            f"{_num(s['error_vs_data'])} | {s['latency_ms']:.2f} |"
        )
    checks = targets(summary)
    if checks:
        lines += ["", "Targets:", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
        lines += [f"| {c['what']} | {c['target']} | {c['measured']} | {'yes' if c['met'] else 'no'} |" for c in checks]
    tasks = per_task(rows, summary, list(cfg.data.tasks))
    if tasks:
        lines += ["", "By task (mean over seeds):", "",
                  "| stage | steps | task | success | collisions | stalls | timeouts | left share | side switches |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {t['name']} | {t['nfe']} | {t['task']} | {_pct(t['success_rate'])} | {_pct(t['collision_rate'])} | "
            f"{_pct(t['stall_rate'])} | {_pct(t['timeout_rate'])} | {_pct(t['left_share'])} | "
            f"{'' if t['side_switches'] is None else f'{t[chr(115) + "ide_switches"]:.2f}'} |"
            for t in tasks
        ]
    lines += ["", "![success, error and outcomes by step count](report.png)", ""]
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Success vs step count (with CIs), error vs the 10-step chunk, and outcome shares per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_success, ax_error, ax_outcome) = plt.subplots(1, 3, figsize=(15, 3.8))
    for name in dict.fromkeys(s["name"] for s in summary):
        cells = [s for s in summary if s["name"] == name]
        nfes = [s["nfe"] for s in cells]
        if cells[0].get("success_rate") is not None:
            success = np.array([s["success_rate"] for s in cells])
            ci = np.array([s["success_ci95"] for s in cells]).T
            yerr = np.clip([success - ci[0], ci[1] - success], 0.0, None)  # intervals contain the estimate
            ax_success.errorbar(nfes, success, yerr=yerr, marker="o", capsize=3, label=name)
        ax_error.plot(nfes, [max(s["error_vs_10step"], 1e-8) for s in cells], marker="o", label=name)
    ax_success.set(xscale="log", xlabel="Euler steps", ylabel="closed-loop success", ylim=(0, 1.02))
    ax_error.set(xscale="log", yscale="log", xlabel="Euler steps", ylabel="MSE vs own 10-step chunk")
    steps = sorted({s["nfe"] for s in summary})
    for ax in (ax_success, ax_error):
        ax.set_xticks(steps, labels=[str(n) for n in steps])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _plot_outcomes(ax_outcome, [s for s in summary if s.get("success_rate") is not None])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_outcomes(ax: Any, cells: list[dict]) -> None:
    """Stacked bars: success / collision / stall / timeout share of each (stage, steps) cell."""
    labels = [f"{s['name']}\n{s['nfe']} st" for s in cells]
    bottom = np.zeros(len(cells))
    for key in OUTCOME_RATES:
        share = np.array([s.get(key) or 0.0 for s in cells])
        ax.bar(range(len(cells)), share, bottom=bottom, label=key.removesuffix("_rate"))
        bottom += share
    ax.set_xticks(range(len(cells)), labels=labels, fontsize=6, rotation=90)
    ax.set(ylabel="share of episodes", ylim=(0, 1.02))
    ax.legend(fontsize=7)


def write(out: Path, cfg: Any, rows: list[dict], *, log: Any = print) -> dict[str, Any]:
    """Write `results.json` and `report.md`, then `report.png`, into `out`; return the results dict.

    Results are written first; a plotting failure is reported in one line and loses nothing.
    """
    summary = summarise(rows)
    results = {"recipe": dataclasses.asdict(cfg), "summary": summary, "per_task": per_task(rows, summary, list(cfg.data.tasks)),
               "targets": targets(summary), "rows": rows}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "report.md").write_text(markdown(summary, cfg, rows))
    try:
        plot(summary, out / "report.png")
    except Exception as e:  # a figure must never cost a finished run its results
        log(f"warning: could not draw {out / 'report.png'} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "results.json and report.md are complete")  # fmt: skip
    return results
