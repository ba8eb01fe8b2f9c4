"""The adapter protocol the trainer and sampler talk to (`factory.py` finds the adapter of a `config.type`).

An adapter wraps one LeRobot `PreTrainedPolicy` and exposes its flow in hf-reflow's convention:

    condition = adapter.encode(batch)              # once per batch (e.g. a VLM prefix cache)
    velocity  = adapter.velocity(x_t, t, condition)  # (B, chunk, action_dim), t of shape (B,)
    loss      = adapter.loss(batch, noise, action, t)  # (B,) per sample, with gradients
    with adapter.inference_steps(n): ...            # the policy's own step count, set for a scope only
    out       = sample_policy(adapter, batch, noise, num_steps=n)  # encode once, then the ODE solve

All tensors live in the policy's normalised action space (the space its pre/post processors map
to and from), so a student that shares its teacher's processors can regress on teacher samples.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from hf_reflow import flow
from hf_reflow.sampling import SampleOutput, Solver, integrate


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

    @contextlib.contextmanager
    def inference_steps(self, num_steps: int | None) -> Iterator[int]:
        """Run the policy at `num_steps` inside the `with`; the previous count is restored after, also on error.

        The count lives in the policy's config (`steps_field`), where LeRobot's `select_action`, a shortcut
        student's step size d = 1 / num_steps and `save_pretrained` read it, so it is set only for a scope.

        Args:
            num_steps: the step count to use; None keeps the current one (a no-op scope).

        Yields:
            The step count in force inside the `with`.
        """
        previous = self.num_steps
        if num_steps is not None:
            self.num_steps = num_steps
        try:
            yield self.num_steps
        finally:
            self.num_steps = previous


@torch.no_grad()
def sample_policy(
    adapter: PolicyAdapter,
    batch: dict[str, Tensor],
    noise: Tensor,
    *,
    num_steps: int = 10,
    solver: Solver = "euler",
    return_path: bool = False,
    velocity: Callable[[Tensor, Tensor, Any], Tensor] | None = None,
) -> SampleOutput:
    """Sample action chunks from a policy through its adapter.

    The observation is encoded once (`adapter.encode`, e.g. SmolVLA's VLM prefix cache) and reused by
    every velocity evaluation of the solve (`hf_reflow.sampling.integrate`).

    Args:
        adapter: the policy's adapter.
        batch: a preprocessed (normalised, batched, on-device) observation batch.
        noise: (B, chunk, action_dim) in the adapter's `action_shape`.
        num_steps: solver steps; solver: `euler` or `heun`; return_path: also return the recorded path.
        velocity: `adapter.velocity` or a stand-in with its signature (e.g. a compiled one); None: the adapter's.
    """
    velocity = adapter.velocity if velocity is None else velocity
    if getattr(adapter, "supports_step_size", False):  # a shortcut policy is told d = 1 / num_steps here
        with adapter.inference_steps(num_steps):
            condition = adapter.encode(batch)
    else:
        condition = adapter.encode(batch)
    return integrate(
        lambda x_t, t: velocity(x_t, t, condition),
        noise,
        num_steps=num_steps,
        solver=solver,
        return_path=return_path,
    )


def same_weights(module: torch.nn.Module, other: torch.nn.Module) -> bool:
    """True when two modules hold the same tensors under the same names (dtype of `module`)."""
    mine, theirs = module.state_dict(), other.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k].to(v.dtype)) for k, v in mine.items())
