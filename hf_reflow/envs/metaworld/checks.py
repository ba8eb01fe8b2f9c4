"""Argument checks shared by the Meta-World modules: ints in range, xy points, fixed-size vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from hf_reflow.errors import ConfigError


def check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """`value` as an int, or a ConfigError naming `name` when it is not an int in [low, high].

    Args:
        name: the argument's name, for the message.
        value: what was passed; bools are refused although they are ints.
        low: the smallest allowed value.
        high: the largest allowed value (None: no upper bound).

    Returns:
        `value` converted to a Python int.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an int, received {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be {bound}, received {value}.")
    return int(value)


def as_xy(name: str, value: Any) -> np.ndarray:
    """A float64 (2,) copy of an xy point; a 3-d point is accepted and its z dropped."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in ((2,), (3,)) or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be a finite xy (or xyz) point, received shape {arr.shape}: {arr}.")
    return arr[:2].copy()


def check_vector(name: str, value: Any, size: int) -> np.ndarray:
    """`value` as a float64 array, or a ConfigError unless it is a finite (size,) vector."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be a finite ({size},) vector, received shape {arr.shape}.")
    return arr
