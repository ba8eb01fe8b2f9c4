"""What tells a slow episode from a lost one: per-episode diagnostics of a closed-loop rollout.

All are pure functions of what the rollout recorded, one entry per env step:
- `goal_distance` (T,): Meta-World's own success distance after each step (`info["obj_to_target"]`: the
  gripper centre to the goal for reach, the object to the goal for push; success is <= 5 cm for both);
- `hand` (T, 3): the hand position the policy saw;
- `hand_goal_distance` (T,), optional: that hand to the goal the policy saw (obs[36:39]) after each step. For
  reach, Meta-World measures success at the fingertip centre, ~4.5 cm below the hand, while the stock expert
  steers the hand onto the goal: a miss whose hand came within 1-2 cm of the goal (`closest_hand_goal_m`) but
  whose `closest_goal_m` stayed above 5 cm stopped on the goal it saw, short of where success is measured;
- `actions` (T, A): the actions executed; a new chunk starts every `stride` (= n_action_steps) steps.

A near miss that then drifts away shows as a small `closest_goal_m`, a larger `final_goal_m` and few
`near_goal_steps`; a slow policy as a low `hand_speed` relative to the teacher on the same episode; a
policy whose chunks disagree with each other as a `chunk_jump` well above `action_change` (the step-to-step
change inside a chunk); hovering back and forth at the goal as `near_goal_reversals`.
"""

from __future__ import annotations

import math

import numpy as np

SUCCESS_TOLERANCE_M = 0.05  # Meta-World's success radius for reach and push (other tasks use their own)
NEAR_GOAL_FACTOR = 2.0  # "near the goal": within 2x the success tolerance


def episode_diagnostics(goal_distance: np.ndarray, hand: np.ndarray, actions: np.ndarray, *, stride: int,
                        tolerance: float = SUCCESS_TOLERANCE_M,
                        hand_goal_distance: np.ndarray | None = None) -> dict[str, float]:  # fmt: skip
    """The diagnostics of one episode (see the module docstring); NaN where a quantity is undefined."""
    hand_goal = np.asarray([] if hand_goal_distance is None else hand_goal_distance, dtype=np.float64)
    hand_goal = hand_goal[np.isfinite(hand_goal)]
    goal_distance = np.asarray(goal_distance, dtype=np.float64)
    hand, actions = np.asarray(hand, dtype=np.float64), np.asarray(actions, dtype=np.float64)
    finite = goal_distance[np.isfinite(goal_distance)]
    near = goal_distance <= NEAR_GOAL_FACTOR * tolerance
    return {
        "closest_goal_m": float(finite.min()) if finite.size else math.nan,
        "closest_hand_goal_m": float(hand_goal.min()) if hand_goal.size else math.nan,
        "final_goal_m": float(finite[-1]) if finite.size else math.nan,
        "near_goal_steps": int(np.count_nonzero(near)),
        "near_goal_reversals": reversals(goal_distance, near),
        "hand_speed": float(np.linalg.norm(np.diff(hand, axis=0), axis=1).mean()) if len(hand) > 1 else math.nan,
        **chunk_jump(actions, stride=stride),
    }


def reversals(distance: np.ndarray, mask: np.ndarray) -> int:
    """How often the distance switches between shrinking and growing while `mask` holds (oscillation).

    distance, mask: (T,); changes below 0.1 mm count as neither.
    """
    change = np.diff(np.asarray(distance, dtype=np.float64))
    keep = np.asarray(mask[1:], dtype=bool) & (np.abs(change) > 1e-4)
    signs = np.sign(change[keep])
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def chunk_jump(actions: np.ndarray, *, stride: int) -> dict[str, float]:
    """Mean action change at chunk boundaries (`chunk_jump`) and inside chunks (`action_change`).

    actions: (T, A); step t starts a chunk when t % stride == 0.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if len(actions) < 2:
        return {"chunk_jump": math.nan, "action_change": math.nan}
    change = np.linalg.norm(np.diff(actions, axis=0), axis=1)  # change[t - 1] = |a_t - a_{t-1}|
    boundary = (np.arange(1, len(actions)) % stride) == 0
    return {
        "chunk_jump": float(change[boundary].mean()) if boundary.any() else math.nan,
        "action_change": float(change[~boundary].mean()) if (~boundary).any() else math.nan,
    }
