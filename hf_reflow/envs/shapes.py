"""The state and action sizes of hf-reflow's built-in envs, importable without their simulators: the Space
tells which env a checkpoint was trained for by them (`ENV_SHAPES`)."""

from __future__ import annotations

METAWORLD_STATE_DIM = 41  # Meta-World's 39-d observation + the detour obstacle's xy
METAWORLD_ACTION_DIM = 4  # hand delta xyz + gripper
TOY_STATE_DIM = 4  # hand x, y, goal x, y
TOY_ACTION_DIM = 2  # hand velocity x, y

# (state shape, action shape) -> env
ENV_SHAPES = {
    ((METAWORLD_STATE_DIM,), (METAWORLD_ACTION_DIM,)): "metaworld",
    ((TOY_STATE_DIM,), (TOY_ACTION_DIM,)): "toy",
}
