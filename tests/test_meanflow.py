"""The meanflow stage: the MeanFlow identity in closed form, its JVP, its loss at a known field, training
end to end and stock loading."""

from __future__ import annotations

import pytest
import torch
from conftest import run_stock_python, train_config, train_tiny_stage

from hf_reflow import flow
from hf_reflow.artifacts.checkpoints import load_config, load_policy
from hf_reflow.configs import FlowConfig, MeanFlowConfig
from hf_reflow.errors import ConfigError
from hf_reflow.policies.base import sample_policy
from hf_reflow.policies.factory import adapter_for
from hf_reflow.training.losses import Targets
from hf_reflow.training.meanflow import MeanFlowLoss


class FieldAdapter:
    """A stand-in student whose mean velocity is a given closed-form u(x, t, d)."""

    policy_type, supports_step_size = "closed_form", True

    def __init__(self, u) -> None:
        self.u, self.policy = u, torch.nn.Identity()

    def encode_at_step_size(self, batch, step_size):
        return step_size

    def velocity(self, x_t, t, d):
        return self.u(x_t, t, d)


def _meanflow(u, mean_share=1.0, loss="mse") -> MeanFlowLoss:
    return MeanFlowLoss(FieldAdapter(u), FlowConfig(loss=loss), MeanFlowConfig(mean_share=mean_share))


def test_meanflow_target_closed_form():
    # v(x, t) = c t: x_t = x_1 - c (1 - t^2) / 2, so the mean velocity over [r, t] is c (t + r) / 2 and
    # du/dt = c / 2; the identity v - (t - r) du/dt gives it back.
    c = torch.randn(5, 3, 2)
    t, r = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.2]), torch.tensor([0.0, 0.4, 0.5, 0.1, 0.0])
    shape = (-1, 1, 1)
    target = flow.meanflow_target(c * t.view(shape), c / 2, t, r)
    torch.testing.assert_close(target, c * (t + r).view(shape) / 2)


def test_meanflow_times_share_and_order():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4096, generator=g), torch.rand(4096, generator=g)
    t, r = flow.meanflow_times(a, b, 0.25, generator=g)
    assert bool((r <= t).all()) and torch.equal(t, torch.maximum(a, b))
    share = (r < t).float().mean().item()
    assert 0.2 < share < 0.3
    t, r = flow.meanflow_times(a, b, 1.0)
    assert torch.equal(r, torch.minimum(a, b))


