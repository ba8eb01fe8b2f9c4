"""ODE sampling of any policy's velocity field with diffusers FlowMatch schedulers.

Integrates from t = 1 (noise) to t = 0 (action), the convention of `hf_reflow.flow`. diffusers'
sigma is our t and its `model_output` is our velocity, so `scheduler.step` computes exactly
`x + (t_next - t) * velocity`: no sign flips.

- `euler`: `FlowMatchEulerDiscreteScheduler` with explicit sigmas 1, 1-1/N, ..., 1/N (the scheduler
  appends 0): LeRobot's own grid, N velocity evaluations. diffusers' default grid would end at
  1/1000 and waste a call, so the sigmas are always passed.
- `heun`: `FlowMatchHeunDiscreteScheduler` with its own grid (it accepts no custom sigmas): N-1
  second-order steps from t = 1 to t = 1/1000, then one Euler step to 0; 2N-1 evaluations.

The velocity function is called with t as a (B,) float tensor in [0, 1], never diffusers'
`timesteps` (t x 1000). `seeded_noise` is the one source of evaluation noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from hf_reflow.flow import lerobot_sigmas

Solver = Literal["euler", "heun"]
SOLVERS: tuple[str, ...] = ("euler", "heun")
MAX_STEPS = 1000
VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,)) -> velocity (B, ...)


@dataclass
class SampleOutput:
    """Result of one ODE solve.

    Attributes:
        action: (B, ...) the end point, in the policy's normalised action space.
        nfe: number of velocity evaluations used.
        path: (S + 1, B, ...) x_t after every full solver step, path[0] = noise; None unless asked.
        times: (S + 1,) the t of each path entry (decreasing); None unless asked.
    """

    action: Tensor
    nfe: int
    path: Tensor | None = None
    times: Tensor | None = None


def seeded_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """Standard normal noise of `shape` (float32, CPU) drawn from a fresh generator seeded with `seed` alone.

    The one source of evaluation noise: equal (shape, seed) give equal noise in any process and after any
    other draw, so step counts and stages of one action shape are compared on the same noise
    (paired evaluation). Move it to the model's device / dtype after drawing, so the draw never changes.
    """
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def make_scheduler(num_steps: int, solver: Solver = "euler", device: torch.device | str | None = None) -> Any:
    """A diffusers FlowMatch scheduler with its timesteps set for one rollout of `num_steps`."""
    if not isinstance(num_steps, int) or not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(
            f"num_steps must be an integer in 1..{MAX_STEPS}, got {num_steps!r}. "
            "Use 1-2 for a reflowed student, ~10 for a 1-RF policy."
        )
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    if solver == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
        scheduler.set_timesteps(sigmas=lerobot_sigmas(num_steps), device=device)
    elif solver == "heun":
        scheduler = FlowMatchHeunDiscreteScheduler(shift=1.0)
        scheduler.set_timesteps(num_steps, device=device)
    else:
        raise ValueError(f"Unknown solver {solver!r}. Choose one of {', '.join(SOLVERS)}.")
    return scheduler


@torch.no_grad()
def integrate(
    velocity_fn: VelocityFn,
    noise: Tensor,
    *,
    num_steps: int = 10,
    solver: Solver = "euler",
    return_path: bool = False,
) -> SampleOutput:
    """Solve the ODE dx/dt = velocity_fn(x, t) from t = 1 (x = noise) down to t = 0.

    Args:
        velocity_fn: maps (x_t (B, ...), t (B,)) to a velocity shaped like x_t.
        noise: (B, ...) the starting point at t = 1.
        num_steps: solver steps (see the module docstring for the NFE of each solver).
        solver: `euler` (LeRobot's grid) or `heun`.
        return_path: also return x_t after every full step and its times.
    """
    scheduler = make_scheduler(num_steps, solver, device=noise.device)
    batch = noise.shape[0]
    x_t = noise
    path, times = [noise], [1.0]
    for index, timestep in enumerate(scheduler.timesteps):
        t = scheduler.sigmas[index].to(torch.float32).expand(batch)  # (B,)
        velocity = velocity_fn(x_t, t)
        x_t = scheduler.step(velocity, timestep, x_t, return_dict=False)[0]
        # Heun's first call of a step only predicts; the step is complete once it is back in
        # first order. Euler has no such state: every call completes a step.
        if return_path and getattr(scheduler, "state_in_first_order", True):
            path.append(x_t)
            times.append(float(scheduler.sigmas[scheduler.step_index]))
    nfe = len(scheduler.timesteps)
    if not return_path:
        return SampleOutput(action=x_t, nfe=nfe)
    if path[-1] is not x_t:  # Heun's last call is a lone Euler step to t = 0
        path.append(x_t)
        times.append(0.0)
    return SampleOutput(
        action=x_t, nfe=nfe, path=torch.stack(path), times=torch.tensor(times, dtype=torch.float32)
    )
