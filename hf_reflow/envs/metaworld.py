"""Meta-World tasks with two equally good ways around an obstacle: experts, rollouts, LeRobot datasets.

Why this exists: reflow must keep a teacher's *modes*. A single scripted Meta-World expert is
unimodal, so a student that averages modes would look perfect on it. Here every episode of the
`multimodal` mode puts a virtual vertical cylinder (radius 0.04 m, in xy) on the midpoint of the
straight xy line from the hand's start to its first target: the goal for reach, the puck for push,
and for the other detour tasks in `TASKS_MULTIMODAL` the point above the handle/button/object that
the stock scripted expert heads for first (see `_FIRST_TARGET`). The expert first detours through a
via point 0.10 m to the left or right of that midpoint (50/50 per episode, recorded), then the stock
scripted expert takes over. Demonstrations therefore contain two modes for the same observation; a
policy that averages them drives into the cylinder and fails.

State = Meta-World's 39-d observation (MT1, so the goal is visible) + the obstacle centre (x, y) = 41-d.
Actions are Meta-World's: Box(-1, 1, (4,)) = hand xyz velocity + gripper effort.

Layouts: in Meta-World v3 a reset seed does not change the object/goal layout; a layout is one of the
50 `rand_vec`s an `MT1(task, seed)` draws. Demonstrations use `DEMO_LAYOUT_SEED`, evaluation uses
`EVAL_LAYOUT_SEED`, so evaluation layouts are never demonstration layouts. Within a layout set an
episode seed picks the layout and the detour side, deterministically.

`scripted` mode: no detour and no collision check (the obstacle centre is still appended so states
have the same shape); any task with a scripted expert works (tasks outside `TASKS_MULTIMODAL` may need
max_steps above the default). The step limit defaults to `default_max_steps(task)`: 120 for reach and
push, a horizon measured from the expert's longest multimodal episode for the other detour tasks.

Bad arguments raise `hf_reflow.errors.ConfigError` (a ValueError); an occupied dataset root raises
`DataError` (also a ValueError). Images need an offscreen OpenGL context (EGL when headless).
"""

from __future__ import annotations

import dataclasses
import os
import sys

# `hf_reflow.envs` (imported first) chooses MuJoCo's headless OpenGL backend; one imported before it keeps its own.
_MUJOCO_IMPORTED_EARLY = "mujoco" in sys.modules

import atexit  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

import metaworld  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

from hf_reflow.envs.writing import discard_dataset  # noqa: E402
from hf_reflow.errors import ConfigError, DataError  # noqa: E402

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
VIA_TOLERANCE_M = 0.015  # the detour ends when the hand is this close to the via point
DETOUR_GAIN = 10.0  # P gain of the detour controller (actions saturate at +-1)

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
STATE_DIM = 41
ACTION_DIM = 4
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
# Where the stock expert puts the hand. Meta-World measures reach success at the fingertip centre
# (`tcp_center`), 4.50 cm below the hand that obs[:3] reports (measured at every reset), while its stock reach
# expert steers that hand onto the goal: a hand on the goal is then 4.5 cm from success, 5 mm inside the 5 cm
# tolerance, and the demonstrations end on the step the fingertips cross it, with the expert almost stopped.
# `expert_aim="fingertips"` raises the goal the stock expert sees by that offset for the tasks listed here
# (success = fingertips to obs[36:39]), so it puts the fingertips on the goal; other tasks are unchanged.
EXPERT_AIMS = ("hand", "fingertips")
HAND_ABOVE_FINGERTIPS_M = 0.045
_AIM_FINGERTIPS_TASKS = frozenset({"reach-v3"})
_PROMPTS: dict[tuple[str, str], str] = {
    ("reach-v3", "multimodal"): "reach the goal around the obstacle",
    ("push-v3", "multimodal"): "push the puck to the goal around the obstacle",
    ("reach-v3", "scripted"): "reach the goal",
    ("push-v3", "scripted"): "push the puck to the goal",
}
for _task, _instruction in {
    "button-press-topdown-v3": "press the button from the top",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "faucet-close-v3": "close the faucet",
    "faucet-open-v3": "open the faucet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "open the window",
}.items():
    _PROMPTS[(_task, "multimodal")] = f"{_instruction} around the obstacle"
    _PROMPTS[(_task, "scripted")] = _instruction
del _task, _instruction


def _observation_names() -> list[str]:
    """Names of Meta-World's 39 observation entries (current frame, previous frame, goal)."""
    frame = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
    for k in (1, 2):
        frame += [f"obj{k}_{a}" for a in ("x", "y", "z", "qx", "qy", "qz", "qw")]
    return frame + [f"prev_{n}" for n in frame] + ["goal_x", "goal_y", "goal_z"]


STATE_NAMES: tuple[str, ...] = (*_observation_names(), "obstacle_x", "obstacle_y")
ACTION_NAMES: tuple[str, ...] = ("hand_dx", "hand_dy", "hand_dz", "gripper_effort")


