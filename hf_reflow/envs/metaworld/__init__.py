"""Meta-World tasks with two equally good ways around an obstacle: experts, rollouts, LeRobot datasets.

Why this exists: reflow must keep a teacher's *modes*. A single scripted Meta-World expert is
unimodal, so a student that averages modes would look perfect on it. Here every episode of the
`multimodal` mode puts a virtual vertical cylinder (radius 0.04 m, in xy) on the midpoint of the
straight xy line from the hand's start to its first target: the goal for reach, the puck for push,
and for the other detour tasks in `TASKS_MULTIMODAL` the point above the handle/button/object that
the stock scripted expert heads for first (see `tasks._FIRST_TARGET`). The expert first detours through
a via point 0.10 m to the left or right of that midpoint (50/50 per episode, recorded), then the stock
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

Modules, each importing only those above it: `checks` (argument checks), `tasks` (the catalogue),
`geometry`, `expert`, `render` (offscreen images), `env`, `rollout`, `dataset`. Every public name is
re-exported here, so `from hf_reflow.envs import metaworld; metaworld.X` is the way to use them.
"""

# `render` must be this package's first import: it records whether mujoco was imported before
# `hf_reflow.envs` could choose its headless OpenGL backend, and the other modules import mujoco
# (directly or through metaworld). Sorted imports keep it first: `hf_reflow.envs.metaworld` sorts before its submodules.
from hf_reflow.envs.metaworld import render  # noqa: F401  (imported first for its record: see above)
from hf_reflow.envs.metaworld.dataset import dataset_features, write_dataset
from hf_reflow.envs.metaworld.env import MetaWorldEnv, layout_vectors, make_env
from hf_reflow.envs.metaworld.expert import (
    DETOUR_GAIN,
    EXPERT_AIMS,
    HAND_ABOVE_FINGERTIPS_M,
    VIA_TOLERANCE_M,
    MultimodalExpert,
)
from hf_reflow.envs.metaworld.geometry import (
    detour_via_point,
    obstacle_centre,
    obstacle_collides,
    side_of_line,
)
from hf_reflow.envs.metaworld.rollout import (
    Episode,
    EpisodeResult,
    record_episode,
    rollout_expert,
    rollout_policy,
)
from hf_reflow.envs.metaworld.tasks import (
    ACTION_DIM,
    ACTION_NAMES,
    DEFAULT_CAMERA,
    DEFAULT_FPS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_STEPS,
    DEFAULT_REPO_ID,
    DEMO_LAYOUT_SEED,
    DETOUR_OFFSET_M,
    EPISODE_SEED_STRIDE,
    EVAL_LAYOUT_SEED,
    IMAGE_KEY,
    LEFT,
    MAX_ENV_STEPS,
    MODES,
    OBS_DIM,
    OBSTACLE_RADIUS_M,
    RIGHT,
    SIDE_NAMES,
    STATE_DIM,
    STATE_NAMES,
    TASKS_MULTIMODAL,
    Mode,
    default_max_steps,
    first_target_xy,
    task_prompt,
    valid_task_names,
)

__all__ = [
    "ACTION_DIM",
    "ACTION_NAMES",
    "DEFAULT_CAMERA",
    "DEFAULT_FPS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_REPO_ID",
    "DEMO_LAYOUT_SEED",
    "DETOUR_GAIN",
    "DETOUR_OFFSET_M",
    "EPISODE_SEED_STRIDE",
    "EVAL_LAYOUT_SEED",
    "EXPERT_AIMS",
    "HAND_ABOVE_FINGERTIPS_M",
    "IMAGE_KEY",
    "LEFT",
    "MAX_ENV_STEPS",
    "MODES",
    "OBSTACLE_RADIUS_M",
    "OBS_DIM",
    "RIGHT",
    "SIDE_NAMES",
    "STATE_DIM",
    "STATE_NAMES",
    "TASKS_MULTIMODAL",
    "VIA_TOLERANCE_M",
    "Episode",
    "EpisodeResult",
    "MetaWorldEnv",
    "Mode",
    "MultimodalExpert",
    "dataset_features",
    "default_max_steps",
    "detour_via_point",
    "first_target_xy",
    "layout_vectors",
    "make_env",
    "obstacle_centre",
    "obstacle_collides",
    "record_episode",
    "rollout_expert",
    "rollout_policy",
    "side_of_line",
    "task_prompt",
    "valid_task_names",
    "write_dataset",
]
