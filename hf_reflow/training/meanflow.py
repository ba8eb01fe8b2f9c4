"""The `meanflow` stage's loss: a one-step student that learns the average velocity over an interval.

MeanFlow (Geng et al. 2025; MP1, arXiv 2507.10543, uses it for 1-step Meta-World policies) models
u(x_t, r, t), the mean velocity from t down to r, so that one Euler step x_r = x_t - (t - r) u is exact
along the flow. The student reads it as the step size d = t - r, the input a `shortcut` student has
(`flow_mlp` with `step_size_conditioning`): it starts as its k-RF teacher plus that input at zero, and is
trained on the teacher's couplings (noise, end point), whose straight line gives v = noise - action.

The target comes from the MeanFlow identity u = v - (t - r) du/dt (`flow.meanflow_target`); du/dt, the
derivative along the flow, is one forward-mode Jacobian-vector product (`torch.func.jvp`) of the student
with tangent (v, 1, 1) in (x_t, t, d) (d = t - r moves with t). The target is detached, as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hf_reflow import flow
from hf_reflow.policies.base import PolicyAdapter
from hf_reflow.training.losses import Targets
from hf_reflow.training.shortcut import check_supported


class MeanFlowLoss(nn.Module):
    """Loss of u(x_t, r, t) against the MeanFlow target; Accelerate sees it computed in `forward`."""

    def __init__(self, adapter: PolicyAdapter, flow_cfg: Any, meanflow_cfg: Any) -> None:
        super().__init__()
        check_supported(adapter, "meanflow")
        self.policy = adapter.policy
        self.adapter, self.flow_cfg, self.meanflow_cfg = adapter, flow_cfg, meanflow_cfg

    def mean_velocity_and_derivative(self, batch: dict[str, Any], x_t: Tensor, t: Tensor, r: Tensor,
                                     velocity: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        """u(x_t, r, t) and its total derivative du/dt along `velocity`, both (B, chunk, action_dim)."""

        def mean_velocity(x: Tensor, time: Tensor, step: Tensor) -> Tensor:
            return self.adapter.velocity(x, time, self.adapter.encode_at_step_size(batch, step))

        ones = torch.ones_like(t)
        return torch.func.jvp(mean_velocity, (x_t, t, t - r), (velocity, ones, ones))

    def forward(self, batch: dict[str, Tensor], targets: Targets) -> Tensor:
        # noise, action: (B, chunk, action_dim) a coupling; targets.t (B,): one draw of the stage's sampler.
        noise, action, mask = targets.noise, targets.action, targets.mask
        f = self.flow_cfg
        other = flow.sample_time(noise.shape[0], f.time_sampler, device=noise.device, logit_mean=f.logit_mean,
                                 logit_std=f.logit_std, u_shaped_a=f.u_shaped_a)  # fmt: skip
        t, r = flow.meanflow_times(targets.t, other, self.meanflow_cfg.mean_share)
        velocity = flow.velocity_target(noise, action)
        u, dudt = self.mean_velocity_and_derivative(batch, flow.interpolate(noise, action, t), t, r, velocity)
        target = flow.meanflow_target(velocity, dudt, t, r).detach()
        power = self.meanflow_cfg.adaptive_power
        if power == 0:
            return flow.flow_loss(u, target, kind=f.loss, mask=mask).mean()
        return flow.adaptive_loss(u, target, power=power, mask=mask).mean()
