"""Matplotlib figures of the Space: action chunks, ODE paths in 2-D, and a closed-loop trajectory."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # figures made without pyplot are not kept in a global registry
from matplotlib.patches import Circle

from hf_reflow.evaluation.compare import REFERENCE_STEPS, PolicyComparison, RolloutResult, project_paths

EXPERT_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.5, "label": "expert"}
REFERENCE_STYLE = {"color": "0.6", "linewidth": 4, "alpha": 0.6, "label": f"{REFERENCE_STEPS}-step reference"}


def _step_colors(step_counts: list[int]) -> dict[int, tuple]:
    cmap = colormaps["plasma"]
    return {steps: cmap(i / max(1, len(step_counts) - 1) * 0.85) for i, steps in enumerate(step_counts)}


def chunk_figure(comparisons: list[PolicyComparison], expert: np.ndarray, step_counts: list[int]) -> Figure:
    """Rows = policies, columns = action dims: each step count's chunk, the expert and the 10-step reference."""
    dims = comparisons[0].reference.action.shape[1]
    fig = Figure(figsize=(3.2 * dims, 2.4 * len(comparisons) + 0.4))
    axes = fig.subplots(len(comparisons), dims, squeeze=False, sharex=True)
    colors = _step_colors(step_counts)
    for row, comparison in zip(axes, comparisons, strict=True):
        for dim, ax in enumerate(row):
            ax.plot(comparison.reference.action[:, dim], **REFERENCE_STYLE)
            ax.plot(expert[:, dim], **EXPERT_STYLE)
            for run in comparison.runs:
                ax.plot(run.action[:, dim], color=colors[run.num_steps], marker=".", label=f"{run.num_steps} step(s)")
            ax.set_title(f"{comparison.name} · action[{dim}]", fontsize=9)
        row[0].set_ylabel("action")
    for ax in axes[-1]:
        ax.set_xlabel("chunk time step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def path_figure(comparisons: list[PolicyComparison], step_counts: list[int]) -> Figure:
    """One panel per policy: x_t at every solver step from the noise (0, 0) to the action, in 2-D."""
    fig = Figure(figsize=(4.2 * len(comparisons), 3.8))
    axes = fig.subplots(1, len(comparisons), squeeze=False)
    colors = _step_colors(step_counts)
    for ax, comparison in zip(axes[0], comparisons, strict=True):
        projected = project_paths(comparison)
        ax.plot(*projected[REFERENCE_STEPS].T, **REFERENCE_STYLE)
        for steps in step_counts:
            ax.plot(
                *projected[steps].T, color=colors[steps], marker="o", markersize=4, label=f"{steps} step(s)"
            )
        ax.scatter([0], [0], color="black", zorder=5, label="noise (t = 1)")
        ax.set_title(f"{comparison.name} ({comparison.stage})", fontsize=10)
        ax.set_xlabel("along noise → 10-step action")
        ax.axhline(0, color="0.85", linewidth=0.8, zorder=0)
    axes[0][0].set_ylabel("deviation from the straight line")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def rollout_figure(result: RolloutResult, title: str) -> Figure:
    """The hand's xy path, the obstacle and the first target of one closed-loop episode."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.add_patch(Circle(tuple(result.obstacle_xy), result.obstacle_radius, color="tab:blue", alpha=0.35))
    ax.plot(*result.hand_xy.T, color="tab:orange", marker=".", markersize=3, label="hand")
    ax.scatter(*result.hand_xy[0], color="black", label="start", zorder=5)
    ax.scatter(*result.target_xy, color="tab:green", marker="*", s=150, label="target", zorder=5)
    outcome = "success" if result.success else ("collision" if result.collided else "no success")
    ax.set_title(f"{title}: {outcome} after {result.steps} steps", fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
