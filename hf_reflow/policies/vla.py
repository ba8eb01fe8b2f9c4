"""What the VLA adapters (SmolVLA, pi0, pi0.5) share: the padded action space, LeRobot's joint-forward
loss, and a frozen VLM backbone a teacher can borrow from its student.

All three run their ODE in the padded (chunk, max_action_dim) space and train through a model-level
forward that takes the noise and time we give it; with `train_expert_only` their VLM is frozen, so a
teacher and a student initialised from it hold identical VLM weights and one copy serves both.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from hf_reflow import flow
from hf_reflow.errors import CheckpointError
from hf_reflow.policies.base import PolicyAdapter, same_weights


class VLAAdapter(PolicyAdapter):
    """A LeRobot VLA in hf-reflow's convention; subclasses give the joint forward and the backbone's place."""

    backbone_label: ClassVar[str] = "VLM"  # in messages: "the teacher's <label> can only be shared ..."

    @property
    def action_shape(self) -> tuple[int, int]:
        return self.config.chunk_size, self.config.max_action_dim

    @property
    def action_dim(self) -> int:
        """The real (unpadded) action width."""
        return self.config.output_features["action"].shape[0]

    def action_target(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The dataset chunk padded to (B, chunk, max_action_dim) as LeRobot pads it, and its (B, chunk) mask."""
        pad = batch.get("action_is_pad")
        return self.policy.prepare_action(batch), None if pad is None else ~pad

    @abstractmethod
    def squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        """LeRobot's model-level forward: element-wise squared velocity error (B, chunk, max_action_dim)."""

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
        """Per-sample loss (B,) trimmed to the real action dims, as the policies' own `forward` trims.

        Args:
            noise, action: (B, chunk, max_action_dim) in normalised action space (action padded).
            t: (B,) times.
            mask: (B, chunk) True for real actions (the dataset's `~action_is_pad`); None = all real.
            condition: a prefix from `encode` (the shared-backbone path); None = LeRobot's joint forward.
        """
        if condition is None:
            squared = self.squared_error(batch, noise, action, t)
        else:  # the action expert on the given prefix
            velocity = self.velocity(flow.interpolate(noise, action, t), t, condition)
            squared = (flow.velocity_target(noise, action) - velocity).pow(2)
        return flow.reduce_squared_error(squared[:, :, : self.action_dim], kind=kind, mask=mask)

    # ---- shared frozen backbone ----------------------------------------------------------
    @abstractmethod
    def backbone_owner(self) -> tuple[torch.nn.Module, str]:
        """(the module holding the frozen backbone, the backbone's attribute name in it)."""

    def backbone(self) -> torch.nn.Module:
        owner, name = self.backbone_owner()
        return getattr(owner, name)

    def backbone_frozen(self) -> bool:
        """True when nothing of the backbone trains (`train_expert_only`)."""
        return self.config.train_expert_only and not any(p.requires_grad for p in self.backbone().parameters())

    def share_backbone(self, student: PolicyAdapter) -> None:
        """Make this (teacher) adapter use `student`'s frozen backbone module, dropping its own copy.

        Raises:
            CheckpointError: the student is not of this type, its backbone is not frozen, or it differs.
        """
        label = self.backbone_label
        if type(student) is not type(self) or not student.backbone_frozen():
            raise CheckpointError(
                f"the teacher's {label} can only be shared with a {self.policy_type} student whose {label} is "
                "frozen (policy.train_expert_only=true); set teacher.shared_backbone=false otherwise."
            )
        if not same_weights(self.backbone(), student.backbone()):
            raise CheckpointError(
                f"the student's {label} weights differ from the teacher's, so the backbone cannot be shared; "
                "initialise the student from the teacher (init_from_teacher=true) or set teacher.shared_backbone=false."
            )
        owner, name = self.backbone_owner()
        setattr(owner, name, student.backbone())
