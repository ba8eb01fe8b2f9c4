"""The task catalogue: names, constants, first targets, hand starts, step limits, prompts and their checks."""

from __future__ import annotations

from typing import Literal

import metaworld
import numpy as np
from metaworld.policies import ENV_POLICY_MAP

from hf_reflow.envs.shapes import METAWORLD_ACTION_DIM, METAWORLD_STATE_DIM
from hf_reflow.errors import ConfigError

Mode = Literal["multimodal", "scripted"]
MODES: tuple[str, ...] = ("multimodal", "scripted")
TASKS_MULTIMODAL: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "button-press-topdown-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "faucet-close-v3",
    "faucet-open-v3",
    "plate-slide-v3",
    "sweep-into-v3",
    "sweep-v3",
    "window-open-v3",
)

LEFT, RIGHT = 0, 1
SIDE_NAMES: tuple[str, str] = ("left", "right")

DEMO_LAYOUT_SEED = 0
EVAL_LAYOUT_SEED = 1000

DETOUR_OFFSET_M = 0.10  # via point distance from the obstacle centre, perpendicular to the line
OBSTACLE_RADIUS_M = 0.04  # xy radius of the virtual cylinder

# Longest multimodal expert episode measured over 500 episodes per task (5 layout sets x 100 seeds)
# was 102 steps (reach; push 98); 120 keeps expert success at 100 % with ~20 % margin while keeping
# episodes, and failed policy rollouts, short. The other detour tasks have their own horizon
# (`_MAX_STEPS`, `default_max_steps`); tasks without one (scripted mode only) may need more.
DEFAULT_MAX_STEPS = 120
MAX_ENV_STEPS = 500  # Meta-World raises past its own horizon
DEFAULT_FPS = 80  # Meta-World control period: frame_skip 5 x timestep 0.0025 s = 0.0125 s
DEFAULT_IMAGE_SIZE = 96
DEFAULT_CAMERA = "corner"
DEFAULT_REPO_ID = "local/metaworld_multimodal"
STATE_DIM = METAWORLD_STATE_DIM
ACTION_DIM = METAWORLD_ACTION_DIM
OBS_DIM = 39
IMAGE_KEY = "observation.images.corner"
EPISODE_SEED_STRIDE = 1_000_000  # episode seeds of run `seed` are seed * stride + i

# Where the hand heads first, per task: (source, (dx, dy)). The source is "goal" (obs[36:38]) or
# "object" (obs[4:6], the main object/handle/button), and (dx, dy) is the fixed xy offset the stock
# scripted expert (`metaworld/policies/sawyer_<task>_policy.py`) adds to it for its first approach
# point, read from its `_desired_pos`. Tasks not listed (scripted mode only) default to the object.
_FIRST_TARGET_SOURCES: dict[str, slice] = {"goal": slice(36, 38), "object": slice(4, 6)}
_FIRST_TARGET: dict[str, tuple[str, tuple[float, float]]] = {
    "reach-v3": ("goal", (0.0, 0.0)),
    "push-v3": ("object", (0.0, 0.0)),
    # Hovers over the button (button + (0, 0, 0.1)), then presses straight down.
    "button-press-topdown-v3": ("object", (0.0, 0.0)),
    # Goes above the mug (mug + (0.01, 0, 0.25)), drops onto it, then pushes it to the goal.
    "coffee-push-v3": ("object", (0.01, 0.0)),
    # Goes above the dial's rim (dial + (0.05, 0.02), z 0.2), drops, then turns it towards -x.
    "dial-turn-v3": ("object", (0.05, 0.02)),
    # Goes above the handle's end (faucet + (+0.04 close / -0.04 open, 0, 0.13)), drops, turns it.
    "faucet-close-v3": ("object", (0.04, 0.0)),
    "faucet-open-v3": ("object", (-0.04, 0.0)),
    # Goes above the plate's front edge (plate + (0, -0.055), z + 0.13), drops, slides it into +y.
    "plate-slide-v3": ("object", (0.0, -0.055)),
    # Goes above the puck (sweep-into: puck + (-0.005, 0)), drops on it, then sweeps it to the goal.
    "sweep-into-v3": ("object", (-0.005, 0.0)),
    "sweep-v3": ("object", (0.0, 0.0)),
    # Goes above the window handle's front corner (handle + (-0.03, -0.03, 0.22)), drops, then
    # slides the window towards +x.
    "window-open-v3": ("object", (-0.03, -0.03)),
}
# Hand starts (xyz) that replace Meta-World's, in both modes. Meta-World starts these hands at
# (0, 0.6, 0.2), on top of (or within ~0.05-0.2 m of) the first target, too close for a detour, so
# they start at the arm's lower y-limit (y 0.40, where reach, coffee-push, faucet-* and window-open
# start) instead: first targets are then 0.145 m (plate-slide, whose plate never moves) to 0.27 m
# (dial-turn) away.
_HAND_START: dict[str, tuple[float, float, float]] = {
    "push-v3": (0.0, 0.40, 0.2),
    "dial-turn-v3": (0.0, 0.40, 0.2),
    "plate-slide-v3": (0.0, 0.40, 0.2),
    "sweep-into-v3": (0.0, 0.40, 0.2),
    "sweep-v3": (0.0, 0.40, 0.2),
}
# Step limit per detour task: the longest successful multimodal expert episode, measured over
# DEMO_LAYOUT_SEED and EVAL_LAYOUT_SEED x (episode seeds 0-99, and seeds covering all 50 layouts x
# both sides), + ~20 %, rounded up to a multiple of 10 (longest in brackets). reach/push keep
# DEFAULT_MAX_STEPS (see above).
_MAX_STEPS: dict[str, int] = {
    "reach-v3": DEFAULT_MAX_STEPS,
    "push-v3": DEFAULT_MAX_STEPS,
    "button-press-topdown-v3": 110,  # (89)
    "coffee-push-v3": 90,  # (74)
    "dial-turn-v3": 170,  # (135)
    "faucet-close-v3": 100,  # (79)
    "faucet-open-v3": 90,  # (74)
    "plate-slide-v3": 90,  # (75)
    "sweep-into-v3": 120,  # (97)
    "sweep-v3": 180,  # (150)
    "window-open-v3": 130,  # (108)
}
_INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the goal",
    "push-v3": "push the puck to the goal",
    "button-press-topdown-v3": "press the button from the top",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "faucet-close-v3": "close the faucet",
    "faucet-open-v3": "open the faucet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "open the window",
}
# A multimodal episode's prompt names the obstacle, so one policy can tell the two modes of a task apart.
_PROMPTS: dict[tuple[str, str], str] = {
    **{(task, "multimodal"): f"{text} around the obstacle" for task, text in _INSTRUCTIONS.items()},
    **{(task, "scripted"): text for task, text in _INSTRUCTIONS.items()},
}