def test_jvp_matches_finite_differences_on_a_smooth_field():
    w = torch.randn(2, 2, dtype=torch.float64)
    loss = _meanflow(lambda x, t, d: torch.tanh(x @ w) * (1 + t**2).view(-1, 1, 1) + torch.sin(3 * d).view(-1, 1, 1))
    x, v = torch.randn(6, 4, 2, dtype=torch.float64), torch.randn(6, 4, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    r = t * torch.rand(6, dtype=torch.float64)
    u, dudt = loss.mean_velocity_and_derivative({}, x, t, r, v)
    eps = 1e-6  # move along the flow: x by v, t by 1, r fixed (so d = t - r by 1)
    fd = (loss.adapter.velocity(x + eps * v, t + eps, t - r + eps) - loss.adapter.velocity(x - eps * v, t - eps, t - r - eps)) / (2 * eps)
    torch.testing.assert_close(dudt, fd, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(u, loss.adapter.velocity(x, t, t - r))


def test_jvp_of_a_flow_mlp_student_matches_reverse_mode(teacher_1rf):
    config = load_config(str(teacher_1rf))
    config.step_size_conditioning = True
    student = load_policy(str(teacher_1rf), config=config)
    loss = MeanFlowLoss(adapter_for(student), FlowConfig(), MeanFlowConfig())
    g = torch.Generator().manual_seed(0)
    batch = {"observation.state": torch.randn(8, 4, generator=g)}
    x, v = torch.randn(8, 8, 2, generator=g), torch.randn(8, 8, 2, generator=g)
    t = torch.rand(8, generator=g)
    r = t * torch.rand(8, generator=g)
    _, dudt = loss.mean_velocity_and_derivative(batch, x, t, r, v)

    def u(x, t, d):
        return loss.adapter.velocity(x, t, loss.adapter.encode_at_step_size(batch, d))

    ones = torch.ones(8)
    _, reverse = torch.autograd.functional.jvp(u, (x, t, t - r), (v, ones, ones))
    torch.testing.assert_close(dudt, reverse, atol=1e-4, rtol=1e-4)


def test_loss_is_zero_at_the_exact_mean_velocity_and_not_elsewhere():
    # Couplings noise -> action 0: x_t = t noise, and the mean velocity over any [r, t] is x_t / t.
    noise = torch.randn(64, 4, 2)
    targets = Targets(noise, torch.zeros_like(noise), 0.2 + 0.8 * torch.rand(64), None)
    exact = _meanflow(lambda x, t, d: x / t.view(-1, 1, 1))({}, targets)
    assert exact.item() < 1e-10
    wrong = _meanflow(lambda x, t, d: x)({}, targets)
    assert wrong.item() > 1e-3


def test_meanflow_stage_trains_and_loads_in_stock_lerobot(tmp_path, toy_dataset, teacher_1rf):
    path, config, info = train_tiny_stage("meanflow", tmp_path / "mf", toy_dataset, teacher_1rf)
    assert config["step_size_conditioning"] and config["num_steps"] == 1 and (info["stage"], info["k"]) == ("meanflow", 1)
    assert config["shortcut_min_step"] == pytest.approx(1 / 64)  # told d = 1 / num_steps exactly up to 64 steps
    policy = load_policy(path)
    batch = {"observation.state": torch.randn(4, 4)}
    noise = torch.randn(4, 8, 2)
    for steps in (1, 3):
        policy.config.num_steps = steps
        ours = sample_policy(adapter_for(policy), batch, noise, num_steps=steps).action
        torch.testing.assert_close(ours, policy.predict_action_chunk(batch, noise=noise), atol=1e-5, rtol=0)
    code = ("import sys; from lerobot.utils.import_utils import register_third_party_plugins; "
            "register_third_party_plugins(); from lerobot.policies.factory import get_policy_class; "
            "p = get_policy_class('flow_mlp').from_pretrained(sys.argv[1]); print(p.config.num_steps)")  # fmt: skip
    proc = run_stock_python(code, path)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "1", proc.stderr[-2000:]


def test_meanflow_settings_are_checked():
    for share in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="meanflow.mean_share"):
            MeanFlowConfig(mean_share=share)
    with pytest.raises(ConfigError, match="meanflow.adaptive_power"):
        MeanFlowConfig(adaptive_power=-1.0)
    with pytest.raises(ConfigError, match="executed_weight"):
        train_config(stage="meanflow", teacher__path="x", flow__executed_weight=2.0)


def test_adaptive_loss_closed_form_and_gradient():
    pred = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]], requires_grad=True)  # errors of squared norm 25 and 0
    target = torch.zeros(2, 1, 2)
    loss = flow.adaptive_loss(pred, target, power=1.0, c=1e-3)
    torch.testing.assert_close(loss.detach(), torch.tensor([25 / 25.001, 0.0]))
    loss.sum().backward()  # the weight is a constant: d/dpred = 2 e / (||e||^2 + c)
    torch.testing.assert_close(pred.grad[0, 0], torch.tensor([6.0, 8.0]) / 25.001)
    plain = flow.adaptive_loss(pred.detach(), target, power=0.0)
    torch.testing.assert_close(plain, torch.tensor([25.0, 0.0]))
    masked = flow.adaptive_loss(pred.detach(), target, power=1.0, mask=torch.zeros(2, 1, dtype=torch.bool))
    torch.testing.assert_close(masked, torch.zeros(2))
