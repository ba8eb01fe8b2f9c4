"""`flow_mlp`: a small flow-matching policy (residual MLP over the action chunk), fast on CPU.

A proper LeRobot `PreTrainedPolicy`: `FlowMLPPolicy.from_pretrained(dir)` loads it, `select_action`
runs it in an env with an action queue of `n_action_steps`, and `predict_action_chunk` integrates
its velocity field with LeRobot's own Euler loop for `config.num_steps` steps.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from lerobot.policies.common.flow_matching import euler_integrate, sample_noise
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_STATE
from torch import Tensor, nn

from hf_reflow import flow
from hf_reflow.errors import ConfigError
from hf_reflow.policies.flow_mlp.configuration_flow_mlp import FlowMLPConfig


def time_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1]: (B,) -> (B, dim), angles scale * t * 10000^(-i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = scale * t.float().unsqueeze(1) * freqs.unsqueeze(0)  # 1000: low frequencies still vary in t
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class FiLMBlock(nn.Module):
    """h + MLP(LayerNorm(h) * (1 + scale) + shift), with (scale, shift) from the condition."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.film = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class FlowMLP(nn.Module):
    """Velocity field v(x_t, t | state) over a flattened action chunk."""

    def __init__(self, config: FlowMLPConfig) -> None:
        super().__init__()
        self.config = config
        state_dim = config.input_features[OBS_STATE].shape[0]
        self.action_dim = config.output_features[ACTION].shape[0]
        width, flat = config.hidden_dim, config.chunk_size * self.action_dim
        self.state_encoder = nn.Sequential(nn.Linear(state_dim, width), nn.SiLU(), nn.Linear(width, width))
        # One learned vector per known task, added to the state's condition (absent when task-blind).
        self.task_embedding = nn.Embedding(len(config.tasks), width) if config.tasks else None
        self.step_mlp = None
        if config.step_size_conditioning:  # a shortcut student: d enters the condition, from zero
            self.step_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, width), nn.SiLU(), nn.Linear(width, width))
            nn.init.zeros_(self.step_mlp[-1].weight)
            nn.init.zeros_(self.step_mlp[-1].bias)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.action_in = nn.Linear(flat, width)
        self.blocks = nn.ModuleList(FiLMBlock(width) for _ in range(config.num_blocks))
        self.action_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, flat))

    def encode(self, state: Tensor, task_index: Tensor | None = None, step_size: Tensor | None = None) -> Tensor:
        """(B, state_dim) state [+ (B,) task index, (B,) step size] -> (B, hidden) condition, once per solve."""
        cond = self.state_encoder(state)
        if self.task_embedding is not None:
            cond = cond + self.task_embedding(task_index)
        if self.step_mlp is not None:
            embedded = time_embedding(step_size, self.config.time_embed_dim, self.config.step_embed_scale)
            cond = cond + self.step_mlp(embedded.to(cond.dtype))
        return cond

    @torch.no_grad()
    def silence_blocks(self, first: int) -> None:
        """Make blocks `first`, `first + 1`, ... add nothing (their output layer zero): each is then the identity
        (h + 0), so a deeper student whose first blocks hold a shallower teacher's weights starts as exactly that
        teacher, and its new blocks still learn (their inner layers stay random, as a new block's)."""
        for block in self.blocks[first:]:
            nn.init.zeros_(block.mlp[-1].weight)
            nn.init.zeros_(block.mlp[-1].bias)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x_t (B, chunk, action_dim), t (B,), cond (B, hidden) -> velocity (B, chunk, action_dim)."""
        c = cond + self.time_mlp(time_embedding(t, self.config.time_embed_dim).to(cond.dtype))
        h = self.action_in(x_t.flatten(1))
        for block in self.blocks:
            h = block(h, c)
        return self.action_out(h).view_as(x_t)


class FlowMLPPolicy(PreTrainedPolicy):
    """LeRobot policy wrapper around `FlowMLP`."""

    config_class = FlowMLPConfig
    name = "flow_mlp"

    def __init__(self, config: FlowMLPConfig, **kwargs) -> None:
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.model = FlowMLP(config)
        self.reset()

    def get_optim_params(self) -> dict:
        return self.parameters()

    def reset(self) -> None:
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def _state(self, batch: dict[str, Tensor]) -> Tensor:
        state = batch[OBS_STATE]
        return state[:, -1] if state.dim() == 3 else state  # (B, state_dim)

    def task_index(self, batch: dict[str, Any], state: Tensor) -> Tensor | None:
        """(B,) indices of the batch's task strings in `config.tasks`; None for a task-blind policy."""
        if not self.config.tasks:
            return None
        tasks = batch.get("task")
        if tasks is None:
            raise ConfigError(
                f"this flow_mlp policy is task-conditioned but the batch has no 'task'; pass "
                f"batch['task'] = one of {self.config.tasks}."
            )
        batch_size = state.shape[0]
        tasks = [tasks] * batch_size if isinstance(tasks, str) else list(tasks)
        unknown = sorted(set(tasks) - set(self.config.tasks))
        if unknown or len(tasks) != batch_size:
            raise ConfigError(
                f"unknown task {unknown[0]!r} for this flow_mlp policy; it knows {self.config.tasks}."
                if unknown
                else f"batch['task'] has {len(tasks)} entries for {batch_size} states; give one task per state."
            )
        lookup = {task: i for i, task in enumerate(self.config.tasks)}
        return torch.tensor([lookup[task] for task in tasks], device=state.device)

    def condition(self, batch: dict[str, Any], step_size: Tensor | None = None) -> Tensor:
        """The velocity field's condition (B, hidden) from the batch's state and task.

        A step-size-conditioned (shortcut) policy is told d = `step_size` (B,), by default the step it is
        sampled with now, `flow.shortcut_step_size(config.num_steps, ...)`.
        """
        state = self._state(batch)
        if self.config.step_size_conditioning and step_size is None:
            d = flow.shortcut_step_size(self.config.num_steps, self.config.shortcut_min_step)
            step_size = torch.full((state.shape[0],), d, device=state.device)
        return self.model.encode(state, self.task_index(batch, state), step_size)

    def forward(
        self, batch: dict[str, Tensor], noise: Tensor | None = None, time: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        """Flow-matching loss on the batch's normalised action chunk (padding masked)."""
        action = batch[ACTION]  # (B, chunk, action_dim)
        noise = sample_noise(action.shape, action.device) if noise is None else noise
        time = flow.sample_time(action.shape[0], "beta", device=action.device) if time is None else time
        x_t = flow.interpolate(noise, action, time)
        velocity = self.model.velocity(x_t, time, self.condition(batch))
        pad = batch.get("action_is_pad")
        losses = flow.flow_loss(velocity, flow.velocity_target(noise, action), mask=None if pad is None else ~pad)
        loss = losses.mean()
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None, **kwargs) -> Tensor:
        """Normalised action chunk (B, chunk, action_dim) after `config.num_steps` Euler steps."""
        state = self._state(batch)
        shape = (state.shape[0], self.config.chunk_size, self.model.action_dim)
        noise = sample_noise(shape, state.device) if noise is None else noise
        cond = self.condition(batch)
        return euler_integrate(lambda x_t, t: self.model.velocity(x_t, t, cond), noise, self.config.num_steps)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None, **kwargs) -> Tensor:
        """One action (B, action_dim); a new chunk is predicted every `n_action_steps` calls."""
        self.eval()
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise=noise)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()