def _observation_names() -> list[str]:
    """Names of Meta-World's 39 observation entries (current frame, previous frame, goal)."""
    frame = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
    for k in (1, 2):
        frame += [f"obj{k}_{a}" for a in ("x", "y", "z", "qx", "qy", "qz", "qw")]
    return frame + [f"prev_{n}" for n in frame] + ["goal_x", "goal_y", "goal_z"]


STATE_NAMES: tuple[str, ...] = (*_observation_names(), "obstacle_x", "obstacle_y")
ACTION_NAMES: tuple[str, ...] = ("hand_dx", "hand_dy", "hand_dz", "gripper_effort")


def valid_task_names(mode: Mode = "scripted") -> tuple[str, ...]:
    """Task names usable in `mode`: the detour tasks, or every MT1 task with a scripted expert."""
    check_mode(mode)
    if mode == "multimodal":
        return TASKS_MULTIMODAL
    return tuple(sorted(set(ENV_POLICY_MAP) & set(metaworld.MT1.ENV_NAMES)))


def default_max_steps(task: str) -> int:
    """The step limit used when none is given: the task's measured horizon (see `_MAX_STEPS`),
    DEFAULT_MAX_STEPS (120) for reach/push and for tasks without one."""
    check_task(task, "scripted")
    return _MAX_STEPS.get(task, DEFAULT_MAX_STEPS)


def task_prompt(task: str, mode: Mode = "multimodal") -> str:
    """The language instruction stored with every frame of a `task` episode."""
    check_task(task, mode)
    default = f"solve the {task.removesuffix('-v3').replace('-', ' ')} task"
    return _PROMPTS.get((task, mode), default)


def first_target_xy(task: str, obs: np.ndarray) -> np.ndarray:
    """Where the hand heads first (xy): the goal (reach) or the main object plus the scripted expert's
    approach offset (see `_FIRST_TARGET`; tasks not listed there: the main object)."""
    source, offset = _FIRST_TARGET.get(task, ("object", (0.0, 0.0)))
    xy = np.asarray(obs[_FIRST_TARGET_SOURCES[source]], dtype=np.float64)
    return xy + np.asarray(offset, dtype=np.float64)


def hand_start(task: str) -> np.ndarray | None:
    """The hand start (xyz, float64) that replaces Meta-World's for `task`, or None to keep Meta-World's."""
    start = _HAND_START.get(task)
    return None if start is None else np.array(start, dtype=np.float64)


def check_mode(mode: str) -> None:
    """Raise a ConfigError unless `mode` is one of MODES."""
    if mode not in MODES:
        raise ConfigError(
            f"Unknown mode {mode!r}; expected one of {MODES}. Pass mode='multimodal' or 'scripted'."
        )


def check_task(task: str, mode: str) -> None:
    """Raise a ConfigError unless `task` is usable in `mode`, hinting at mode='scripted' when it would be."""
    valid = valid_task_names(mode)
    if task in valid:
        return
    hint = ""
    if mode == "multimodal" and task in valid_task_names("scripted"):
        hint = f" {task!r} has a scripted expert but no detour setup: use mode='scripted'."
    raise ConfigError(
        f"Unknown Meta-World task {task!r} for mode {mode!r}.{hint} Valid names: {', '.join(valid)}."
    )