# --------------------------------------------------------------------------- task names, validation


def valid_task_names(mode: Mode = "scripted") -> tuple[str, ...]:
    """Task names usable in `mode`: the detour tasks, or every MT1 task with a scripted expert."""
    _check_mode(mode)
    if mode == "multimodal":
        return TASKS_MULTIMODAL
    return tuple(sorted(set(ENV_POLICY_MAP) & set(metaworld.MT1.ENV_NAMES)))


def default_max_steps(task: str) -> int:
    """The step limit used when none is given: the task's measured horizon (see `_MAX_STEPS`),
    DEFAULT_MAX_STEPS (120) for reach/push and for tasks without one."""
    _check_task(task, "scripted")
    return _MAX_STEPS.get(task, DEFAULT_MAX_STEPS)


def task_prompt(task: str, mode: Mode = "multimodal") -> str:
    """The language instruction stored with every frame of a `task` episode."""
    _check_task(task, mode)
    default = f"solve the {task.removesuffix('-v3').replace('-', ' ')} task"
    return _PROMPTS.get((task, mode), default)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(
            f"Unknown mode {mode!r}; expected one of {MODES}. Pass mode='multimodal' or 'scripted'."
        )


def _check_aim(aim: str) -> None:
    if aim not in EXPERT_AIMS:
        raise ConfigError(f"expert aim must be one of {', '.join(EXPERT_AIMS)}, got {aim!r}.")


