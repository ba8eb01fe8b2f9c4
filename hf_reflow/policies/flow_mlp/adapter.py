"""hf-reflow adapter for the built-in `flow_mlp` policy."""

from __future__ import annotations

from torch import Tensor

from hf_reflow.policies.base import PolicyAdapter


class FlowMLPAdapter(PolicyAdapter):
    """`encode` is the state encoder; `velocity` the residual MLP. Loss: the base straight-line loss."""

    policy_type = "flow_mlp"
    supports_step_size = True

    @property
    def action_shape(self) -> tuple[int, int]:
        return self.config.chunk_size, self.policy.model.action_dim

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        return self.policy.condition(batch)  # (B, hidden): state + task

    def encode_at_step_size(self, batch: dict[str, Tensor], step_size: Tensor) -> Tensor:
        if not self.config.step_size_conditioning:
            raise NotImplementedError("this flow_mlp reads no step size: set policy.step_size_conditioning=true.")
        return self.policy.condition(batch, step_size)  # (B, hidden)

    def velocity(self, x_t: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        return self.policy.model.velocity(x_t, t, condition)
