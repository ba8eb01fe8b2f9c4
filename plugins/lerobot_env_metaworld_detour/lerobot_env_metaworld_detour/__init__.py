"""Importing this registers hf-reflow's `metaworld_detour` env type (and its gym id) with LeRobot."""

from hf_reflow.envs.lerobot_env import MetaWorldDetourEnvConfig  # noqa: F401
