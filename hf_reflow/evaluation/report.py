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

from hf_reflow.atomic import write_text
from hf_reflow.configs.pipeline import TargetsConfig
from hf_reflow.metrics import OUTCOME_RATES, SUMMARY_METRICS, EvalRow, containing, wilson_interval

BOOTSTRAP_SAMPLES = 4000
# "Equal success": a cell whose paired 95 % CI against the reference reaches this difference or above.
EQUAL_SUCCESS_MARGIN = -0.01
Cell = tuple[str, int, "int | None"]  # (stage name, step count, n_action_steps)


def cell_of(row: dict) -> Cell:
    """The evaluation cell a row belongs to: stage, step count and re-planning interval."""
    return (row["name"], row["num_steps"], row.get("n_action_steps"))


def label(cell: Cell) -> str:
    """`2-RF @ 1` or, re-planning after n actions, `2-RF @ 1, every 4`."""
    name, num_steps, n = cell
    return f"{name} @ {num_steps}" + (f", every {n}" if n is not None else "")


def _own_replanning(row: dict) -> bool:
    """The row re-plans at its policy's own n_action_steps (rows from before the option count as own)."""
    return row.get("n_action_steps") is None or row.get("n_action_steps") == row.get("policy_n_action_steps")


def t_interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean of rates `values` (>= 2 values), clipped to [0, 1]."""
    from scipy import stats

    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return containing(mean, mean - half, mean + half)  # a rate's interval stays inside [0, 1]


def _mean(rows: list[EvalRow], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def reference_cell(rows: list[EvalRow]) -> Cell | None:
    """The cell every other is compared with: the 1-RF (k = 1, flow matching) at its largest step count,
    re-planning at its own n_action_steps (the teacher's operating point)."""
    cells = [cell_of(r) for r in rows if r.get("stage") == "flow_matching" and r.get("episodes") and _own_replanning(r)]
    return max(cells, key=lambda cell: cell[1]) if cells else None


def _paired_vectors(rows: list[EvalRow]) -> dict[int, np.ndarray]:
    """seed -> (episodes,) per-episode success of one cell, tasks in row order, episodes in seed order."""
    return {
        r["seed"]: np.concatenate([np.asarray(t["episode_success"], dtype=np.float64) for t in r["per_task"].values()])
        for r in rows
    }


def paired_difference(cell: list[EvalRow], reference: list[EvalRow], *, seed: int = 0) -> tuple[float, tuple[float, float]]:
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


def summarise(rows: list[EvalRow]) -> list[dict]:
    """One summary row per cell (stage, step count, re-planning), averaged over seeds, in chain order, with
    paired differences to the reference cell."""
    order = list(dict.fromkeys(cell_of(row) for row in rows))
    reference = reference_cell(rows)
    ref_rows = [r for r in rows if cell_of(r) == reference]
    summary = []
    for key in order:
        cell = [r for r in rows if cell_of(r) == key]
        entry: dict[str, Any] = {"name": key[0], "k": cell[0]["k"], "stage": cell[0]["stage"], "num_steps": key[1],
                                 "n_action_steps": key[2], "own_n_action_steps": cell[0].get("policy_n_action_steps"),
                                 "seeds": len(cell)}  # fmt: skip
        entry.update({metric: _mean(cell, metric) for metric in SUMMARY_METRICS})
        if cell[0].get("episodes"):
            entry["episodes"] = int(sum(r["episodes"] for r in cell))
            if len(cell) >= 2:
                entry["success_ci95"] = t_interval([r["success_rate"] for r in cell])
                entry["ci_method"] = "t over seeds"
            else:
                entry["success_ci95"] = wilson_interval(cell[0]["successes"], cell[0]["episodes"])
                entry["ci_method"] = "Wilson over episodes"
            if reference is not None and all("episode_success" in t for r in cell for t in r["per_task"].values()):
                entry["reference"] = label(reference)
                entry["diff_vs_reference"], entry["diff_ci95"] = paired_difference(cell, ref_rows)
                entry["hand_speed_vs_reference"] = paired_speed_ratio(cell, ref_rows)
        summary.append(entry)
    return summary


def paired_speed_ratio(cell: list[EvalRow], reference: list[EvalRow]) -> float | None:
    """Mean hand speed of the cell / of the reference over the episodes both recorded (same seeds, same noise)."""
    def speeds(rows: list[EvalRow]) -> np.ndarray:
        return np.array([v if v is not None else np.nan for r in sorted(rows, key=lambda r: r["seed"])
                         for t in r["per_task"].values() for v in t.get("episode_hand_speed") or []], dtype=np.float64)  # fmt: skip

    mine, theirs = speeds(cell), speeds(reference)
    if mine.size == 0 or mine.shape != theirs.shape:
        return None
    both = np.isfinite(mine) & np.isfinite(theirs)
    return float(mine[both].mean() / theirs[both].mean()) if both.any() and theirs[both].mean() > 0 else None


def speedup_at_equal_success(summary: list[dict]) -> dict[str, Any] | None:
    """The cheapest operating point whose paired 95 % CI against the reference reaches EQUAL_SUCCESS_MARGIN or
    above, and its compute as a ratio of the reference's (denoising passes and measured ms per env step)."""
    ref = next((s for s in summary if s.get("reference") == label(_key(s))), None)
    if ref is None or not ref.get("passes_per_env_step"):
        return None
    equal = [s for s in summary if "diff_ci95" in s and s["diff_ci95"][1] >= EQUAL_SUCCESS_MARGIN and s.get("passes_per_env_step")]
    best = min(equal, key=lambda s: (s["passes_per_env_step"], s.get("ms_per_env_step") or math.inf))
    ms_ref, ms_best = ref.get("ms_per_env_step"), best.get("ms_per_env_step")
    return {
        "reference": label(_key(ref)), "cell": label(_key(best)), "success": best["success_rate"],
        "reference_success": ref["success_rate"], "diff": best["diff_vs_reference"], "diff_ci95": best["diff_ci95"],
        "passes_per_env_step": best["passes_per_env_step"], "reference_passes_per_env_step": ref["passes_per_env_step"],
        "speedup_passes": ref["passes_per_env_step"] / best["passes_per_env_step"],
        "speedup_ms": ms_ref / ms_best if ms_ref and ms_best else None, "seeds": best["seeds"],
    }  # fmt: skip


def _key(s: dict) -> Cell:
    return (s["name"], s["num_steps"], s.get("n_action_steps"))


def speedup_line(speedup: dict[str, Any] | None) -> str:
    """The headline, with what it rests on."""
    if speedup is None:
        return "speed-up at equal success: not measured (no closed-loop reference cell)."
    low, high = speedup["diff_ci95"]
    ms = f", {speedup['speedup_ms']:.1f}x in measured ms per env step" if speedup["speedup_ms"] else ""
    return (
        f"speed-up at equal success: {speedup['speedup_passes']:.2f}x fewer denoising passes per env step{ms}: "
        f"{speedup['cell']} ({100 * speedup['success']:.1f}% success, {speedup['passes_per_env_step']:.3f} passes per "
        f"env step) vs the teacher {speedup['reference']} ({100 * speedup['reference_success']:.1f}%, "
        f"{speedup['reference_passes_per_env_step']:.3f}); paired difference {100 * speedup['diff']:+.1f} points "
        f"(95% CI {100 * low:+.1f} to {100 * high:+.1f}; 'equal' = the CI reaches {100 * EQUAL_SUCCESS_MARGIN:+.0f} "
        f"point or above), {speedup['seeds']} training seed(s)."
    )


def per_task(rows: list[EvalRow], summary: list[dict], tasks: list[str]) -> list[dict]:
    """Per (stage, step count, task): outcome rates, left share and side switches, averaged over seeds."""
    table = []
    for s in summary:
        cell = [r for r in rows if cell_of(r) == _key(s) and "per_task" in r]
        for task in tasks if cell else []:
            stats = [r["per_task"][task] for r in cell]
            table.append({"name": s["name"], "num_steps": s["num_steps"], "n_action_steps": s.get("n_action_steps"), "task": task,
                          **{key: _mean(stats, key) for key in (*OUTCOME_RATES, "left_share", "side_switches")}})  # fmt: skip
    return table


def targets(summary: list[dict], wanted: TargetsConfig | None = None) -> list[dict]:
    """The benchmark's targets (`wanted`, the recipe's `eval.targets`; None: the defaults), measured: what,
    target, measured, met. Step-count targets compare cells that re-plan as often as the reference."""
    wanted = wanted or TargetsConfig()
    closed = [s for s in summary if s.get("success_rate") is not None]
    ref = next((s for s in closed if label(_key(s)) == s.get("reference")), None)
    same = [s for s in closed if ref is not None and s.get("n_action_steps") == ref.get("n_action_steps")]
    out = []
    if ref is not None:
        out.append({"what": f"{ref['name']} at {ref['num_steps']} steps: success", "target": f">= {_pct(wanted.min_reference_success)}",
                    "measured": _pct(ref["success_rate"]), "met": ref["success_rate"] >= wanted.min_reference_success})  # fmt: skip
    for num_steps, gap in ((1, wanted.min_gap_1_step), (2, wanted.min_gap_2_steps)):
        cells = [s for s in same if s["num_steps"] == num_steps and "diff_vs_reference" in s]
        if ref is not None and cells:
            best = max(cells, key=lambda s: s["success_rate"])
            low, high = best["diff_ci95"]
            out.append({"what": f"best at {num_steps} step{'s' * (num_steps > 1)} ({best['name']}) - reference",
                        "target": f">= {100 * gap:+.1f} points", "met": best["diff_vs_reference"] >= gap,
                        "measured": f"{100 * best['diff_vs_reference']:+.1f} points (paired 95% CI "
                                    f"{100 * low:+.1f} to {100 * high:+.1f}; "
                                    f"{'CI above the target' if low >= gap else 'CI includes values below the target'})"})  # fmt: skip
    one_step = [s for s in same if s["num_steps"] == 1]
    if one_step:
        best = max(one_step, key=lambda s: s["success_rate"])
        out.append({"what": f"collisions at 1 step ({best['name']})", "target": f"<= {_pct(wanted.max_collisions_1_step)}",
                    "measured": _pct(best["collision_rate"]), "met": best["collision_rate"] <= wanted.max_collisions_1_step})  # fmt: skip
        out.append({"what": f"timeouts at 1 step ({best['name']})", "target": f"<= {_pct(wanted.max_timeouts_1_step)}",
                    "measured": _pct(best["timeout_rate"]), "met": best["timeout_rate"] <= wanted.max_timeouts_1_step})  # fmt: skip
        low, high = wanted.left_share
        out.append({"what": f"left share at 1 step ({best['name']})", "target": f"{_pct(low)}-{_pct(high)}",
                    "measured": _pct(best["left_share"]), "met": low <= best["left_share"] <= high})  # fmt: skip
    speedup = speedup_at_equal_success(summary)
    if speedup is not None:  # two decimals: 2 vs 10 steps measures e.g. 4.98x, which "5.0x" would hide
        out.append({"what": f"speed-up at equal success ({speedup['cell']})", "target": f">= {wanted.min_speedup:g}x",
                    "measured": f"{speedup['speedup_passes']:.2f}x", "met": speedup["speedup_passes"] >= wanted.min_speedup})  # fmt: skip
    return out


def format_summary(summary: list[dict]) -> str:
    """A plain-text table (what the pipeline prints at the end)."""
    header = ["stage", "steps", "replan", "success", "95% CI", "vs ref (paired CI)", "collisions", "timeouts",
              "miss closest/final cm", "passes/env step", "ms/env step", "err vs 10"]  # fmt: skip
    lines = [header]
    for s in summary:
        lines.append([
            s["name"], str(s["num_steps"]), _replan(s), _pct(s.get("success_rate")), _ci(s.get("success_ci95")), _diff(s),
            _pct(s.get("collision_rate")), _pct(s.get("timeout_rate")), _miss(s), _num(s.get("passes_per_env_step"), 3),
            _num(s.get("ms_per_env_step"), 3), _num(s["error_vs_10step"]),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def _replan(s: dict) -> str:
    n = s.get("n_action_steps")
    return "" if n is None else f"{n}{'*' if n == s.get('own_n_action_steps') else ''}"


def _miss(s: dict) -> str:
    closest, final = s.get("miss_closest_goal_m"), s.get("miss_final_goal_m")
    return "" if closest is None or final is None else f"{100 * closest:.1f}/{100 * final:.1f}"


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


def markdown(summary: list[dict], cfg: Any, rows: list[EvalRow]) -> str:
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
        " chunk, batch 1, CPU. A distilled student is evaluated only at the step count it was trained for (k) and the counts dividing k.",
        "",
        "Replan: actions executed per chunk before the next is predicted (* = the policy's own n_action_steps);"
        " passes / env step: denoising passes (steps x chunks / env steps), the compute a policy spends per action;"
        " ms / env step: the measured ms per chunk x chunks / env steps; of which prefix: the ms per chunk spent"
        " encoding the observation once (a VLA's VLM prefix), which fewer steps do not remove.",
        "",
        speedup_line(speedup_at_equal_success(summary)),
        "",
        "| stage | steps | replan | success | 95% CI | vs ref, points (paired 95% CI) | collisions | stalls | timeouts "
        "| left share | side switches | straightness | err vs 10 | err vs expert | ms/chunk | of which prefix | passes/env step "
        "| ms/env step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['name']} | {s['num_steps']} | {_replan(s)} | {_pct(s.get('success_rate'))} | {_ci(s.get('success_ci95'))} | {_diff(s)} | "
            f"{_pct(s.get('collision_rate'))} | {_pct(s.get('stall_rate'))} | {_pct(s.get('timeout_rate'))} | "
            f"{_pct(s.get('left_share'))} | {_num(s.get('side_switches'), 2)} | {_num(s['straightness'])} | {_num(s['error_vs_10step'])} | "
            f"{_num(s['error_vs_data'])} | {s['latency_ms']:.2f} | {_num(s.get('prefix_ms'), 2)} | "
            f"{_num(s.get('passes_per_env_step'), 3)} | {_num(s.get('ms_per_env_step'), 3)} |"
        )
    lines += ["", *diagnostics_table(summary)]
    checks = targets(summary, cfg.eval.targets)
    if checks:
        lines += ["", "Targets:", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
        lines += [f"| {c['what']} | {c['target']} | {c['measured']} | {'yes' if c['met'] else 'no'} |" for c in checks]
    tasks = per_task(rows, summary, list(cfg.data.tasks))
    if tasks:
        lines += ["", "By task (mean over seeds):", "",
                  "| stage | steps | replan | task | success | collisions | stalls | timeouts | left share | side switches |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [_task_line(t) for t in tasks]
    lines += ["", "![success, error and outcomes by step count](report.png)", ""]
    return "\n".join(lines)


def _task_line(t: dict) -> str:
    replan = "" if t.get("n_action_steps") is None else str(t["n_action_steps"])
    return (f"| {t['name']} | {t['num_steps']} | {replan} | {t['task']} | {_pct(t['success_rate'])} | {_pct(t['collision_rate'])} | "
            f"{_pct(t['stall_rate'])} | {_pct(t['timeout_rate'])} | {_pct(t['left_share'])} | {_num(t['side_switches'], 2)} |")  # fmt: skip


def diagnostics_table(summary: list[dict]) -> list[str]:
    """Markdown lines: what tells slow from lost, per cell (see `hf_reflow/evaluation/diagnostics.py`)."""
    cells = [s for s in summary if s.get("hand_speed") is not None]
    if not cells:
        return []
    lines = [
        "Diagnostics (failures without a collision = misses; distances are Meta-World's own success distance,"
        " success <= 5 cm, except the hand's distance to the goal it observes (reach: success is measured at the"
        " fingertips, ~4.5 cm below the hand); speed relative to the reference on the same episodes and noise):",
        "",
        "| stage | steps | replan | misses: closest cm | misses: hand closest to the observed goal cm | misses: final cm"
        " | misses: steps within 10 cm | misses: reversals near goal | hand speed vs ref | chunk jump | action change"
        " inside a chunk | collisions: where (0 start, 1 target) | chunk size vs expert |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in cells:
        keys = ("miss_closest_goal_m", "miss_closest_hand_goal_m", "miss_final_goal_m")
        cm = {k: None if s.get(k) is None else 100 * s[k] for k in keys}
        lines.append(
            f"| {s['name']} | {s['num_steps']} | {_replan(s)} | {_num(cm['miss_closest_goal_m'], 1)} | "
            f"{_num(cm['miss_closest_hand_goal_m'], 1)} | {_num(cm['miss_final_goal_m'], 1)} | {_num(s.get('miss_near_goal_steps'), 1)} | "
            f"{_num(s.get('miss_near_goal_reversals'), 1)} | {_num(s.get('hand_speed_vs_reference'), 2)} | "
            f"{_num(s.get('chunk_jump'), 3)} | {_num(s.get('action_change'), 3)} | {_num(s.get('collision_progress'), 2)} | "
            f"{_num(s.get('magnitude_vs_data'), 2)} |"
        )
    return lines


def plot(summary: list[dict], path: Path) -> None:
    """Success vs step count (with CIs), error vs the 10-step chunk, and outcome shares per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_success, ax_error, ax_outcome) = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, n in dict.fromkeys((s["name"], s.get("n_action_steps")) for s in summary):
        cells = [s for s in summary if s["name"] == name and s.get("n_action_steps") == n]
        name = name if n is None or n == cells[0].get("own_n_action_steps") else f"{name}, every {n}"
        step_counts = [s["num_steps"] for s in cells]
        if cells[0].get("success_rate") is not None:
            success = np.array([s["success_rate"] for s in cells])
            ci = np.array([s["success_ci95"] for s in cells]).T
            yerr = np.clip([success - ci[0], ci[1] - success], 0.0, None)  # intervals contain the estimate
            ax_success.errorbar(step_counts, success, yerr=yerr, marker="o", capsize=3, label=name)
        ax_error.plot(step_counts, [max(s["error_vs_10step"], 1e-8) for s in cells], marker="o", label=name)
    ax_success.set(xscale="log", xlabel="Euler steps", ylabel="closed-loop success", ylim=(0, 1.02))
    ax_error.set(xscale="log", yscale="log", xlabel="Euler steps", ylabel="MSE vs own 10-step chunk")
    steps = sorted({s["num_steps"] for s in summary})
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
    labels = [f"{s['name']}\n{s['num_steps']} st{'' if s.get('n_action_steps') is None else ' /' + str(s['n_action_steps'])}" for s in cells]
    bottom = np.zeros(len(cells))
    for key in OUTCOME_RATES:
        share = np.array([s.get(key) or 0.0 for s in cells])
        ax.bar(range(len(cells)), share, bottom=bottom, label=key.removesuffix("_rate"))
        bottom += share
    ax.set_xticks(range(len(cells)), labels=labels, fontsize=6, rotation=90)
    ax.set(ylabel="share of episodes", ylim=(0, 1.02))
    ax.legend(fontsize=7)


def write(out: Path, cfg: Any, rows: list[EvalRow], *, log: Any = print) -> dict[str, Any]:
    """Write `results.json` and `report.md`, then `report.png`, into `out`; return the results dict.

    Results are written first; a plotting failure is reported in one line and loses nothing.
    """
    summary = summarise(rows)
    results = {"recipe": dataclasses.asdict(cfg), "summary": summary, "per_task": per_task(rows, summary, list(cfg.data.tasks)),
               "targets": targets(summary, cfg.eval.targets), "speedup_at_equal_success": speedup_at_equal_success(summary), "rows": rows}  # fmt: skip
    write_text(out / "results.json", json.dumps(results, indent=2, default=float))
    write_text(out / "report.md", markdown(summary, cfg, rows))
    try:
        plot(summary, out / "report.png")
    except Exception as e:  # a figure must never cost a finished run its results
        log(f"warning: could not draw {out / 'report.png'} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "results.json and report.md are complete")  # fmt: skip
    return results
