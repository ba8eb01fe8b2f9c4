"""The rectified-flow math: interpolation, targets, timestep samplers, losses, straightness.

Time convention (LeRobot's, used everywhere in hf-reflow):

    t = 1 is noise, t = 0 is the action.
    x_t = t * noise + (1 - t) * action
    velocity target  = d x_t / d t = noise - action
    sampling integrates from t = 1 down to t = 0:  x <- x + (t_next - t) * velocity

1-RF (flow matching) pairs `noise` with a dataset `action`. k+1-RF (reflow) pairs `noise` with
`action = ODE_teacher(noise)`, the k-RF teacher's end point from that very noise, so the straight
line between them is a path the student can follow in one step. A one-step distilled student is
trained at t = 1 only, where `x_t = noise` and the target is `noise - teacher_action`; a k-step one at the
times its k Euler steps query (`euler_grid_times`: 1, 1 - 1/k, ..., 1/k), on the same straight lines. A shortcut
student (`shortcut_*`) also reads the step size d it will be sampled with, and learns that one step of
2d equals two of d of its own velocity, so one network serves 1 and 2 steps. A MeanFlow student
(`meanflow_*`, Geng et al. 2025) reads the same step size d = t - r and regresses the average velocity
u(x_t, r, t) over [r, t] through the MeanFlow identity, so one Euler step of size d is exact along the flow.

This module is pure: tensors in, tensors out; no I/O, no LeRobot import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

TimeSampler = Literal["beta", "uniform", "logit_normal", "u_shaped"]
LossKind = Literal["mse", "pseudo_huber"]
TIME_SAMPLERS: tuple[str, ...] = ("beta", "uniform", "logit_normal", "u_shaped")
LOSSES: tuple[str, ...] = ("mse", "pseudo_huber")


def _broadcast_time(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against `like` (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
    """Point on the straight line between `action` (t=0) and `noise` (t=1).

    Args:
        noise: (B, chunk, action_dim).
        action: (B, chunk, action_dim), a dataset action (1-RF) or a teacher end point (reflow).
        t: (B,) times in [0, 1].

    Returns:
        x_t: (B, chunk, action_dim).
    """
    t = _broadcast_time(t, noise)
    return t * noise + (1 - t) * action


def velocity_target(noise: Tensor, action: Tensor) -> Tensor:
    """The constant velocity of the straight path: d x_t / d t = noise - action."""
    return noise - action


def sample_time(
    batch_size: int,
    kind: TimeSampler = "beta",
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    u_shaped_a: float = 4.0,
) -> Tensor:
    """Draw training times t in (0, 1], shape (B,), float32.

    - `beta`: SmolVLA / pi0's Beta(1.5, 1) * 0.999 + 0.001 (leans to the noise end).
    - `uniform`: U(0, 1).
    - `logit_normal`: diffusers' `compute_density_for_timestep_sampling("logit_normal")` gives
      u = sigmoid(N(mean, std)) where small u is the noise end (index 0 of a diffusers schedule is
      sigma = 1); so t = 1 - u. With mean 0 the distribution is symmetric anyway.
    - `u_shaped`: Lee et al. 2024, p(t) ∝ cosh(a (2t - 1)), sampled by inverting its CDF. It puts
      weight at both ends, where a reflowed student must be exact for 1-step sampling.
    """
    if kind == "beta":
        # Beta(1.5, 1) by inverting its CDF F(u) = u^1.5: same law as LeRobot's sampler, but it
        # takes a generator and runs on CPU (Beta's dirichlet kernel is missing on some backends).
        u = torch.rand(batch_size, generator=generator) ** (1 / 1.5)
        return (u * 0.999 + 0.001).to(device=device, dtype=torch.float32)
    if kind == "uniform":
        return (1.0 - torch.rand(batch_size, generator=generator)).to(
            device=device, dtype=torch.float32
        )  # (0, 1]
    if kind == "logit_normal":
        from diffusers.training_utils import compute_density_for_timestep_sampling

        if generator is None:
            u = compute_density_for_timestep_sampling(
                "logit_normal", batch_size, logit_mean=logit_mean, logit_std=logit_std
            )
        else:  # same law; diffusers' helper takes no generator
            u = torch.sigmoid(logit_mean + logit_std * torch.randn(batch_size, generator=generator))
        return (1.0 - u).to(device=device, dtype=torch.float32)
    if kind == "u_shaped":
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        # With s = 2t - 1 in [-1, 1]: density a cosh(a s) / (2 sinh a),
        # CDF (sinh(a s) + sinh a) / (2 sinh a)  ->  s = asinh((2u - 1) sinh a) / a.
        s = torch.asinh((2 * u - 1) * math.sinh(u_shaped_a)) / u_shaped_a
        return ((s + 1) / 2).to(device=device, dtype=torch.float32)
    raise ValueError(f"Unknown time sampler {kind!r}. Choose one of {', '.join(TIME_SAMPLERS)}.")


def pseudo_huber_c(num_elements: int) -> float:
    """Lee et al.'s default c = 0.00054 * sqrt(d) for a sample with d elements."""
    return 0.00054 * math.sqrt(num_elements)


