"""What a student regresses (`Targets`) and the plain flow-matching loss over them (`StudentLoss`);
the shortcut stage's loss is `shortcut.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from hf_reflow.policies.base import PolicyAdapter


@dataclass
class Targets:
    """What one micro-batch regresses: the straight line from `noise` to `action` at times `t`.

    Attributes:
        noise: (B, chunk, action_dim) the line's start (t = 1).
        action: (B, chunk, action_dim) its end (t = 0): the dataset's chunk (1-RF) or the teacher's.
        t: (B,) where on the line the velocity is asked for.
        mask: (B, chunk) True for real (not padded) actions, or float loss weights (`flow.executed_weight`);
            None = all real and equal (teacher chunks).
        context: the frozen backbone's output shared by teacher and student, or None.
    """

    noise: Tensor
    action: Tensor
    t: Tensor
    mask: Tensor | None
    context: Any = None


class StudentLoss(nn.Module):
    """Wraps the student so that Accelerate (DDP / FSDP) sees the loss computed in a `forward`."""

    def __init__(self, adapter: PolicyAdapter, flow_cfg: Any) -> None:
        super().__init__()
        self.policy = adapter.policy
        self.adapter, self.flow_cfg = adapter, flow_cfg

    def forward(self, batch: dict[str, Tensor], targets: Targets) -> Tensor:
        # `targets.context`: the frozen backbone's output shared with the teacher (None: the student encodes).
        condition = None if targets.context is None else self.adapter.encode(batch, targets.context)
        losses = self.adapter.loss(batch, targets.noise, targets.action, targets.t, kind=self.flow_cfg.loss,
                                   mask=targets.mask, condition=condition)  # fmt: skip
        return losses.mean()  # losses: (B,)