def _check_task(task: str, mode: str) -> None:
    valid = valid_task_names(mode)
    if task in valid:
        return
    hint = ""
    if mode == "multimodal" and task in valid_task_names("scripted"):
        hint = f" {task!r} has a scripted expert but no detour setup: use mode='scripted'."
    raise ConfigError(
        f"Unknown Meta-World task {task!r} for mode {mode!r}.{hint} Valid names: {', '.join(valid)}."
    )


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an int, received {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be {bound}, received {value}.")
    return int(value)


def _as_xy(name: str, value: Any) -> np.ndarray:
    """A float64 (2,) copy of an xy point; a 3-d point is accepted and its z dropped."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in ((2,), (3,)) or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be a finite xy (or xyz) point, received shape {arr.shape}: {arr}.")
    return arr[:2].copy()


# --------------------------------------------------------------------------- geometry


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
    return (_as_xy("hand_start_xy", hand_start_xy) + _as_xy("target_xy", target_xy)) / 2


def detour_via_point(
    hand_start_xy: Any, target_xy: Any, side: int, *, offset: float = DETOUR_OFFSET_M
) -> np.ndarray:
    """The xy via point `offset` metres left (side 0) or right (side 1) of the start->target midpoint.

    Left/right are as seen facing from the start towards the target, perpendicular to that line.
    """
    if side not in (LEFT, RIGHT):
        raise ConfigError(f"side must be {LEFT} (left) or {RIGHT} (right), received {side!r}.")
    start, target = _as_xy("hand_start_xy", hand_start_xy), _as_xy("target_xy", target_xy)
    _, left_normal = _line_frame(start, target)
    sign = 1.0 if side == LEFT else -1.0
    return (start + target) / 2 + sign * offset * left_normal


def obstacle_collides(hand_xy: Any, centre_xy: Any, radius: float = OBSTACLE_RADIUS_M) -> bool:
    """True when the hand is inside the vertical cylinder (xy distance strictly below `radius`)."""
    if not radius > 0:
        raise ConfigError(f"radius must be > 0 metres, received {radius}.")
    distance = np.linalg.norm(_as_xy("hand_xy", hand_xy) - _as_xy("centre_xy", centre_xy))
    return bool(distance < radius)


def side_of_line(start_xy: Any, target_xy: Any, point_xy: Any) -> int:
    """LEFT (0) if `point_xy` lies left of the directed line start -> target, else RIGHT (1).

    Uses the sign of the 2-d cross product (target - start) x (point - start); a point exactly on
    the line counts as right.
    """
    start, target = _as_xy("start_xy", start_xy), _as_xy("target_xy", target_xy)
    d, p = target - start, _as_xy("point_xy", point_xy) - start
    return LEFT if d[0] * p[1] - d[1] * p[0] > 0 else RIGHT


def first_target_xy(task: str, obs: np.ndarray) -> np.ndarray:
    """Where the hand heads first (xy): the goal (reach) or the main object plus the scripted expert's
    approach offset (see `_FIRST_TARGET`; tasks not listed there: the main object)."""
    source, offset = _FIRST_TARGET.get(task, ("object", (0.0, 0.0)))
    xy = np.asarray(obs[_FIRST_TARGET_SOURCES[source]], dtype=np.float64)
    return xy + np.asarray(offset, dtype=np.float64)


# --------------------------------------------------------------------------- expert


def _check_vector(name: str, value: Any, size: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be a finite ({size},) vector, received shape {arr.shape}.")
    return arr


class MultimodalExpert:
    """Scripted Meta-World expert with an optional detour phase through a left/right via point.

    Phase "detour": action[:3] = clip(DETOUR_GAIN * (via - hand), -1, 1) and the gripper does what
    the scripted expert would do now, until the hand is within VIA_TOLERANCE_M of the via point
    (which keeps the hand's start height). Phase "expert": the stock `ENV_POLICY_MAP[task]` policy.

    Use it either bound to an env (`env.expert()`, which reads the episode's side at the first call
    after `reset()`), or standalone: `reset()`, then `start_episode(first_state, side)`, then call it.
    """

    def __init__(self, task: str, *, mode: Mode = "multimodal", side_source: Callable[[], int] | None = None,
                 aim: str = "hand"):  # fmt: skip
        """Build the expert for one task.

        Args:
            task: a name from `valid_task_names(mode)`.
            mode: "multimodal" (detour first) or "scripted" (stock expert only).
            side_source: called at the first action of an episode to get the detour side (0/1).
            aim: "hand" (the stock expert) or "fingertips" (reach: the fingertips, where success is measured,
                go onto the goal; see `EXPERT_AIMS`).
        """
        _check_mode(mode)
        _check_task(task, mode)
        _check_aim(aim)
        self.task, self.mode, self.aim = task, mode, aim
        self._policy = ENV_POLICY_MAP[task]()
        self._side_source = side_source
        self.via: np.ndarray | None = None
        self.phase = "idle"

    def reset(self) -> None:
        """Forget the current episode; the next call starts a new one."""
        self.via, self.phase = None, "idle"

    def start_episode(self, state: Any, side: int) -> None:
        """Plan the detour from the episode's first state (hand start, first target) and `side`."""
        state = _check_vector("state", state, STATE_DIM)
        if self.mode == "scripted":
            self.via, self.phase = None, "expert"
            return
        hand = state[:3]
        via_xy = detour_via_point(hand[:2], first_target_xy(self.task, state), side)
        self.via, self.phase = np.array([via_xy[0], via_xy[1], hand[2]]), "detour"

    def scripted_action(self, state: Any) -> np.ndarray:
        """The stock expert's action for a 41-d state (the obstacle columns are ignored)."""
        obs = _check_vector("state", state, STATE_DIM)[:OBS_DIM]
        if self.aim == "fingertips" and self.task in _AIM_FINGERTIPS_TASKS:
            obs = obs.copy()
            obs[38] += HAND_ABOVE_FINGERTIPS_M  # the stock expert puts the hand on obs[36:39]: the fingertips land there
        with warnings.catch_warnings():
            # Meta-World's `move` warns every time an action saturates, which is by design here.
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def __call__(self, state: Any) -> np.ndarray:
        """Action (4,) float32 for a 41-d state."""
        state = _check_vector("state", state, STATE_DIM)
        if self.phase == "idle":
            if self._side_source is None:
                raise RuntimeError(
                    "MultimodalExpert has no episode: call start_episode(state, side) after reset(), "
                    "or build it with env.expert() so it reads the side from the env."
                )
            self.start_episode(state, self._side_source())
        expert_action = self.scripted_action(state)
        if self.phase == "detour":
            assert self.via is not None
            error = self.via - state[:3]
            if np.linalg.norm(error) >= VIA_TOLERANCE_M:
                move = np.clip(DETOUR_GAIN * error, -1.0, 1.0)
                return np.array([*move, expert_action[3]], dtype=np.float32)
            self.phase = "expert"
        return expert_action


# --------------------------------------------------------------------------- environment


@functools.lru_cache(maxsize=64)
def _benchmark(task: str, layout_seed: int) -> metaworld.MT1:
    """MT1 layout set (50 `rand_vec`s) for `task`; cached because building it costs ~0.6 s."""
    return metaworld.MT1(task, seed=layout_seed)


def layout_vectors(task: str, layout_seed: int) -> np.ndarray:
    """The (50, k) layout vectors (object and goal positions) of `MT1(task, seed=layout_seed)`."""
    _check_task(task, "scripted")
    tasks = _benchmark(task, _check_int("layout_seed", layout_seed, low=0)).train_tasks
    return np.stack([pickle.loads(t.data)["rand_vec"] for t in tasks])


# Renderers left open at interpreter exit make EGL print errors from `__del__` once mujoco's own
# atexit hook has terminated the EGL display. atexit runs hooks last-registered-first, so a hook
# registered after each renderer is made (after mujoco's) closes them while EGL still works.
_OPEN_RENDERERS: weakref.WeakSet[mujoco.Renderer] = weakref.WeakSet()


def _close_open_renderers() -> None:
    for renderer in list(_OPEN_RENDERERS):
        _OPEN_RENDERERS.discard(renderer)
        renderer.close()


def _make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    """Small, fast offscreen renderer: no multisampling, shadows or reflections (~7 ms per 96 px frame)."""
    model.vis.quality.offsamples = 0  # must be set before the GL context is made
    try:
        renderer = mujoco.Renderer(model, height=size, width=size)
    except Exception as exc:  # the GL backends raise assorted error types
        early = (
            " mujoco was imported before hf_reflow.envs.metaworld with MUJOCO_GL unset, so it chose a "
            "display backend: set MUJOCO_GL=egl in the environment (or before any mujoco import)."
            if _MUJOCO_IMPORTED_EARLY
            else ""
        )
        raise RuntimeError(
            f"Could not open an offscreen MuJoCo renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): "
            f"{exc}.{early} On a headless machine install EGL (e.g. libegl1) and set MUJOCO_GL=egl before "
            "mujoco is imported, or record without images (images=False)."
        ) from exc
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    _OPEN_RENDERERS.add(renderer)
    atexit.unregister(_close_open_renderers)
    atexit.register(_close_open_renderers)
    return renderer


def _add_cylinder(scene: mujoco.MjvScene, centre_xy: np.ndarray, radius: float) -> None:
    """Draw the virtual obstacle so image-based policies can see it (it has no physics)."""
    if scene.ngeom >= scene.maxgeom:
        return
    half_height = 0.15
    mujoco.mjv_initGeom(
        scene.geoms[scene.ngeom],
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=np.array([radius, half_height, 0.0]),  # mjv_initGeom takes model-style (radius, half-length)
        pos=np.array([centre_xy[0], centre_xy[1], half_height]),
        mat=np.eye(3).flatten(),
        rgba=np.array([0.15, 0.35, 0.95, 1.0], dtype=np.float32),
    )
    scene.ngeom += 1


class MetaWorldEnv:
    """One Meta-World task with the virtual obstacle; states are (41,) float32.

    `reset(episode_seed)` picks the layout and the detour side from `episode_seed`;
    `step(action)` returns (state, success, collided, done), where success means task success and
    no collision so far, and done means success, collision (multimodal mode) or the step limit
    (`max_steps`; default `default_max_steps(task)`).
    """

    def __init__(
        self,
        task: str,
        *,
        layout_seed: int = DEMO_LAYOUT_SEED,
        mode: Mode = "multimodal",
        max_steps: int | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        camera: str = DEFAULT_CAMERA,
        hold_steps: int = 0,
        expert_aim: str = "hand",
    ):
        _check_mode(mode)
        _check_task(task, mode)
        _check_aim(expert_aim)
        self.task, self.mode, self.expert_aim = task, mode, expert_aim
        # Steps an episode goes on after its first success (demonstrations that finish with margin); 0 = it ends
        # there, as every evaluation does. Success is the first success either way.
        self.hold_steps = _check_int("hold_steps", hold_steps, low=0, high=MAX_ENV_STEPS)
        self.layout_seed = _check_int("layout_seed", layout_seed, low=0)
        limit = default_max_steps(task) if max_steps is None else max_steps
        self.max_steps = _check_int("max_steps", limit, low=1, high=MAX_ENV_STEPS)
        self.image_size = _check_int("image_size", image_size, low=16, high=480)
        self.camera = camera
        self._layouts = _benchmark(task, self.layout_seed).train_tasks
        self._env = _benchmark(task, self.layout_seed).train_classes[task]()
        self._env.set_task(self._layouts[0])
        if task in _HAND_START:
            # `_reset_hand` drives the mocap to `hand_init_pos` for 50 sub-steps at every reset.
            self._env.hand_init_pos = np.array(_HAND_START[task], dtype=np.float64)
        self._renderer: mujoco.Renderer | None = None
        self.description = task_prompt(task, mode)
        # Per-episode fields, set by reset().
        self._episode_started = False
        self.episode_seed, self.layout_index, self.side = -1, -1, LEFT
        self.hand_start_xy, self.target_xy = np.zeros(2), np.zeros(2)
        self.obstacle_centre, self.closest_hand_xy = np.zeros(2), np.zeros(2)
        self.steps, self.collided, self.success, self.done = 0, False, False, False
        self.min_obstacle_distance = math.inf
        self._horizon = self.max_steps

    # -- episode -----------------------------------------------------------------------------

    def reset(self, episode_seed: int, *, max_steps: int | None = None) -> np.ndarray:
        """Start an episode; its layout and detour side are a pure function of `episode_seed`.

        Args:
            episode_seed: int >= 0.
            max_steps: step limit for this episode only (default: the env's `max_steps`).

        Returns:
            The first state, (41,) float32.
        """
        self.episode_seed = _check_int("episode_seed", episode_seed, low=0)
        limit = self.max_steps if max_steps is None else max_steps
        self._horizon = _check_int("max_steps", limit, low=1, high=MAX_ENV_STEPS)
        rng = np.random.default_rng(self.episode_seed)
        self.layout_index = int(rng.integers(len(self._layouts)))
        self.side = int(rng.integers(2))
        self._env.set_task(self._layouts[self.layout_index])
        obs, _ = self._env.reset()
        self.hand_start_xy = np.asarray(obs[:2], dtype=np.float64).copy()
        self.target_xy = first_target_xy(self.task, obs)
        self.obstacle_centre = obstacle_centre(self.hand_start_xy, self.target_xy)
        self.steps, self.collided, self.success, self.done = 0, False, False, False
        self.succeeded_at: int | None = None
        self.min_obstacle_distance = math.inf
        self.closest_hand_xy = self.hand_start_xy.copy()
        self.goal_distances: list[float] = []  # Meta-World's own success distance after each step (obj_to_target)
        # The observed hand (obs[:3], what the stock experts steer) to the observed goal (obs[36:39]) after each
        # step. For reach, success is measured at the fingertip centre (`tcp_center`), ~4.5 cm below the hand:
        # a hand on the goal is only just inside the 5 cm tolerance.
        self.hand_goal_distances: list[float] = []
        self._episode_started = True
        return self._observe(obs)

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        """Append the obstacle centre and track the closest approach to it."""
        hand_xy = np.asarray(obs[:2], dtype=np.float64)
        distance = float(np.linalg.norm(hand_xy - self.obstacle_centre))
        if distance < self.min_obstacle_distance:
            self.min_obstacle_distance, self.closest_hand_xy = distance, hand_xy.copy()
        return np.concatenate([obs, self.obstacle_centre]).astype(np.float32)

    def step(self, action: Any) -> tuple[np.ndarray, bool, bool, bool]:
        """Apply a (4,) action in [-1, 1] (clipped). Returns (state, success, collided, done)."""
        if not self._episode_started or self.done:
            raise RuntimeError("No running episode: call reset(episode_seed) before step().")
        action = np.clip(_check_vector("action", action, ACTION_DIM), -1.0, 1.0).astype(np.float32)
        obs, _reward, _terminated, truncated, info = self._env.step(action)
        self.steps += 1
        self.goal_distances.append(float(info.get("obj_to_target", math.nan)))
        self.hand_goal_distances.append(float(np.linalg.norm(obs[:3] - obs[36:39])))
        state = self._observe(obs)
        if self.mode == "multimodal" and obstacle_collides(obs[:2], self.obstacle_centre):
            self.collided = True
        if info["success"] and self.succeeded_at is None:
            self.succeeded_at = self.steps
        self.success = self.succeeded_at is not None and not self.collided
        held = self.succeeded_at is not None and self.steps - self.succeeded_at >= self.hold_steps
        self.done = held or self.collided or self.steps >= self._horizon or bool(truncated)
        return state, self.success, self.collided, self.done

    def side_taken(self) -> int:
        """Side of the start->target line the hand was on when closest to the obstacle centre."""
        return side_of_line(self.hand_start_xy, self.target_xy, self.closest_hand_xy)

    def expert(self) -> MultimodalExpert:
        """The detour expert bound to this env: it reads `self.side` at each episode's first call."""
        return MultimodalExpert(self.task, mode=self.mode, side_source=lambda: self.side, aim=self.expert_aim)

    # -- images ------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """RGB uint8 (image_size, image_size, 3) from the `camera` view, obstacle drawn in blue."""
        if self._renderer is None:
            self._renderer = _make_renderer(self._env.model, self.image_size)
        self._renderer.update_scene(self._env.data, camera=self.camera)
        if self.mode == "multimodal" and self._episode_started:
            _add_cylinder(self._renderer.scene, self.obstacle_centre, OBSTACLE_RADIUS_M)
        image = self._renderer.render()
        # Meta-World's corner cameras are mounted upside down; rotate 180 degrees (as LeRobot does).
        return np.ascontiguousarray(image[::-1, ::-1])

    def close(self) -> None:
        """Release the renderer and the simulator."""
        if self._renderer is not None:
            _OPEN_RENDERERS.discard(self._renderer)
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_env(
    task: str,
    *,
    layout_seed: int = DEMO_LAYOUT_SEED,
    mode: Mode = "multimodal",
    max_steps: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    hold_steps: int = 0,
    expert_aim: str = "hand",
) -> MetaWorldEnv:
    """A `MetaWorldEnv`; use `EVAL_LAYOUT_SEED` for evaluation so layouts differ from the demos'.

    max_steps: step limit per episode; None = `default_max_steps(task)` (120 for reach/push).
    hold_steps: steps an episode goes on after its first success (demonstrations only; evaluation uses 0).
    expert_aim: what `env.expert()` puts on the goal (`EXPERT_AIMS`); success is measured the same either way.
    """
    return MetaWorldEnv(task, layout_seed=layout_seed, mode=mode, max_steps=max_steps, image_size=image_size,
                        hold_steps=hold_steps, expert_aim=expert_aim)  # fmt: skip


# --------------------------------------------------------------------------- rollouts


@dataclass(frozen=True)
class Episode:
    """One expert episode. states[t] is the state the expert acted on with actions[t]."""

    task: str
    mode: str
    episode_seed: int
    layout_seed: int
    layout_index: int
    states: np.ndarray  # (T, 41) float32
    actions: np.ndarray  # (T, 4) float32
    success: bool
    collided: bool
    side: int  # planned detour side, 0 left / 1 right (drawn but unused in scripted mode)
    side_taken: int  # side actually passed (closest approach to the obstacle)
    steps: int
    min_obstacle_distance: float  # closest xy distance of the hand to the obstacle centre (m)
    seconds: float
    images: np.ndarray | None = None  # (T, H, W, 3) uint8 when recorded


@dataclass(frozen=True)
class EpisodeResult:
    """Outcome of a closed-loop policy episode. success = task success and no collision."""

    success: bool
    collided: bool
    side_taken: int
    steps: int
    min_obstacle_distance: float


def rollout_expert(
    task: str,
    episode_seed: int,
    *,
    layout_seed: int = DEMO_LAYOUT_SEED,
    mode: Mode = "multimodal",
    max_steps: int | None = None,
    images: bool = False,
    env: MetaWorldEnv | None = None,
) -> Episode:
    """Roll out the (detour) expert for one episode.

    Args:
        task: task name; see `valid_task_names(mode)`.
        episode_seed: picks the layout and the detour side.
        layout_seed: MT1 seed of the layout set (demos: DEMO_LAYOUT_SEED).
        mode: "multimodal" or "scripted".
        max_steps: step limit of the episode; None = `default_max_steps(task)`.
        images: also record a rendered frame per state.
        env: an existing env for `task`/`layout_seed`/`mode` to reuse (saves ~0.1 s per episode).
    """
    if env is None:
        env = make_env(task, layout_seed=layout_seed, mode=mode, max_steps=max_steps)
    elif (env.task, env.layout_seed, env.mode) != (task, layout_seed, mode):
        raise ConfigError(
            f"env is for ({env.task}, layout_seed={env.layout_seed}, {env.mode}) but the rollout asks for "
            f"({task}, layout_seed={layout_seed}, {mode}); pass a matching env or env=None."
        )
    if max_steps is None:
        max_steps = default_max_steps(task)
    expert = env.expert()  # made before the reset, as the expert reads the episode's side at its first call
    return record_episode(env, expert, episode_seed, max_steps=max_steps, images=images)


def record_episode(env: MetaWorldEnv, select_action: Callable[[np.ndarray], Any], episode_seed: int, *,
                   max_steps: int, images: bool = False) -> Episode:  # fmt: skip
    """Run `select_action` (the expert, or a policy) for one episode of `env`, recording states and actions.

    `side` is the env's drawn detour side (the expert's plan); `side_taken` the side the hand passed.
    """
    start = time.perf_counter()
    state = env.reset(episode_seed, max_steps=max_steps)
    states, actions, frames = [], [], []
    done = False
    while not done:
        if images:
            frames.append(env.render())
        action = select_action(state)  # (4,), as returned: the expert's are stepped unrounded
        states.append(state)
        actions.append(action)
        state, _success, _collided, done = env.step(action)
    return Episode(
        task=env.task,
        mode=env.mode,
        episode_seed=env.episode_seed,
        layout_seed=env.layout_seed,
        layout_index=env.layout_index,
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        success=env.success,
        collided=env.collided,
        side=env.side,
        side_taken=env.side_taken(),
        steps=env.steps,
        min_obstacle_distance=env.min_obstacle_distance,
        seconds=time.perf_counter() - start,
        images=np.stack(frames) if images else None,
    )


def rollout_policy(
    env: MetaWorldEnv,
    select_action: Callable[[np.ndarray], Any],
    episode_seed: int,
    max_steps: int | None = None,
) -> EpisodeResult:
    """Run `select_action` closed-loop for one episode of `env`.

    If `select_action` has a `reset()` method (LeRobot policies, `MultimodalExpert`) it is called
    before the episode so action queues and episode state start fresh.

    Args:
        env: from `make_env` (use EVAL_LAYOUT_SEED for evaluation).
        select_action: maps a (41,) float32 state to a (4,) action (array-like).
        episode_seed: picks the layout (and the side the expert would have taken, unused here).
        max_steps: step limit for this episode (default: `env.max_steps`, which defaults to
            `default_max_steps(env.task)`).
    """
    reset = getattr(select_action, "reset", None)
    if callable(reset):
        reset()
    state = env.reset(episode_seed, max_steps=max_steps)
    done = False
    while not done:
        action = np.asarray(select_action(state), dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ConfigError(
                f"select_action must return {ACTION_DIM} values (hand dx, dy, dz, gripper), "
                f"received shape {action.shape}."
            )
        state, _success, _collided, done = env.step(action)
    return EpisodeResult(
        success=env.success,
        collided=env.collided,
        side_taken=env.side_taken(),
        steps=env.steps,
        min_obstacle_distance=env.min_obstacle_distance,
    )


# --------------------------------------------------------------------------- dataset


def dataset_features(*, images: bool = False, image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, dict]:
    """LeRobot feature spec of the demonstrations (shapes are tuples: LeRobot compares them exactly)."""
    features: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": list(STATE_NAMES)},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": list(ACTION_NAMES)},
        "detour_side": {"dtype": "int64", "shape": (1,), "names": ["0_left_1_right_-1_none"]},
        "obstacle": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "radius"]},
        "episode_seed": {"dtype": "int64", "shape": (1,), "names": None},
    }
    if images:
        features[IMAGE_KEY] = {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
    return features


def _check_root_free(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"Dataset root {str(root)!r} already exists and is not an empty folder; "
            "choose a new path or delete it first (nothing was written)."
        )


def _add_episode(dataset: Any, episode: Episode, prompt: str) -> None:
    obstacle = np.array([*episode.states[0, OBS_DIM:], OBSTACLE_RADIUS_M], dtype=np.float32)
    side = episode.side if episode.mode == "multimodal" else -1  # scripted episodes take no detour
    for t in range(episode.steps):
        frame = {
            "observation.state": episode.states[t],
            "action": episode.actions[t],
            "detour_side": np.array([side], dtype=np.int64),
            "obstacle": obstacle,
            "episode_seed": np.array([episode.episode_seed], dtype=np.int64),
            "task": prompt,
        }
        if episode.images is not None:
            frame[IMAGE_KEY] = episode.images[t]
        dataset.add_frame(frame)
    dataset.save_episode()


def write_dataset(
    root: str | Path,
    *,
    tasks: Sequence[str] = TASKS_MULTIMODAL,
    episodes_per_task: int,
    mode: Mode = "multimodal",
    seed: int = 0,
    layout_seed: int = DEMO_LAYOUT_SEED,
    max_steps: int | None = None,
    fps: int = DEFAULT_FPS,
    images: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
    repo_id: str = DEFAULT_REPO_ID,
    log: Callable[[str], None] | None = None,
    policy: Callable[[str, str], Callable[[np.ndarray], Any]] | None = None,
    hold_steps: int = 0,
    expert_aim: str = "hand",
) -> dict[str, Any]:
    """Roll out expert episodes and write the successful ones as a LeRobotDataset (v3) at `root`.

    With `policy(task, prompt) -> select_action`, that policy acts instead of the expert and every episode
    is written, failed ones too (the states a policy visits in closed loop, e.g. a frozen teacher's, for
    reflow couplings); `detour_side` is then the side the hand took. `select_action.start(episode_seed)`,
    when it exists, is called before each episode (paired noise), `reset()` too.

    Episode i of a task uses episode seed `seed * EPISODE_SEED_STRIDE + i`, so datasets are
    reproducible. Failed episodes (collision or step limit) are dropped and counted. The dataset is
    written to a hidden folder beside `root` and renamed into place at the end, so a crash leaves
    nothing half-written at `root`.

    Args:
        root: output folder; must not exist or be empty.
        tasks: task names, each from `valid_task_names(mode)`.
        episodes_per_task: episodes attempted per task (>= 1).
        mode: "multimodal" or "scripted".
        seed: run seed for the episode seeds (>= 0).
        layout_seed: MT1 layout set; keep the default for demonstrations.
        max_steps: per-episode step limit; None = each task's `default_max_steps(task)`.
        fps: dataset frame rate (Meta-World runs at 80 Hz).
        images: also store a rendered `observation.images.corner` per frame.
        image_size: square image side in pixels.
        repo_id: LeRobot repo id written into the metadata.
        log: optional callback for one line per episode.
        policy: makes the `select_action` of a task (None: the detour expert).
        hold_steps: the expert goes on for this many steps after its first success (within `max_steps`), so
            the demonstrations show the last centimetres done with margin and the hand held at the goal.
        expert_aim: "hand" (Meta-World's stock experts) or "fingertips" (reach: the fingertips, where success
            is measured, go onto the goal; see `EXPERT_AIMS`).

    Returns:
        A summary dict: counts of attempted/written/failed episodes, frames, side counts, per task.
    """
    root = Path(root).resolve()  # `--root=.` names the current folder, whose Path has no name
    _check_mode(mode)
    if isinstance(tasks, str) or len(tasks) == 0:
        raise ConfigError(f"tasks must be a non-empty sequence of task names, received {tasks!r}.")
    for task in tasks:
        _check_task(task, mode)
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks must not repeat a name, received {list(tasks)}; list each task once.")
    _check_int("episodes_per_task", episodes_per_task, low=1, high=EPISODE_SEED_STRIDE - 1)
    _check_int("seed", seed, low=0)
    _check_int("layout_seed", layout_seed, low=0)
    if max_steps is not None:
        _check_int("max_steps", max_steps, low=1, high=MAX_ENV_STEPS)
    _check_int("fps", fps, low=1)
    _check_int("image_size", image_size, low=16, high=480)
    _check_root_free(root)  # fail before any rollout

    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy import, only needed here

    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    per_task: dict[str, dict[str, Any]] = {}
    dataset = None
    try:
        dataset = LeRobotDataset.create(
            repo_id,
            fps,
            dataset_features(images=images, image_size=image_size),
            root=partial,
            robot_type="sawyer",
            use_videos=False,
        )
        for task in tasks:
            per_task[task] = _write_task(
                dataset, task, episodes_per_task, mode, seed, layout_seed, max_steps, images, image_size, log, policy,
                hold_steps=hold_steps, expert_aim=expert_aim,
            )
        written = sum(s["written"] for s in per_task.values())
        if written == 0:
            raise DataError(
                f"Every one of the {episodes_per_task * len(tasks)} expert episodes failed, so there is "
                f"nothing to write; try a larger max_steps (received {max_steps}; None means each "
                "task's default_max_steps)."
            )
        dataset.finalize()
        _check_root_free(root)  # something may have appeared while we were writing
        if root.exists():
            root.rmdir()
        partial.rename(root)
    except BaseException:
        discard_dataset(dataset, partial)
        raise
    return _summary(root, repo_id, mode, fps, seed, layout_seed, max_steps, images, per_task, start)


def _write_task(
    dataset: Any,
    task: str,
    episodes: int,
    mode: Mode,
    seed: int,
    layout_seed: int,
    max_steps: int | None,
    images: bool,
    image_size: int,
    log: Callable[[str], None] | None,
    policy: Callable[[str, str], Callable[[np.ndarray], Any]] | None = None,
    *,
    hold_steps: int = 0,
    expert_aim: str = "hand",
) -> dict[str, Any]:
    """Roll out and write one task's episodes (the expert's successful ones, or all of `policy`'s); returns its counts."""
    if max_steps is None:
        max_steps = default_max_steps(task)
    env = make_env(task, layout_seed=layout_seed, mode=mode, max_steps=max_steps, image_size=image_size,
                   hold_steps=hold_steps if policy is None else 0, expert_aim=expert_aim)  # fmt: skip
    prompt = task_prompt(task, mode)
    stats: dict[str, Any] = {"attempted": episodes, "written": 0, "collided": 0, "timed_out": 0, "frames": 0}
    stats.update({"left": 0, "right": 0, "none": 0, "min_obstacle_distance": math.inf, "seconds": 0.0})
    stats["max_steps"] = max_steps
    try:
        select = policy(task, prompt) if policy is not None else None
        for i in range(episodes):
            ep = _episode(env, select, seed * EPISODE_SEED_STRIDE + i, max_steps, images)
            stats["seconds"] += ep.seconds
            if log is not None:
                outcome = "ok" if ep.success else ("collision" if ep.collided else "timeout")
                log(
                    f"{task} episode {i} seed {ep.episode_seed}: {outcome}, {ep.steps} steps, {SIDE_NAMES[ep.side]}"
                )
            if not ep.success:
                stats["collided" if ep.collided else "timed_out"] += 1
                if select is None:  # an expert's failure is dropped; a policy's visited states are the point
                    continue
            _add_episode(dataset, ep, prompt)
            stats["written"] += 1
            stats["frames"] += ep.steps
            stats[SIDE_NAMES[ep.side] if mode == "multimodal" else "none"] += 1
            stats["min_obstacle_distance"] = min(stats["min_obstacle_distance"], ep.min_obstacle_distance)
    finally:
        env.close()
    return stats


def _episode(env: MetaWorldEnv, select: Any, episode_seed: int, max_steps: int, images: bool) -> Episode:
    """The expert's episode (`select` None), or `select`'s with `side` set to the side its hand took."""
    if select is None:
        return rollout_expert(env.task, episode_seed, layout_seed=env.layout_seed, mode=env.mode,
                              max_steps=max_steps, images=images, env=env)  # fmt: skip
    for hook in ("start", "reset"):
        if callable(getattr(select, hook, None)):
            getattr(select, hook)(*((episode_seed,) if hook == "start" else ()))
    episode = record_episode(env, select, episode_seed, max_steps=max_steps, images=images)
    return dataclasses.replace(episode, side=episode.side_taken)


def _summary(
    root: Path,
    repo_id: str,
    mode: Mode,
    fps: int,
    seed: int,
    layout_seed: int,
    max_steps: int | None,
    images: bool,
    per_task: dict[str, dict[str, Any]],
    start: float,
) -> dict[str, Any]:
    def total(key: str) -> int:
        return int(sum(s[key] for s in per_task.values()))

    return {
        "root": str(root),
        "repo_id": repo_id,
        "mode": mode,
        "tasks": list(per_task),
        "fps": fps,
        "seed": seed,
        "layout_seed": layout_seed,
        "max_steps": max_steps,
        "images": images,
        "episodes_attempted": total("attempted"),
        "episodes_written": total("written"),
        "episodes_failed": total("collided") + total("timed_out"),
        "failed_collision": total("collided"),
        "failed_timeout": total("timed_out"),
        "frames": total("frames"),
        "side_counts": {"left": total("left"), "right": total("right"), "none": total("none")},
        "per_task": per_task,
        "seconds": time.perf_counter() - start,
    }
