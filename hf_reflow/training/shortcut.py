"""The `shortcut` stage's loss: one student serves 1 and 2 steps (self-distillation of its own flow).

The student starts as its k-RF teacher plus a step-size input initialised to zero (`flow_mlp` with
`step_size_conditioning`), so at step 0 it is exactly the teacher at every step size. It is trained on
the teacher's couplings (noise, end point) with two terms, both on the whole batch:

- flow: at the smallest step size d_min, regress the straight-line velocity noise - end point, as a
  reflow round does (this level stays the teacher's flow);
- consistency: at a level 2d in 2 d_min .. 1 and a time t on that level's sampling grid, one step of 2d
  must land where two steps of d of the student's own (no-grad) velocity land (`flow.shortcut_target`).

Frans et al. 2024 (shortcut models); SnapFlow (arXiv 2604.05656) reports a 1-step pi0.5 at its 10-step
teacher's LIBERO success with this kind of self-distillation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hf_reflow import flow
from hf_reflow.errors import ConfigError
from hf_reflow.policies.base import PolicyAdapter
from hf_reflow.training.losses import Targets


def check_supported(adapter: PolicyAdapter, stage: str = "shortcut") -> None:
    """The shortcut and meanflow stages need a student that reads its step size."""
    if not adapter.supports_step_size:
        raise ConfigError(
            f"stage {stage} needs a policy that reads its step size; a {adapter.policy_type} student cannot. "
            "Use flow_mlp, or a distill stage for a one-step student."
        )


class ShortcutLoss(nn.Module):
    """flow loss at d_min + weight x consistency loss; Accelerate sees it computed in `forward`."""

    def __init__(self, adapter: PolicyAdapter, flow_cfg: Any, shortcut_cfg: Any) -> None:
        super().__init__()
        check_supported(adapter)
        self.policy = adapter.policy
        self.adapter, self.flow_cfg, self.shortcut_cfg = adapter, flow_cfg, shortcut_cfg

    def _velocity_at(self, batch: dict[str, Any], d: Tensor):
        """(x_t, t, _) -> velocity of the student told step size d (B,); the condition is encoded once."""
        condition = self.adapter.encode_at_step_size(batch, d)
        return lambda x_t, t, _d: self.adapter.velocity(x_t, t, condition)

    def forward(self, batch: dict[str, Tensor], targets: Targets) -> Tensor:
        # noise, action: (B, chunk, action_dim) a coupling; t: (B,) from the stage's time sampler.
        noise, action, t, mask = targets.noise, targets.action, targets.t, targets.mask
        kind = self.flow_cfg.loss
        d_min = torch.full_like(t, self.shortcut_cfg.min_step)
        x_t = flow.interpolate(noise, action, t)
        velocity = self._velocity_at(batch, d_min)(x_t, t, d_min)
        flow_loss = flow.flow_loss(velocity, flow.velocity_target(noise, action), kind=kind, mask=mask)
        t_grid, d = flow.sample_shortcut_pairs(noise.shape[0], self.shortcut_cfg.min_step, device=noise.device)
        x_grid = flow.interpolate(noise, action, t_grid)
        with torch.no_grad():  # both half steps run at the same d: one condition serves them
            target = flow.shortcut_target(self._velocity_at(batch, d), x_grid, t_grid, d)
        consistency = flow.flow_loss(self._velocity_at(batch, 2 * d)(x_grid, t_grid, 2 * d), target, kind=kind, mask=mask)
        return flow_loss.mean() + self.shortcut_cfg.consistency_weight * consistency.mean()
