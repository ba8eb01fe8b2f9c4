"""The shortcut stage: its math in closed form, a student that starts as its teacher, training end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import run_stock_python, train_config, train_tiny_stage

from hf_reflow import flow
from hf_reflow.artifacts.checkpoints import load_config, load_policy
from hf_reflow.errors import ConfigError
from hf_reflow.policies.base import sample_policy
from hf_reflow.policies.factory import adapter_for


def test_levels_and_step_sizes():
    assert flow.shortcut_levels(0.125) == [0.125, 0.25, 0.5, 1.0]
    assert [flow.shortcut_step_size(n, 0.125) for n in (1, 2, 4, 10)] == [1.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="1 / 2\\^n"):
        flow.shortcut_levels(0.3)


def test_consistency_pairs_lie_on_their_sampling_grid():
    t, d = flow.sample_shortcut_pairs(4096, 0.125, generator=torch.Generator().manual_seed(0))
    assert set(torch.unique(2 * d).tolist()) == {0.25, 0.5, 1.0}
    assert bool((t - 2 * d >= -1e-6).all()) and bool((t <= 1.0).all())
    slots = (1.0 - t) / (2 * d)  # a whole number of 2d-steps below t = 1
    torch.testing.assert_close(slots, slots.round(), atol=1e-5, rtol=0)


def test_shortcut_target_closed_forms():
    x = torch.randn(3, 4, 2)
    t, d = torch.full((3,), 1.0), torch.full((3,), 0.5)
    const = torch.randn(3, 4, 2)
    torch.testing.assert_close(flow.shortcut_target(lambda x_t, t, d: const, x, t, d), const)
    # v(x) = x: v1 = x, x_mid = x - d x, v2 = (1 - d) x, so the target is (2 - d) x / 2.
    target = flow.shortcut_target(lambda x_t, t, d: x_t, x, t, d)
    torch.testing.assert_close(target, (2 - 0.5) * x / 2)
    # Two steps of d from x land where one step of 2d with the target velocity lands.
    two = x - 0.5 * x
    two = two - 0.5 * two
    torch.testing.assert_close(x - 1.0 * target, two)


def test_a_shortcut_student_starts_as_its_teacher_at_every_step_size(teacher_1rf):
    teacher = load_policy(str(teacher_1rf))
    config = load_config(str(teacher_1rf))
    config.step_size_conditioning = True
    student = load_policy(str(teacher_1rf), config=config)  # the step-size input is new, and zero
    batch = {"observation.state": torch.randn(16, 4, generator=torch.Generator().manual_seed(0))}
    x_t = torch.randn(16, 8, 2, generator=torch.Generator().manual_seed(1))
    t = torch.rand(16, generator=torch.Generator().manual_seed(2))
    reference = adapter_for(teacher).velocity(x_t, t, adapter_for(teacher).encode(batch))
    for d in (0.125, 0.25, 0.5, 1.0):
        adapter = adapter_for(student)
        ours = adapter.velocity(x_t, t, adapter.encode_at_step_size(batch, torch.full((16,), d)))
        assert torch.equal(ours, reference)


def test_shortcut_stage_trains_and_loads_in_stock_lerobot(tmp_path, toy_dataset, teacher_1rf):
    path, config, info = train_tiny_stage("shortcut", tmp_path / "sc", toy_dataset, teacher_1rf)
    assert config["step_size_conditioning"] and config["num_steps"] == 1 and (info["stage"], info["k"]) == ("shortcut", 1)
    policy = load_policy(path)
    batch = {"observation.state": torch.randn(4, 4)}
    noise = torch.randn(4, 8, 2)
    for steps in (1, 2):  # our sampler tells the policy its step size as LeRobot's loop does
        policy.config.num_steps = steps
        ours = sample_policy(adapter_for(policy), batch, noise, num_steps=steps).action
        torch.testing.assert_close(ours, policy.predict_action_chunk(batch, noise=noise), atol=1e-5, rtol=0)
    code = ("import sys; from lerobot.utils.import_utils import register_third_party_plugins; "
            "register_third_party_plugins(); from lerobot.policies.factory import get_policy_class; "
            "p = get_policy_class('flow_mlp').from_pretrained(sys.argv[1]); "
            "print(p.config.step_size_conditioning, p.model.step_mlp is not None)")  # fmt: skip
    proc = run_stock_python(code, path)
    assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["True", "True"], proc.stderr[-2000:]


def test_shortcut_settings_are_checked():
    with pytest.raises(ConfigError, match="shortcut.min_step"):
        train_config(stage="shortcut", teacher__path="x", shortcut__min_step=0.3)
    with pytest.raises(ConfigError, match="shortcut.min_step"):
        train_config(stage="shortcut", teacher__path="x", shortcut__min_step=1.0)
    with pytest.raises(ConfigError, match="consistency_weight"):
        train_config(stage="shortcut", teacher__path="x", shortcut__consistency_weight=float("nan"))
