"""What each stage regresses: the line (noise -> end point) of a batch and the times it is trained at.

- `flow_matching` (1-RF): the dataset's action chunk.
- `reflow` / `shortcut`: the frozen teacher's ODE end point from fresh noise (online), or a stored coupling.
- `distill`: the same couplings at t = 1 only, so one Euler step reproduces the teacher; a k-step student
  (`num_steps: k`) at the k times its Euler steps query.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from hf_reflow import flow
from hf_reflow.artifacts import couplings_store
from hf_reflow.configs import TrainConfig
from hf_reflow.errors import ConfigError
from hf_reflow.policies.base import PolicyAdapter
from hf_reflow.stages import DISTILL_STAGES
from hf_reflow.training.losses import Targets
from hf_reflow.training.teacher import OnlineTeacher


class TargetMaker:
    """The stage's lines for each batch (`__call__`) and fresh times on the same lines (`retime`)."""

    def __init__(self, config: TrainConfig, teacher: OnlineTeacher | None, *, shared_backbone: bool = False) -> None:
        self.config, self.teacher, self.shared_backbone = config, teacher, shared_backbone

    def __call__(self, adapter: PolicyAdapter, batch: dict[str, Tensor]) -> Targets:
        """The line for this batch: the dataset's chunk (1-RF), stored couplings, or the teacher's ODE end point
        from fresh noise; t from the time sampler, or the student's Euler grid (distill)."""
        data_action, mask = adapter.action_target(batch)  # (B, chunk, action_dim), (B, chunk)
        # Drawn for every batch, also when stored couplings replace it, so that the time draws below (and
        # the README's figures) are the same random stream whichever way the couplings come.
        noise = torch.randn(data_action.shape[0], *adapter.action_shape, device=data_action.device, dtype=data_action.dtype)
        # The shared backbone is the student's own frozen module: no teacher load needed (e.g. stored couplings).
        context = adapter.backbone_context(batch) if self.shared_backbone else None
        if self.config.stage == "flow_matching":
            action = data_action
        elif couplings_store.NOISE_KEY in batch:  # stored couplings
            noise = batch[couplings_store.NOISE_KEY].to(noise)
            action, mask = batch[couplings_store.ACTION_KEY].to(noise), None
        else:
            action, mask = self.teacher.end_points(batch, noise, context), None  # teacher chunks have no padding
        return Targets(noise, action, self.sample_time(noise), self.weigh(adapter, mask, action), context)

    def weigh(self, adapter: PolicyAdapter, mask: Tensor | None, action: Tensor) -> Tensor | None:
        """The padding mask (B, chunk), times `flow.executed_weight` on the executed actions when it is not 1."""
        weight = self.config.flow.executed_weight
        if weight == 1.0:
            return mask
        w = flow.executed_weights(action.shape[1], adapter.policy.config.n_action_steps, weight).to(action)  # (chunk,)
        return w.expand(action.shape[0], -1) if mask is None else mask.to(action.dtype) * w

    def retime(self, targets: Targets) -> Targets:
        """The same lines at fresh times (`coupling_reuse` > 1): no new data, noise or teacher solve."""
        return dataclasses.replace(targets, t=self.sample_time(targets.noise))

    def sample_time(self, noise: Tensor) -> Tensor:
        """(B,) training times for lines starting at `noise` (B, chunk, action_dim); for distill, the Euler grid
        of the step count it is saved with (1 step: t = 1)."""
        if self.config.stage in DISTILL_STAGES:
            return flow.euler_grid_times(noise.shape[0], self.config.final_num_steps, device=noise.device)
        f = self.config.flow
        return flow.sample_time(noise.shape[0], f.time_sampler, device=noise.device, logit_mean=f.logit_mean,
                                logit_std=f.logit_std, u_shaped_a=f.u_shaped_a)  # fmt: skip


def share_backbone(config: TrainConfig, teacher: OnlineTeacher, adapter: PolicyAdapter) -> bool:
    """Let the teacher use the student's frozen backbone when `teacher.shared_backbone` allows (null = when
    possible); returns whether it does."""
    wanted = config.teacher.shared_backbone
    if wanted is False:
        return False
    if not config.init_from_teacher or not adapter.backbone_frozen():
        if wanted:
            raise ConfigError(
                "teacher.shared_backbone=true needs a student initialised from the teacher "
                f"(init_from_teacher={config.init_from_teacher}) with a frozen backbone (e.g. SmolVLA with "
                f"policy.train_expert_only=true; this {adapter.policy_type} student has none frozen); "
                "set teacher.shared_backbone=false or leave it null."
            )
        return False
    teacher.share_backbone_with(adapter)
    return True
