"""The columns of an evaluation row, named once: the typed `EvalRow`, each annotation saying what its column means.

A row is one checkpoint at one step count (and one re-planning interval): what `hf-reflow eval --output=`
writes, the pipeline's `results.json` holds under `rows`, the report averages over seeds, the console
prints and a model card files under `model-index`. Each module that writes or reads rows takes the names
from here (publishing cannot import evaluation, so they live at the bottom layer).
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, TypedDict


class EvalRow(TypedDict, total=False):
    """One evaluation row: each column's type and, in its annotation, what it means (`COLUMNS`)."""

    # Which checkpoint a row measures and how it was run.
    checkpoint: Annotated[str, "the checkpoint evaluated (a folder or a Hub id)"]
    seed: Annotated[int, "the training seed (pipeline)"]
    name: Annotated[str, "the stage's label, e.g. 2-RF distilled (pipeline)"]
    run: Annotated[str, "the stage's run folder, e.g. 2rf-distill (pipeline)"]
    stage: Annotated[str, "flow_matching, reflow, distill, redistill, shortcut or meanflow"]
    k: Annotated[int | None, "the k of the k-RF"]
    num_steps: Annotated[int, "denoising (Euler) steps per action chunk"]
    n_action_steps: Annotated[int, "actions executed per chunk before re-planning"]
    policy_n_action_steps: Annotated[int, "the policy's own n_action_steps"]
    env_type: Annotated[str, "the LeRobot env type the episodes ran in (its `lerobot-eval --env.type`)"]
    env_mode: Annotated[str, "that env's mode"]
    first_episode_seed: Annotated[int, "the first episode's seed (lerobot-eval's --seed)"]
    # Offline, on held-out observations (`evaluation/offline.py`).
    straightness: Annotated[float, "Liu et al.'s straightness of the sampled path: 0 for a straight line"]
    error_vs_10step: Annotated[float, "mean squared difference of the chunk from the same noise's 10-step chunk"]
    error_vs_data: Annotated[float, "mean squared difference of the chunk from the demonstration's own chunk (normalised)"]
    magnitude_vs_data: Annotated[float, "mean action norm of the chunk over the demonstration's (below 1: shrunk toward the mean)"]
    latency_ms: Annotated[float, "milliseconds per chunk on this machine"]
    prefix_ms: Annotated[float, "of latency_ms, milliseconds encoding the observation once per chunk (a VLA's VLM prefix)"]
    latency_device: Annotated[str, "the machine latency_ms was measured on (CPU model and threads, or the GPU's name)"]
    # Closed loop (`evaluation/closed_loop.py`, `evaluation/lerobot_envs.py`); `per_task` holds them per task.
    episodes: Annotated[int, "episodes run"]
    successes: Annotated[int, "episodes that succeeded"]
    success_rate: Annotated[float, "share of episodes that succeeded"]
    collision_rate: Annotated[float, "share that touched the obstacle"]
    stall_rate: Annotated[float, "share that ended with the hand nearly still"]
    timeout_rate: Annotated[float, "share still moving when the horizon ended"]
    left_share: Annotated[float | None, "share of episodes whose detour went left"]
    side_switches: Annotated[float | None, "times per episode the hand changed side of the start-target line"]
    mean_steps: Annotated[float | None, "env steps of a successful episode"]
    chunks: Annotated[int, "chunks predicted"]
    env_steps: Annotated[int, "env steps run"]
    passes_per_env_step: Annotated[float, "denoising passes per env step (steps x chunks / env steps)"]
    ms_per_env_step: Annotated[float | None, "measured milliseconds of denoising per env step"]
    hand_speed: Annotated[float | None, "mean hand displacement per env step (m)"]
    chunk_jump: Annotated[float | None, "action change at chunk boundaries"]
    action_change: Annotated[float | None, "action change inside a chunk"]
    collision_progress: Annotated[float | None, "where along the start-target line a collision happened (0 start, 1 target)"]
    misses: Annotated[int, "failed episodes without a collision"]
    miss_closest_goal_m: Annotated[float | None, "failed episodes: closest distance to the goal (m)"]
    miss_closest_hand_goal_m: Annotated[float | None, "failed episodes: closest hand-to-goal distance (m)"]
    miss_final_goal_m: Annotated[float | None, "failed episodes: final distance to the goal (m)"]
    miss_near_goal_steps: Annotated[float | None, "failed episodes: steps within 2x the success tolerance"]
    miss_near_goal_reversals: Annotated[float | None, "failed episodes: direction reversals near the goal"]
    per_task: Annotated[dict[str, EvalRow], "the closed-loop columns per task, with the per-episode lists below"]
    episode_seeds: Annotated[list[int], "per task: each episode's seed"]
    episode_success: Annotated[list[bool], "per task: each episode's success"]
    episode_hand_speed: Annotated[list[float | None], "per task: each episode's hand speed"]


