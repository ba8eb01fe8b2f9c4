"""Pins hf_reflow.sampling: LeRobot's Euler grid, diffusers' Heun grid, NFE, paths, dtypes, no_grad."""

from __future__ import annotations

import math

import pytest
import torch

from hf_reflow.policies.base import sample_policy
from hf_reflow.sampling import SOLVERS, integrate, make_scheduler, seeded_noise


def _noise(shape=(4, 16, 2), seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _nonlinear_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x) * t.reshape(-1, 1, 1) + 0.5 * x


class _Recorder:
    """Velocity fn that records the t of every call."""

    def __init__(self, fn=_nonlinear_field):
        self.fn = fn
        self.times: list[torch.Tensor] = []

    def __call__(self, x, t):
        self.times.append(t.clone())
        return self.fn(x, t)


# --- Euler ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 3, 10])
def test_euler_matches_lerobot_euler_integrate(num_steps):
    from lerobot.policies.common.flow_matching import euler_integrate

    noise = _noise()
    ours = integrate(_nonlinear_field, noise, num_steps=num_steps, solver="euler").action
    ref = euler_integrate(_nonlinear_field, noise, num_steps)
    assert ours.shape == ref.shape == noise.shape
    assert (ours - ref).abs().max().item() < 1e-6


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_euler_grid_calls_and_path(num_steps):
    noise = _noise()
    fn = _Recorder()
    out = integrate(fn, noise, num_steps=num_steps, return_path=True)
    expected_t = [1 - i / num_steps for i in range(num_steps)]
    assert len(fn.times) == num_steps == out.nfe
    for t, want in zip(fn.times, expected_t, strict=True):
        assert t.shape == (4,) and t.dtype == torch.float32
        torch.testing.assert_close(t, torch.full((4,), want), atol=1e-6, rtol=0)
    assert out.path.shape == (num_steps + 1, *noise.shape)
    assert torch.equal(out.path[0], noise)
    assert torch.equal(out.path[-1], out.action)
    torch.testing.assert_close(out.times, torch.tensor(expected_t + [0.0]), atol=1e-6, rtol=0)


def test_without_path_returns_none():
    out = integrate(_nonlinear_field, _noise(), num_steps=3)
    assert out.path is None and out.times is None and out.nfe == 3


def test_constant_field_is_exact_in_one_step():
    noise = _noise()
    v = _noise(seed=1)
    out = integrate(lambda x, t: v, noise, num_steps=1)
    assert out.nfe == 1
    torch.testing.assert_close(out.action, noise - v)


# --- Heun -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2, 3, 5])
def test_heun_nfe_and_path(num_steps):
    noise = _noise()
    fn = _Recorder()
    out = integrate(fn, noise, num_steps=num_steps, solver="heun", return_path=True)
    assert out.nfe == len(fn.times) == 2 * num_steps - 1
    assert all(t.shape == (4,) for t in fn.times)
    # diffusers' grid: N - 1 second-order steps from 1 to 1/1000, then one Euler step to 0.
    assert out.times[0].item() == pytest.approx(1.0) and out.times[-1].item() == pytest.approx(0.0, abs=1e-7)
    assert (out.times[1:] < out.times[:-1]).all()
    assert out.path.shape[0] == out.times.shape[0] == num_steps + 1
    if num_steps > 1:
        assert out.times[-2].item() == pytest.approx(1e-3)
    assert torch.equal(out.path[0], noise)
    assert torch.equal(out.path[-1], out.action)


@pytest.mark.parametrize("num_steps", [3, 5, 10])
def test_heun_more_accurate_than_euler_on_curved_field(num_steps):
    # dx/dt = x from t = 1 to 0: x(0) = x(1) * exp(-1). At N = 2 diffusers' Heun grid is one Heun step of
    # length 0.999 then Euler over 1/1000, which is less accurate than 2 Euler steps (0.132 vs 0.118).
    noise = torch.ones(1, 1, 1, dtype=torch.float64)
    exact = math.exp(-1)
    euler = integrate(lambda x, t: x, noise, num_steps=num_steps, solver="euler").action.item()
    heun = integrate(lambda x, t: x, noise, num_steps=num_steps, solver="heun").action.item()
    assert abs(heun - exact) < abs(euler - exact)


# --- no_grad, dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_integrate_runs_without_grad(solver):
    weight = torch.nn.Parameter(torch.tensor(0.3))
    out = integrate(lambda x, t: weight * x, _noise(), num_steps=2, solver=solver)
    assert not out.action.requires_grad
    assert out.action.grad_fn is None


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_output_dtype_follows_noise(solver, dtype):
    noise = _noise(dtype=dtype)

    def field(x, t):
        return torch.sin(3 * x) * t.to(x.dtype).reshape(-1, 1, 1) - x

    out = integrate(field, noise, num_steps=3, solver=solver, return_path=True)
    assert out.action.dtype == dtype
    assert out.path.dtype == dtype


# --- make_scheduler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [0, -1, 1001, 2.5])
def test_make_scheduler_rejects_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        make_scheduler(num_steps)


def test_make_scheduler_rejects_unknown_solver():
    with pytest.raises(ValueError, match="euler, heun"):
        make_scheduler(4, "rk4")


def test_integrate_rejects_bad_num_steps():
    with pytest.raises(ValueError):
        integrate(_nonlinear_field, _noise(), num_steps=0)


# --- sample_policy ----------------------------------------------------------------------------------


class _FakeAdapter:
    def __init__(self):
        self.encode_calls = 0
        self.conditions: list[object] = []

    def encode(self, batch):
        self.encode_calls += 1
        return {"scale": batch["scale"]}

    def velocity(self, x_t, t, condition):
        self.conditions.append(condition)
        return condition["scale"] * x_t


@pytest.mark.parametrize(("solver", "num_steps"), [("euler", 1), ("euler", 7), ("heun", 4)])
def test_sample_policy_encodes_once_and_reuses_condition(solver, num_steps):
    adapter = _FakeAdapter()
    noise = _noise()
    out = sample_policy(adapter, {"scale": torch.tensor(0.5)}, noise, num_steps=num_steps, solver=solver)
    assert adapter.encode_calls == 1
    assert len(adapter.conditions) == out.nfe
    first = adapter.conditions[0]
    assert all(c is first for c in adapter.conditions)
    ref = integrate(lambda x, t: 0.5 * x, noise, num_steps=num_steps, solver=solver).action
    torch.testing.assert_close(out.action, ref)


# --- seeded_noise -----------------------------------------------------------------------------------


def test_seeded_noise_is_a_pure_function_of_shape_and_seed():
    """The evaluation's one noise source: the draw every caller made by hand before, whatever the global RNG."""
    torch.manual_seed(123)
    noise = seeded_noise((3, 8, 2), 5)
    torch.manual_seed(456)
    torch.randn(10)  # global draws in between change nothing
    again = seeded_noise((3, 8, 2), 5)
    historical = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(5))
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.equal(noise, again) and torch.equal(noise, historical)
    assert not torch.equal(noise, seeded_noise((3, 8, 2), 6))
    assert torch.equal(seeded_noise((1, 8, 2), 5), noise[:1])  # B = 1 is the first row of the same stream