def flow_loss(
    velocity: Tensor,
    target: Tensor,
    *,
    kind: LossKind = "mse",
    mask: Tensor | None = None,
    huber_c: float | None = None,
) -> Tensor:
    """Per-sample regression loss between predicted and target velocity.

    Args:
        velocity: (B, chunk, action_dim) model output.
        target: (B, chunk, action_dim).
        kind: `mse` (mean of squared errors) or `pseudo_huber` (sqrt(||d||^2 + c^2) - c over the
            whole sample, Lee et al. 2024; robust to the outliers of imperfect couplings).
        mask: optional (B, chunk) bool, True where the action is real (False = padding), or float weights
            (0 for padding; `executed_weights` times the padding mask).
        huber_c: pseudo-Huber c; default `pseudo_huber_c(chunk * action_dim)`.

    Returns:
        (B,) loss per sample.
    """
    return reduce_squared_error((velocity - target).pow(2), kind=kind, mask=mask, huber_c=huber_c)


def reduce_squared_error(
    sq: Tensor, *, kind: LossKind = "mse", mask: Tensor | None = None, huber_c: float | None = None
) -> Tensor:
    """Per-sample loss (B,) from element-wise squared velocity errors sq (B, chunk, action_dim).

    Policies whose own forward returns squared errors (SmolVLA, pi0) are reduced here, like `flow_loss`.
    """
    if mask is not None:
        sq = sq * mask.unsqueeze(-1).to(sq.dtype)
    flat = sq.flatten(1)  # (B, chunk * action_dim)
    if kind == "mse":
        if mask is None:
            return flat.mean(dim=1)
        count = mask.sum(dim=1).clamp(min=1) * sq.shape[-1]
        return flat.sum(dim=1) / count
    if kind == "pseudo_huber":
        c = pseudo_huber_c(flat.shape[1]) if huber_c is None else huber_c
        if c < 0:
            raise ValueError(f"pseudo-Huber c must be >= 0, got {c}.")
        sum_sq = flat.sum(dim=1)
        if c == 0:  # the plain L2 norm
            return torch.sqrt(sum_sq)
        # sqrt(s + c^2) - c written as s / (sqrt(s + c^2) + c): the same value, without the cancellation
        # that leaves ~1e-10 instead of 0 in float32 at s = 0 (and loses precision for s << c^2).
        return sum_sq / (torch.sqrt(sum_sq + c * c) + c)
    raise ValueError(f"Unknown loss {kind!r}. Choose one of {', '.join(LOSSES)}.")


def executed_weights(chunk: int, executed: int, weight: float) -> Tensor:
    """(chunk,) loss weights: `weight` for the first `executed` actions (those a policy runs before it
    re-plans), 1 for the rest, scaled to mean 1 so the loss keeps its scale. weight = 1: all ones."""
    if not 1 <= executed <= chunk:
        raise ValueError(f"executed actions must be in 1..chunk ({chunk}), got {executed}.")
    w = torch.ones(chunk)
    w[:executed] = weight
    return w * (chunk / w.sum())