# column -> what it means, in EvalRow's order (the report, console, cards and tests read the names here)
COLUMNS: dict[str, str] = {
    name: hint.__metadata__[0] for name, hint in typing.get_type_hints(EvalRow, include_extras=True).items()
}

OUTCOME_RATES = ("success_rate", "collision_rate", "stall_rate", "timeout_rate")
# What the report averages over seeds (with CIs for the rates).
SUMMARY_METRICS = (*OUTCOME_RATES, "left_share", "side_switches", "mean_steps", "straightness", "error_vs_10step",
                   "error_vs_data", "latency_ms", "prefix_ms", "passes_per_env_step", "ms_per_env_step", "hand_speed", "chunk_jump",
                   "action_change", "miss_closest_goal_m", "miss_closest_hand_goal_m", "miss_final_goal_m",
                   "miss_near_goal_steps", "miss_near_goal_reversals", "collision_progress", "magnitude_vs_data")  # fmt: skip
# The console table of `hf-reflow eval` (columns no row has are left out).
CONSOLE_COLUMNS = ("checkpoint", "k", "num_steps", "n_action_steps", "success_rate", "collision_rate", "timeout_rate",
                   "left_share", "miss_closest_goal_m", "miss_final_goal_m", "chunk_jump", "passes_per_env_step",
                   "straightness", "error_vs_10step", "latency_ms")  # fmt: skip
# A model card's evaluation table: column -> its label. Its `model-index` files success_rate under the
# environment it was measured in and the offline metrics under a Hub dataset; latency (machine-bound) never.
CARD_METRICS = {
    "success_rate": "success rate",
    "straightness": "straightness",
    "error_vs_10step": "error vs 10 steps",
    "latency_ms": "latency (ms)",
}


# Columns renamed since rows were first written: old name -> new. Rows on disk (results.json, `--output=`
# files, the pipeline's evaluation caches) keep their old names; every reader passes them through `upgrade_row`.
RENAMED_COLUMNS = {"nfe": "num_steps"}  # one name for the step count (the guide's and LeRobot's `num_steps`)


def upgrade_row(row: dict) -> EvalRow:
    """A row as written by any earlier version, with today's column names (`RENAMED_COLUMNS`)."""
    upgraded = dict(row)
    for old, new in RENAMED_COLUMNS.items():
        if old in upgraded and new not in upgraded:  # a row holding both (a Heun table's nfe) keeps both
            upgraded[new] = upgraded.pop(old)
    return upgraded  # type: ignore[return-value]


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    low = 0.0 if successes == 0 else centre - half  # exact at the ends; elsewhere rounding can
    high = 1.0 if successes == trials else centre + half  # put a bound a hair past p (1 - 1e-16 at 50/50)
    return containing(p, low, high)


def containing(estimate: float, low: float, high: float) -> tuple[float, float]:
    """(low, high) clipped to [0, 1] and widened to contain `estimate`, so error bars are never negative."""
    return (max(0.0, min(low, estimate)), min(1.0, max(high, estimate)))
