"""What tells a slow episode from a lost one: per-episode diagnostics of a closed-loop rollout, and the
failure taxonomy (success, collision, stall, timeout; side switches; where a collision happened).

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


# Failure taxonomy (why an episode that is not a success failed).
OUTCOMES: tuple[str, ...] = ("success", "collision", "stall", "timeout")
STALL_WINDOW = 20  # env steps (0.25 s at 80 Hz): a failed episode whose hand stayed ...
STALL_RADIUS_M = 0.01  # ... within 1 cm of its final position over that window stalled
SIDE_MARGIN_M = 0.01  # a hand closer than this to the start -> target line is on neither side


def classify_episode(hand_xyz: np.ndarray, *, success: bool, collided: bool) -> str:
    """success, collision, stall (hand nearly still for the last STALL_WINDOW steps) or timeout (moving).

    Args:
        hand_xyz: (T, 3) hand positions the policy saw, one per env step.
    """
    if success:
        return "success"
    if collided:
        return "collision"
    tail = np.asarray(hand_xyz, dtype=np.float64)[-STALL_WINDOW:]
    if len(tail) >= STALL_WINDOW and float(np.linalg.norm(tail - tail[-1], axis=1).max()) < STALL_RADIUS_M:
        return "stall"
    return "timeout"


def side_switches(hand_xy: np.ndarray, start_xy: np.ndarray, target_xy: np.ndarray, *, stride: int) -> int:
    """How often the hand changes side of the start -> target line from one chunk to the next.

    The hand is sampled at each chunk start (every `stride` steps) while it is between start and target
    along the line and more than SIDE_MARGIN_M off it; a mode-averaging or mode-hopping policy switches,
    a committed one does not. hand_xy: (T, 2).
    """
    hand_xy = np.asarray(hand_xy, dtype=np.float64)[::stride, :2]
    start, line = np.asarray(start_xy, dtype=np.float64), np.asarray(target_xy, dtype=np.float64) - start_xy
    length = float(np.linalg.norm(line))
    if length < 1e-6:
        return 0
    direction = line / length
    offset = hand_xy - start  # (T', 2)
    along = offset @ direction
    across = offset[:, 0] * direction[1] * -1 + offset[:, 1] * direction[0]  # left of the line > 0
    sides = np.sign(across[(along > 0) & (along < length) & (np.abs(across) > SIDE_MARGIN_M)])
    return int(np.count_nonzero(sides[1:] != sides[:-1]))


def detour_progress(hand_xy: np.ndarray, start_xy: np.ndarray, target_xy: np.ndarray) -> float:
    """How far along the start -> target line the hand is (0 at the start, 1 at the target), e.g. where a
    collision happened: early (the chunk committed to no side) or late (cutting back to the target too soon)."""
    line = np.asarray(target_xy, dtype=np.float64) - start_xy
    length = float(np.linalg.norm(line))
    return float((np.asarray(hand_xy, dtype=np.float64) - start_xy) @ line / length**2) if length > 1e-9 else 0.0
