"""Pins hf_reflow.flow to closed forms (t = 1 noise, t = 0 action, x_t = t noise + (1 - t) action)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_reflow.flow import (
    LOSSES,
    TIME_SAMPLERS,
    distillation_inputs,
    euler_grid_times,
    executed_weights,
    flow_loss,
    interpolate,
    lerobot_sigmas,
    pseudo_huber_c,
    reduce_squared_error,
    sample_time,
    straightness,
    velocity_target,
)

N_MOMENTS = 200_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(shape=(3, 5, 2), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# --- interpolate / velocity_target -----------------------------------------------------------------


def test_interpolate_endpoints_and_closed_form():
    noise, action = _pair()
    ones, zeros = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(interpolate(noise, action, ones), noise)
    torch.testing.assert_close(interpolate(noise, action, zeros), action)
    torch.testing.assert_close(
        interpolate(noise, action, torch.full((3,), 0.25)), 0.25 * noise + 0.75 * action
    )


def test_interpolate_broadcasts_per_sample_time():
    noise, action = _pair((3, 5, 2))
    t = torch.tensor([0.0, 0.3, 1.0])
    x_t = interpolate(noise, action, t)
    assert x_t.shape == (3, 5, 2)
    for i in range(3):
        torch.testing.assert_close(x_t[i], t[i] * noise[i] + (1 - t[i]) * action[i])


def test_velocity_target_is_time_derivative_of_interpolation():
    noise, action = _pair()
    noise, action = noise.double(), action.double()
    t, h = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), 1e-6
    finite_diff = (interpolate(noise, action, t + h) - interpolate(noise, action, t - h)) / (2 * h)
    torch.testing.assert_close(velocity_target(noise, action), noise - action)
    torch.testing.assert_close(finite_diff, velocity_target(noise, action), atol=1e-8, rtol=1e-8)


# --- sample_time ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TIME_SAMPLERS)
def test_sample_time_shape_dtype_range(kind):
    t = sample_time(4096, kind, generator=_gen(1))
    assert t.shape == (4096,)
    assert t.dtype == torch.float32
    assert t.device.type == "cpu"
    assert (t > 0).all() and (t <= 1).all()
    if kind == "beta":
        assert t.min() >= 0.001


@pytest.mark.parametrize("kind", TIME_SAMPLERS)
def test_sample_time_seeded_generator_is_reproducible(kind):
    a = sample_time(1000, kind, generator=_gen(7))
    b = sample_time(1000, kind, generator=_gen(7))
    c = sample_time(1000, kind, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_time_beta_mean():
    t = sample_time(N_MOMENTS, "beta", generator=_gen(2)).double()
    # Beta(1.5, 1) has mean 1.5 / 2.5 = 0.6; std of the mean ~ 0.26 / sqrt(n) ~ 6e-4.
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=3e-3)


def test_sample_time_beta_matches_lerobot_sampler():
    from lerobot.policies.common.flow_matching import sample_time_beta
    from scipy.stats import ks_2samp

    with torch.random.fork_rng():
        torch.manual_seed(3)
        ref = sample_time_beta(N_MOMENTS, "cpu", alpha=1.5, beta=1.0, scale=0.999, offset=0.001)
    ours = sample_time(N_MOMENTS, "beta", generator=_gen(3))
    assert ref.dtype == ours.dtype == torch.float32
    assert ks_2samp(ref.numpy(), ours.numpy()).statistic < 0.01
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    torch.testing.assert_close(torch.quantile(ours, qs), torch.quantile(ref, qs), atol=5e-3, rtol=0)


def test_sample_time_uniform_mean():
    t = sample_time(N_MOMENTS, "uniform", generator=_gen(4)).double()
    assert t.mean().item() == pytest.approx(0.5, abs=3e-3)


def test_sample_time_logit_normal_symmetric_mean():
    t = sample_time(N_MOMENTS, "logit_normal", generator=_gen(5)).double()
    assert t.mean().item() == pytest.approx(0.5, abs=3e-3)


@pytest.mark.parametrize("seeded", [False, True])
def test_sample_time_logit_normal_positive_mean_leans_to_action_end(seeded):
    # diffusers' u = sigmoid(N(1, 1)) is near 1 on average and small u is the noise end, so t = 1 - u
    # has mean 1 - E[sigmoid(N(1, 1))] ~ 0.30: positive logit_mean puts weight near the action (t=0).
    with torch.random.fork_rng():
        torch.manual_seed(6)
        t = sample_time(N_MOMENTS, "logit_normal", logit_mean=1.0, generator=_gen(6) if seeded else None)
    assert t.dtype == torch.float32 and t.shape == (N_MOMENTS,)
    assert t.double().mean().item() < 0.4
    assert (t > 0).all() and (t <= 1).all()


def test_sample_time_u_shaped_is_symmetric_and_u_shaped():
    t = sample_time(N_MOMENTS, "u_shaped", generator=_gen(9)).double()
    assert t.mean().item() == pytest.approx(0.5, abs=3e-3)
    ends = ((t < 0.1).double().mean() + (t > 0.9).double().mean()).item()
    a = 4.0
    closed = 2 * (math.sinh(a * -0.8) + math.sinh(a)) / (2 * math.sinh(a))  # 2 F(0.1) ~ 0.551
    assert ends > 0.5  # uniform would give 0.2
    assert ends == pytest.approx(closed, abs=0.01)


def test_sample_time_u_shaped_matches_closed_form_cdf():
    a = 4.0
    t = sample_time(N_MOMENTS, "u_shaped", generator=_gen(10)).double()
    for point in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95):
        closed = (math.sinh(a * (2 * point - 1)) + math.sinh(a)) / (2 * math.sinh(a))
        assert (t <= point).double().mean().item() == pytest.approx(closed, abs=0.01)


def test_sample_time_unknown_kind_raises_naming_valid_kinds():
    with pytest.raises(ValueError, match="cosine") as info:
        sample_time(4, "cosine")
    for kind in TIME_SAMPLERS:
        assert kind in str(info.value)


# --- flow_loss --------------------------------------------------------------------------------------


def test_flow_loss_mse_is_per_sample_mean_squared_error():
    pred, target = _pair((4, 6, 3))
    loss = flow_loss(pred, target)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean(dim=(1, 2)))


def test_flow_loss_mse_mask_ignores_padding_and_averages_real_elements():
    pred, target = _pair((2, 5, 3))
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    loss = flow_loss(pred, target, mask=mask)
    expected0 = ((pred[0, :3] - target[0, :3]) ** 2).mean()
    expected1 = ((pred[1] - target[1]) ** 2).mean()
    torch.testing.assert_close(loss, torch.stack([expected0, expected1]))
    changed = pred.clone()
    changed[0, 3:] = 1e3
    torch.testing.assert_close(flow_loss(changed, target, mask=mask), loss)


def test_flow_loss_pseudo_huber_closed_form():
    pred, target = _pair((3, 4, 2))
    d = pred - target
    c = pseudo_huber_c(8)
    assert c == pytest.approx(0.00054 * math.sqrt(8))
    expected = torch.sqrt(d.pow(2).sum(dim=(1, 2)) + c * c) - c
    torch.testing.assert_close(flow_loss(pred, target, kind="pseudo_huber"), expected)
    torch.testing.assert_close(
        flow_loss(pred, target, kind="pseudo_huber", huber_c=0.5),
        torch.sqrt(d.pow(2).sum(dim=(1, 2)) + 0.25) - 0.5,
    )


def test_flow_loss_pseudo_huber_asymptotics():
    target = torch.zeros(1, 10, 4, dtype=torch.float64)
    c = pseudo_huber_c(40)
    big = torch.full_like(target, 3.0)
    norm = big.flatten().norm().item()
    assert flow_loss(big, target, kind="pseudo_huber").item() == pytest.approx(norm, rel=1e-3)
    tiny = torch.full_like(target, 1e-7)
    sq = tiny.pow(2).sum().item()
    assert flow_loss(tiny, target, kind="pseudo_huber").item() == pytest.approx(sq / (2 * c), rel=1e-3)


@pytest.mark.parametrize("kind", LOSSES)
def test_flow_loss_zero_when_prediction_equals_target(kind):
    _, target = _pair()
    # Far tighter than float32 rounding near c (sqrt(c^2) - c left 1.16e-10 on some machines).
    torch.testing.assert_close(flow_loss(target.clone(), target, kind=kind), torch.zeros(3), atol=1e-30, rtol=0)


@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-6, 1e-4, 1e-2, 1.0, 1e3])
def test_flow_loss_pseudo_huber_float32_matches_float64(scale):
    """d^2 / (sqrt(d^2 + c^2) + c) keeps float32 relative precision even where d^2 << c^2."""
    pred, target = _pair((3, 4, 2), seed=13)
    pred = target + scale * pred
    exact = flow_loss(pred.double(), target.double(), kind="pseudo_huber")
    loss = flow_loss(pred, target, kind="pseudo_huber")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-30)


def test_flow_loss_pseudo_huber_c_zero_is_the_l2_norm_and_negative_c_is_refused():
    pred, target = _pair((3, 4, 2))
    norms = (pred - target).flatten(1).norm(dim=1)
    torch.testing.assert_close(flow_loss(pred, target, kind="pseudo_huber", huber_c=0.0), norms)
    torch.testing.assert_close(
        flow_loss(target, target, kind="pseudo_huber", huber_c=0.0), torch.zeros(3), atol=1e-30, rtol=0
    )
    with pytest.raises(ValueError, match="c must be >= 0"):
        flow_loss(pred, target, kind="pseudo_huber", huber_c=-1.0)


def test_flow_loss_unknown_kind_raises():
    pred, target = _pair()
    with pytest.raises(ValueError, match="mse"):
        flow_loss(pred, target, kind="l1")


# --- distillation_inputs ----------------------------------------------------------------------------


def test_distillation_inputs_one_euler_step_lands_on_teacher():
    noise, teacher = _pair((4, 5, 2))
    x_t, t, target = distillation_inputs(noise, teacher)
    assert t.shape == (4,) and t.dtype == torch.float32 and torch.equal(t, torch.ones(4))
    assert torch.equal(x_t, noise)
    torch.testing.assert_close(x_t + (0.0 - 1.0) * target, teacher)
    torch.testing.assert_close(interpolate(noise, teacher, t), x_t)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_euler_grid_times_are_the_samplers_grid_drawn_evenly(k):
    torch.manual_seed(0)
    t = euler_grid_times(30_000, k)
    assert t.shape == (30_000,) and t.dtype == torch.float32
    grid = torch.tensor(lerobot_sigmas(k))  # the times LeRobot's (and our) k-step Euler loop queries
    assert torch.isclose(t[:, None], grid[None]).any(dim=1).all()
    shares = torch.isclose(t[:, None], grid[None]).float().mean(dim=0)
    assert torch.allclose(shares, torch.full((k,), 1.0 / k), atol=0.015)


def test_euler_grid_times_one_step_is_distillation_and_draws_nothing():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert torch.equal(euler_grid_times(5, 1), distillation_inputs(torch.zeros(5, 2), torch.zeros(5, 2))[1])
    assert torch.equal(torch.get_rng_state(), before)  # a one-step distill run keeps its random stream
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        euler_grid_times(5, 0)


def test_a_two_step_student_exact_on_its_grid_lands_on_the_teacher():
    # A velocity equal to noise - teacher at t in {1, 0.5} (what two-step distillation regresses there) takes
    # two Euler steps from the noise exactly to the teacher's end point.
    noise, teacher = _pair((4, 5, 2))
    x = noise
    for t, t_next in zip([1.0, 0.5], [0.5, 0.0], strict=True):
        x = x + (t_next - t) * velocity_target(noise, teacher)
        torch.testing.assert_close(x, interpolate(noise, teacher, torch.full((4,), t_next)))
    torch.testing.assert_close(x, teacher)


# --- straightness -----------------------------------------------------------------------------------


def _path_from_field(noise, times, velocity_fn):
    """Exact Euler path on `times` (decreasing) from `noise` at times[0]."""
    xs = [noise]
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        xs.append(xs[-1] + (t_next - t) * velocity_fn(xs[-1], t))
    return torch.stack(xs)


@pytest.mark.parametrize(
    "times",
    [[1.0, 0.5, 0.0], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], [1.0, 0.93, 0.4, 0.05, 0.0]],
)
def test_straightness_zero_for_constant_velocity(times):
    noise, v = _pair((3, 4, 2))
    noise, v = noise.double(), v.double()
    times = torch.tensor(times, dtype=torch.float64)
    path = _path_from_field(noise, times, lambda x, t: v)
    s = straightness(path, times)
    assert s.shape == (3,)
    assert s.abs().max().item() < 1e-10


def test_straightness_positive_for_curved_path():
    noise = torch.randn(3, 4, 2, generator=_gen(11), dtype=torch.float64)
    times = torch.linspace(1, 0, 6, dtype=torch.float64)
    path = _path_from_field(noise, times, lambda x, t: torch.sin(3 * x) * t + x)
    assert (straightness(path, times) > 1e-3).all()


def test_straightness_two_step_closed_form():
    a, b = 0.7, -1.3
    times = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    path = torch.tensor([0.0, a, b], dtype=torch.float64).reshape(3, 1, 1)
    v1, v2, m = (0 - a) / 0.5, (a - b) / 0.5, 0 - b
    expected = 0.5 * (v1 - m) ** 2 + 0.5 * (v2 - m) ** 2
    assert straightness(path, times).item() == pytest.approx(expected, rel=1e-12)


def test_straightness_per_sample_independent_of_batch():
    times = torch.tensor([1.0, 0.7, 0.2, 0.0], dtype=torch.float64)
    path = torch.randn(4, 5, 3, 2, generator=_gen(12), dtype=torch.float64)
    full = straightness(path, times)
    assert full.shape == (5,)
    for i in range(5):
        torch.testing.assert_close(straightness(path[:, i : i + 1], times), full[i : i + 1])
    torch.testing.assert_close(straightness(path[:, [4, 0]], times), full[[4, 0]])


def test_executed_weights_closed_form_and_loss_scale():
    w = executed_weights(16, 8, 3.0)  # 8 x 3 + 8 x 1 = 32 -> scaled by 16 / 32
    assert torch.allclose(w[:8], torch.full((8,), 1.5)) and torch.allclose(w[8:], torch.full((8,), 0.5))
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.allclose(executed_weights(4, 2, 1.0), torch.ones(4))
    # An error only on executed actions costs `weight` times one only on the rest, and uniform errors cost the same.
    sq_first, sq_last = torch.zeros(1, 16, 2), torch.zeros(1, 16, 2)
    sq_first[:, :8], sq_last[:, 8:] = 1.0, 1.0
    weights = w.expand(1, -1)
    first, last = (reduce_squared_error(s, mask=weights) for s in (sq_first, sq_last))
    assert torch.allclose(first, 3 * last)
    assert torch.allclose(reduce_squared_error(torch.ones(1, 16, 2), mask=weights), torch.ones(1))
    with pytest.raises(ValueError, match="executed actions must be in 1..chunk"):
        executed_weights(4, 5, 2.0)
