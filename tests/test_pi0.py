"""pi0 / pi0.5 adapters pinned to LeRobot 0.6.1's model-level sampling and loss (tiny offline models)."""

from __future__ import annotations

import pytest
import torch

from hf_reflow.policies.base import sample_policy
from hf_reflow.policies.factory import adapter_for
from hf_reflow.testing import tiny_pi0


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def policy(request):
    return tiny_pi0.make_policy(request.param)


def _lerobot_inputs(adapter, batch):
    inputs = adapter._prefix_inputs(batch)
    return (*inputs, adapter.policy.prepare_state(batch)) if adapter.policy_type == "pi0" else inputs


def test_step_field_and_padded_space(policy):
    adapter = adapter_for(policy)
    assert adapter.steps_field == "num_inference_steps"
    adapter.num_steps = 2
    assert policy.config.num_inference_steps == 2
    assert adapter.action_shape == (8, 32)
    action, mask = adapter.action_target(tiny_pi0.make_batch(policy))
    assert action.shape == (3, 8, 32) and (action[..., 4:] == 0).all()
    assert mask.shape == (3, 8) and not mask[-1, 4:].any()


@pytest.mark.parametrize("num_steps", [1, 2, 10])
def test_sampler_equals_lerobot_sample_actions(policy, num_steps):
    adapter = adapter_for(policy)
    batch = tiny_pi0.make_batch(policy)
    noise = torch.randn(3, *adapter.action_shape, generator=torch.Generator().manual_seed(num_steps))
    ours = sample_policy(adapter, batch, noise, num_steps=num_steps).action
    theirs = policy.model.sample_actions(*_lerobot_inputs(adapter, batch), noise=noise, num_steps=num_steps)
    assert (ours - theirs).abs().max() <= 1e-5


def test_loss_equals_lerobot_policy_forward(policy, monkeypatch):
    """With LeRobot's own noise / time draws pinned to ours, its policy forward gives our per-sample loss."""
    adapter = adapter_for(policy)
    batch = tiny_pi0.make_batch(policy)
    noise = torch.randn(3, *adapter.action_shape, generator=torch.Generator().manual_seed(5))
    t = torch.rand(3, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(policy.model, "sample_noise", lambda shape, device: noise)
    monkeypatch.setattr(policy.model, "sample_time", lambda bsize, device: t)
    action, mask = adapter.action_target(batch)
    theirs, _ = policy.forward(dict(batch), reduction="none")  # LeRobot masks no padding here
    ours = adapter.loss(batch, noise, action, t)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)
    masked = adapter.loss(batch, noise, action, t, mask=mask)  # the 1-RF stage masks padded actions
    assert torch.allclose(masked[:-1], theirs[:-1], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(masked[-1], theirs[-1])


def test_student_loss_trains_only_what_lerobot_trains(policy):
    adapter = adapter_for(policy)
    batch = tiny_pi0.make_batch(policy)
    noise = torch.randn(3, *adapter.action_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        teacher_action = sample_policy(adapter, batch, noise, num_steps=2).action  # a reflow coupling
    policy.train()
    loss = adapter.loss(batch, noise, teacher_action, torch.full((3,), 0.5)).mean()
    loss.backward()
    assert policy.model.action_out_proj.weight.grad is not None
    assert torch.isfinite(loss)
    policy.zero_grad(set_to_none=True)


@pytest.mark.parametrize("policy_type", ["pi0", "pi05"])
def test_shared_backbone_equals_unshared(policy_type):
    """With a frozen PaliGemma the whole prefix is shared: same couplings, loss and gradients."""
    from hf_reflow import sampling

    teacher = adapter_for(tiny_pi0.make_policy(policy_type, train_expert_only=True).requires_grad_(False))
    student_policy = tiny_pi0.make_policy(policy_type, train_expert_only=True).train()
    student = adapter_for(student_policy)
    assert student.backbone_frozen() and not adapter_for(tiny_pi0.make_policy(policy_type)).backbone_frozen()
    with torch.no_grad():  # the student has moved away from the teacher
        student_policy.model.action_out_proj.weight.mul_(1.1)
    batch = tiny_pi0.make_batch(student_policy)
    noise = torch.randn(3, *student.action_shape, generator=torch.Generator().manual_seed(8))
    t = torch.rand(3, generator=torch.Generator().manual_seed(9))

    unshared_action = sample_policy(teacher, batch, noise, num_steps=5).action
    unshared_loss = student.loss(batch, noise, unshared_action, t)
    unshared_loss.mean().backward()
    unshared_grads = {n: p.grad.clone() for n, p in student_policy.named_parameters() if p.grad is not None}
    student_policy.zero_grad(set_to_none=True)

    teacher.share_backbone(student)
    paligemma = student_policy.model.paligemma_with_expert.paligemma
    assert teacher.policy.model.paligemma_with_expert.paligemma is paligemma  # no second copy
    context = teacher.backbone_context(batch)
    with torch.no_grad():
        condition = teacher.encode(batch, context)
        shared_action = sampling.integrate(
            lambda x_t, s: teacher.velocity(x_t, s, condition), noise, num_steps=5
        ).action
    shared_loss = student.loss(batch, noise, shared_action, t, condition=student.encode(batch, context))
    shared_loss.mean().backward()
    shared_grads = {n: p.grad for n, p in student_policy.named_parameters() if p.grad is not None}

    assert (shared_action - unshared_action).abs().max() <= 1e-5
    assert torch.allclose(shared_loss, unshared_loss, atol=1e-6, rtol=1e-5)
    assert shared_grads.keys() == unshared_grads.keys() and "model.action_out_proj.weight" in shared_grads
    for name, grad in shared_grads.items():
        assert torch.allclose(grad, unshared_grads[name], atol=1e-5, rtol=1e-4), name
