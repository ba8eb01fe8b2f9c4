"""The detour expert: a left/right via point first, then Meta-World's stock scripted expert (and its aim)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from metaworld.policies import ENV_POLICY_MAP

from hf_reflow.envs.metaworld.checks import check_vector
from hf_reflow.envs.metaworld.geometry import detour_via_point
from hf_reflow.envs.metaworld.tasks import OBS_DIM, STATE_DIM, Mode, check_mode, check_task, first_target_xy
from hf_reflow.errors import ConfigError

VIA_TOLERANCE_M = 0.015  # the detour ends when the hand is this close to the via point
DETOUR_GAIN = 10.0  # P gain of the detour controller (actions saturate at +-1)

# Where the stock expert puts the hand. Meta-World measures reach success at the fingertip centre
# (`tcp_center`), 4.50 cm below the hand that obs[:3] reports (measured at every reset), while its stock reach
# expert steers that hand onto the goal: a hand on the goal is then 4.5 cm from success, 5 mm inside the 5 cm
# tolerance, and the demonstrations end on the step the fingertips cross it, with the expert almost stopped.
# `expert_aim="fingertips"` raises the goal the stock expert sees by that offset for the tasks listed here
# (success = fingertips to obs[36:39]), so it puts the fingertips on the goal; other tasks are unchanged.
EXPERT_AIMS = ("hand", "fingertips")
HAND_ABOVE_FINGERTIPS_M = 0.045
_AIM_FINGERTIPS_TASKS = frozenset({"reach-v3"})


def check_aim(aim: str) -> None:
    """Raise a ConfigError unless `aim` is one of EXPERT_AIMS."""
    if aim not in EXPERT_AIMS:
        raise ConfigError(f"expert aim must be one of {', '.join(EXPERT_AIMS)}, got {aim!r}.")


class MultimodalExpert:
    """Scripted Meta-World expert with an optional detour phase through a left/right via point.

    Phase "detour": action[:3] = clip(DETOUR_GAIN * (via - hand), -1, 1) and the gripper does what
    the scripted expert would do now, until the hand is within VIA_TOLERANCE_M of the via point
    (which keeps the hand's start height). Phase "expert": the stock `ENV_POLICY_MAP[task]` policy.

    Use it either bound to an env (`env.expert()`, which reads the episode's side at the first call
    after `reset()`), or standalone: `reset()`, then `start_episode(first_state, side)`, then call it.
    """

    def __init__(
        self,
        task: str,
        *,
        mode: Mode = "multimodal",
        side_source: Callable[[], int] | None = None,
        aim: str = "hand",
    ):
        """Build the expert for one task.

        Args:
            task: a name from `valid_task_names(mode)`.
            mode: "multimodal" (detour first) or "scripted" (stock expert only).
            side_source: called at the first action of an episode to get the detour side (0/1).
            aim: "hand" (the stock expert) or "fingertips" (reach: the fingertips, where success is measured,
                go onto the goal; see `EXPERT_AIMS`).
        """
        check_mode(mode)
        check_task(task, mode)
        check_aim(aim)
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
        state = check_vector("state", state, STATE_DIM)
        if self.mode == "scripted":
            self.via, self.phase = None, "expert"
            return
        hand = state[:3]
        via_xy = detour_via_point(hand[:2], first_target_xy(self.task, state), side)
        self.via, self.phase = np.array([via_xy[0], via_xy[1], hand[2]]), "detour"

    def scripted_action(self, state: Any) -> np.ndarray:
        """The stock expert's action for a 41-d state (the obstacle columns are ignored)."""
        obs = check_vector("state", state, STATE_DIM)[:OBS_DIM]
        if self.aim == "fingertips" and self.task in _AIM_FINGERTIPS_TASKS:
            obs = obs.copy()
            # The stock expert puts the hand on obs[36:39]: the fingertips land there.
            obs[38] += HAND_ABOVE_FINGERTIPS_M
        with warnings.catch_warnings():
            # Meta-World's `move` warns every time an action saturates, which is by design here.
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def __call__(self, state: Any) -> np.ndarray:
        """Action (4,) float32 for a 41-d state."""
        state = check_vector("state", state, STATE_DIM)
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
