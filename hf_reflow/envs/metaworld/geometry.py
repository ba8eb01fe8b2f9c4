"""Plane geometry of the detour: obstacle centre, via point, collision and side of the start->target line."""

from __future__ import annotations

from typing import Any

import numpy as np

from hf_reflow.envs.metaworld.checks import as_xy
from hf_reflow.envs.metaworld.tasks import DETOUR_OFFSET_M, LEFT, OBSTACLE_RADIUS_M, RIGHT
from hf_reflow.errors import ConfigError


def _line_frame(start_xy: np.ndarray, target_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction start -> target and its left normal (direction rotated +90 degrees)."""
    delta = target_xy - start_xy
    length = float(np.linalg.norm(delta))
    if length < 1e-6:
        raise ConfigError(
            f"Start {start_xy} and target {target_xy} coincide, so 'left' and 'right' are undefined; "
            "the hand must start away from its first target."
        )
    direction = delta / length
    return direction, np.array([-direction[1], direction[0]])


def obstacle_centre(hand_start_xy: Any, target_xy: Any) -> np.ndarray:
    """The obstacle centre: midpoint of the straight xy line from the hand's start to its target."""
    return (as_xy("hand_start_xy", hand_start_xy) + as_xy("target_xy", target_xy)) / 2


def detour_via_point(
    hand_start_xy: Any, target_xy: Any, side: int, *, offset: float = DETOUR_OFFSET_M
) -> np.ndarray:
    """The xy via point `offset` metres left (side 0) or right (side 1) of the start->target midpoint.

    Left/right are as seen facing from the start towards the target, perpendicular to that line.
    """
    if side not in (LEFT, RIGHT):
        raise ConfigError(f"side must be {LEFT} (left) or {RIGHT} (right), received {side!r}.")
    start, target = as_xy("hand_start_xy", hand_start_xy), as_xy("target_xy", target_xy)
    _, left_normal = _line_frame(start, target)
    sign = 1.0 if side == LEFT else -1.0
    return (start + target) / 2 + sign * offset * left_normal


def obstacle_collides(hand_xy: Any, centre_xy: Any, radius: float = OBSTACLE_RADIUS_M) -> bool:
    """True when the hand is inside the vertical cylinder (xy distance strictly below `radius`)."""
    if not radius > 0:
        raise ConfigError(f"radius must be > 0 metres, received {radius}.")
    distance = np.linalg.norm(as_xy("hand_xy", hand_xy) - as_xy("centre_xy", centre_xy))
    return bool(distance < radius)


def side_of_line(start_xy: Any, target_xy: Any, point_xy: Any) -> int:
    """LEFT (0) if `point_xy` lies left of the directed line start -> target, else RIGHT (1).

    Uses the sign of the 2-d cross product (target - start) x (point - start); a point exactly on
    the line counts as right.
    """
    start, target = as_xy("start_xy", start_xy), as_xy("target_xy", target_xy)
    d, p = target - start, as_xy("point_xy", point_xy) - start
    return LEFT if d[0] * p[1] - d[1] * p[0] > 0 else RIGHT
