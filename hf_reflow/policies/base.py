"""The adapter protocol the trainer and sampler talk to (`factory.py` finds the adapter of a `config.type`).

An adapter wraps one LeRobot `PreTrainedPolicy` and exposes its flow in hf-reflow's convention:

    condition = adapter.encode(batch)              # once per batch (e.g. a VLM prefix cache)
    velocity  = adapter.velocity(x_t, t, condition)  # (B, chunk, action_dim), t of shape (B,)
    loss      = adapter.loss(batch, noise, action, t)  # (B,) per sample, with gradients

All tensors live in the policy's normalised action space (the space its pre/post processors map
to and from), so a student that shares its teacher's processors can regress on teacher samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from hf_reflow import flow


class PolicyAdapter(ABC):
    """Flow-matching view of a LeRobot policy: one subclass per policy family, listed in `factory.py`."""

    policy_type: ClassVar[str]
    steps_field: ClassVar[str] = "num_steps"  # the config field holding the inference step count
    supports_step_size: ClassVar[bool] = False  # can read the step size d (a `shortcut` student)

    def __init__(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    @property
    def config(self) -> Any:
        return self.policy.config

    @property
    @abstractmethod
    def action_shape(self) -> tuple[int, int]:
        """(chunk, action_dim) of the space the ODE runs in (padded width for padded policies)."""

    @abstractmethod
    def encode(self, batch: dict[str, Tensor]) -> Any:
        """Everything the velocity field needs from the observation, computed once per batch."""

    @abstractmethod
    def velocity(self, x_t: Tensor, t: Tensor, condition: Any) -> Tensor:
        """Velocity at (x_t (B, chunk, action_dim), t (B,)) given `encode`'s condition."""

    def encode_at_step_size(self, batch: dict[str, Tensor], step_size: Tensor) -> Any:
        """`encode`, told the step size d (B,) the velocity is used with (shortcut students only)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot read a step size; the shortcut stage needs a policy that can "
            "(flow_mlp with step_size_conditioning)."
        )

    def action_target(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The dataset's normalised action chunk (B, chunk, action_dim) and its validity mask (B, chunk)."""
        action = batch["action"]
        pad = batch.get("action_is_pad")
        return action, None if pad is None else ~pad

    def loss(
        self,
        batch: dict[str, Tensor],
        noise: Tensor,
        action: Tensor,
        t: Tensor,
        *,
        kind: flow.LossKind = "mse",
        mask: Tensor | None = None,
        condition: Any = None,
    ) -> Tensor:
        """Per-sample loss (B,) of the velocity at x_t on the straight noise -> action line."""
        condition = self.encode(batch) if condition is None else condition
        x_t = flow.interpolate(noise, action, t)
        return flow.flow_loss(
            self.velocity(x_t, t, condition), flow.velocity_target(noise, action), kind=kind, mask=mask
        )

    # ---- optional: a frozen backbone shared by a teacher and its student (see policies/smolvla.py) ----
    def backbone_frozen(self) -> bool:
        """True when the policy has a frozen backbone a teacher of the same weights could share."""
        return False

    def share_backbone(self, student: PolicyAdapter) -> None:
        """Make this (teacher) adapter use `student`'s frozen backbone module instead of its own copy."""
        raise NotImplementedError(f"{type(self).__name__} has no shareable backbone.")

    def backbone_context(self, batch: dict[str, Tensor]) -> Any:
        """The frozen backbone's output for `batch`, computed once; `encode(batch, context)` completes it."""
        raise NotImplementedError(f"{type(self).__name__} has no shareable backbone.")

    @property
    def num_steps(self) -> int:
        return int(getattr(self.config, self.steps_field))

    @num_steps.setter
    def num_steps(self, value: int) -> None:
        setattr(self.config, self.steps_field, int(value))


def same_weights(module: torch.nn.Module, other: torch.nn.Module) -> bool:
    """True when two modules hold the same tensors under the same names (dtype of `module`)."""
    mine, theirs = module.state_dict(), other.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k].to(v.dtype)) for k, v in mine.items())