def distillation_inputs(noise: Tensor, teacher_action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs of a one-step student (InstaFlow-style): t = 1, x_t = noise, target noise - teacher_action.

    With this target one Euler step from t = 1 lands exactly on the teacher's end point.

    Returns:
        (x_t, t, target) with t of shape (B,).
    """
    t = torch.ones(noise.shape[0], device=noise.device, dtype=torch.float32)
    return noise, t, velocity_target(noise, teacher_action)


def lerobot_sigmas(num_steps: int) -> list[float]:
    """LeRobot's Euler grid without the final 0: [1, 1 - 1/N, ..., 1/N], the times an N-step sampler queries."""
    return [1.0 - i / num_steps for i in range(num_steps)]


def euler_grid_times(batch: int, num_steps: int, device: torch.device | str | None = None) -> Tensor:
    """(B,) times drawn uniformly from the k-step Euler grid 1, 1 - 1/k, ..., 1/k (LeRobot's sampler).

    A k-step distilled student is queried only there, so it is trained only there. The grid of any n that
    divides k is part of it (t = 1 is in every grid: the one-step jump is always trained). k = 1 draws
    nothing from the random stream: all ones, as `distillation_inputs`.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if num_steps == 1:
        return torch.ones(batch, device=device, dtype=torch.float32)
    grid = torch.tensor(lerobot_sigmas(num_steps), device=device, dtype=torch.float32)  # (k,)
    return grid[torch.randint(num_steps, (batch,), device=device)]


def shortcut_levels(min_step: float) -> list[float]:
    """Step sizes a shortcut student knows: min_step, 2 min_step, ..., 1 (min_step = 1 / 2^n)."""
    n = round(math.log2(1.0 / min_step))
    if not 0 < min_step <= 1 or abs(2.0**-n - min_step) > 1e-12:
        raise ValueError(f"shortcut min_step must be 1 / 2^n in (0, 1], e.g. 0.125; got {min_step}.")
    return [2.0 ** (j - n) for j in range(n + 1)]


def shortcut_step_size(num_steps: int, min_step: float) -> float:
    """The step size a shortcut student is told when sampling with `num_steps` Euler steps.

    1 / num_steps, but never below the smallest trained level, which is the plain flow (its teacher's
    velocity): 10 steps at min_step 1/8 run the flow level.
    """
    return max(1.0 / num_steps, min_step)


def sample_shortcut_pairs(
    batch_size: int, min_step: float, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(t, d) for the consistency term: one step of size 2d from t must equal two steps of size d.

    2d is drawn uniformly from the levels above min_step, and t uniformly from the grid {2d, 4d, ..., 1},
    where a 1/(2d)-step sampler evaluates the student (so t - 2d >= 0). Both (B,) float32.
    """
    doubled = torch.tensor(shortcut_levels(min_step)[1:], dtype=torch.float64)  # (L,)
    if len(doubled) == 0:
        raise ValueError("shortcut min_step 1 leaves no level to distil: use min_step <= 0.5.")
    big = doubled[torch.randint(len(doubled), (batch_size,), generator=generator)]  # 2d, (B,)
    slots = torch.floor(torch.rand(batch_size, generator=generator, dtype=torch.float64) / big)  # 0..1/(2d) - 1
    t = 1.0 - slots * big  # the grid points of a 1/(2d)-step solve, from t = 1 down
    return t.to(device=device, dtype=torch.float32), (big / 2).to(device=device, dtype=torch.float32)


def shortcut_target(velocity_at: Callable[[Tensor, Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor, d: Tensor) -> Tensor:
    """Target of one step of size 2d from (x_t, t): the mean velocity of two Euler steps of size d.

    velocity_at(x, t, d) is the model's own velocity at step size d (no gradient needed). With
    v1 = v(x_t, t, d) and v2 = v(x_t - d v1, t - d, d), two steps land at x_t - d (v1 + v2), so a
    single step of 2d lands there too when its velocity is (v1 + v2) / 2 (Frans et al. 2024).
    x_t (B, chunk, action_dim); t, d (B,).
    """
    v1 = velocity_at(x_t, t, d)
    x_mid = x_t - _broadcast_time(d, x_t) * v1
    v2 = velocity_at(x_mid, t - d, d)
    return (v1 + v2) / 2


def meanflow_times(a: Tensor, b: Tensor, mean_share: float, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(t, r) pairs for the MeanFlow loss from two time draws a, b (B,) of the stage's sampler.

    t = max(a, b), r = min(a, b) on a `mean_share` of the batch (chosen at random); elsewhere r = t, where
    the average velocity is the instantaneous one (the plain flow loss). Both (B,), r <= t.
    """
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    keep = torch.rand(a.shape[0], generator=generator) < mean_share  # (B,) True: an interval, False: r = t
    return t, torch.where(keep.to(r.device), r, t)


def meanflow_target(velocity: Tensor, dudt: Tensor, t: Tensor, r: Tensor) -> Tensor:
    """The MeanFlow identity's target for the average velocity over [r, t] (Geng et al. 2025, eq. 6).

    With u(x_t, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds, differentiating (t - r) u in t gives
    u = v(x_t, t) - (t - r) du/dt, where du/dt = v . d_x u + d_t u is the total derivative along the flow
    (a Jacobian-vector product with tangent (v, 1) in (x_t, t), r fixed). The caller detaches it.

    Args:
        velocity: (B, chunk, action_dim) v at x_t; on a coupling's straight line, noise - action.
        dudt: (B, chunk, action_dim) the model's du/dt at (x_t, r, t).
        t, r: (B,) the interval's ends, r <= t (t = 1 noise, as everywhere).
    """
    return velocity - _broadcast_time(t - r, velocity) * dudt


def adaptive_loss(prediction: Tensor, target: Tensor, *, power: float, c: float = 1e-3, mask: Tensor | None = None) -> Tensor:
    """MeanFlow's adaptively weighted squared error per sample (Geng et al. 2025, sec. 4.3), (B,).

    sg(w) * ||e||^2 with w = 1 / (||e||^2 + c)^power over each sample's elements e = prediction - target
    (power 1: ~ ||e||^2 / (||e||^2 + c), bounded, so a few far-off targets cannot dominate a batch; 0: plain
    sum of squares). prediction, target (B, chunk, action_dim); mask (B, chunk) as in `flow_loss`.
    """
    sq = (prediction - target).pow(2)
    if mask is not None:
        sq = sq * mask.unsqueeze(-1).to(sq.dtype)
    total = sq.flatten(1).sum(dim=1)  # (B,)
    return total / (total.detach() + c).pow(power)


def straightness(path: Tensor, times: Tensor) -> Tensor:
    """Straightness of a recorded ODE path (Liu et al.), 0 for a straight path.

    S = ∫_0^1 E||(noise - action_end) - v(x_t, t)||^2 dt, with the velocity on each solver interval
    taken as the path's own mean velocity there, (x_i - x_{i+1}) / (t_i - t_{i+1}), so it works for
    any solver. The norm is a mean over elements (per-element scale, independent of chunk size).

    Args:
        path: (S + 1, B, ...) states x_t, path[0] = noise at t = 1, path[-1] the end point.
        times: (S + 1,) the t of each state, decreasing.

    Returns:
        (B,) straightness per sample.
    """
    dt = (times[:-1] - times[1:]).to(path.dtype)  # (S,) positive interval lengths
    span = times[0] - times[-1]
    shape = (-1,) + (1,) * (path.dim() - 1)
    velocities = (path[:-1] - path[1:]) / dt.reshape(shape)  # (S, B, ...)
    mean_velocity = (path[0] - path[-1]) / span  # (B, ...) = noise - action_end when span = 1
    err = (velocities - mean_velocity).pow(2).reshape(*velocities.shape[:2], -1).mean(dim=2)  # (S, B)
    return (err * dt.unsqueeze(1)).sum(dim=0) / span
