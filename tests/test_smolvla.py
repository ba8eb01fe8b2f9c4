"""The SmolVLA adapter pinned to LeRobot 0.6.1's own SmolVLA, on a tiny offline SmolVLM."""

from __future__ import annotations

import pytest
import torch

from hf_reflow.checkpoints import load_policy, load_processors
from hf_reflow.configs import DatasetConfig
from hf_reflow.data import make_dataset
from hf_reflow.policies.base import adapter_for
from hf_reflow.policies.smolvla import _lerobot_inputs
from hf_reflow.sampling import sample_policy
from hf_reflow.testing import tiny_smolvla


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    return tiny_smolvla.write_smolvlm_folder(tmp_path_factory.mktemp("vlm") / "tiny_smolvlm")


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory):
    return tiny_smolvla.write_image_dataset(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="session")
def smolvla_teacher(tmp_path_factory, tiny_vlm, image_dataset):
    out = tmp_path_factory.mktemp("ckpt") / "smolvla"
    return tiny_smolvla.write_smolvla_checkpoint(out, vlm_dir=tiny_vlm, dataset_root=image_dataset)


def _batch(checkpoint, dataset_root, size: int = 4) -> dict[str, torch.Tensor]:
    """A preprocessed (normalised, tokenised) training batch with a padded chunk at the episode end."""
    policy_config = load_policy(str(checkpoint)).config
    dataset = make_dataset(DatasetConfig(root=str(dataset_root)), policy_config)
    pre, _ = load_processors(str(checkpoint), policy_config)
    items = [dataset[i] for i in (0, 5, 20, 23)[:size]]  # frames 20 and 23 have padded chunk ends
    batch = torch.utils.data.default_collate(items)
    return pre(batch)


def _noise(adapter, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *adapter.action_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_steps", [1, 2, 5, 10])
def test_sampler_equals_lerobot_sample_actions(smolvla_teacher, image_dataset, num_steps):
    policy = load_policy(str(smolvla_teacher))
    policy.config.num_steps = num_steps
    adapter = adapter_for(policy)
    batch = _batch(smolvla_teacher, image_dataset)
    noise = _noise(adapter, 4, seed=num_steps)
    assert noise.shape == (4, 8, 32)  # padded action space
    ours = sample_policy(adapter, batch, noise, num_steps=num_steps).action
    with torch.no_grad():
        theirs = policy.model.sample_actions(*_lerobot_inputs(policy, batch), noise=noise)
    assert ours.shape == theirs.shape == (4, 8, 32)
    assert (ours - theirs).abs().max() <= 1e-5


def test_loss_equals_lerobot_forward(smolvla_teacher, image_dataset):
    policy = load_policy(str(smolvla_teacher))
    adapter = adapter_for(policy)
    batch = _batch(smolvla_teacher, image_dataset)
    assert batch["action_is_pad"].any()  # the masking path is exercised
    noise = _noise(adapter, 4, seed=1)
    t = torch.rand(4, generator=torch.Generator().manual_seed(2))
    action, mask = adapter.action_target(batch)
    assert action.shape == (4, 8, 32)
    ours = adapter.loss(batch, noise, action, t, mask=mask)
    theirs, _ = policy.forward(dict(batch), noise=noise, time=t, reduction="none")
    assert ours.shape == (4,)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)
