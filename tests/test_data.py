"""The in-memory dataset equals LeRobotDataset item by item (same chunks, same padding flags)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_POLICY


@pytest.mark.parametrize("episodes", [None, [1, 4, 5]])
def test_in_memory_frames_equal_lerobot_items(toy_dataset, episodes):
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import InMemoryFrames, load_metadata, policy_features
    from hf_reflow.policies.flow_mlp import FlowMLPConfig

    meta = load_metadata(DatasetConfig(root=str(toy_dataset)))
    inputs, outputs = policy_features(meta)
    fields = {k: v for k, v in TINY_POLICY.items() if k != "type"}
    config = FlowMLPConfig(input_features=inputs, output_features=outputs, **fields)
    delta = resolve_delta_timestamps(config, meta)
    dataset = LeRobotDataset("local/toy", root=toy_dataset, delta_timestamps=delta, episodes=episodes)
    frames = InMemoryFrames(dataset)
    assert len(frames) == len(dataset)
    assert any(bool(dataset[i]["action_is_pad"].any()) for i in range(len(dataset)))  # episode ends covered
    for i in range(len(dataset)):
        expected, got = dataset[i], frames[i]
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            if torch.is_tensor(value):
                assert value.dtype == got[key].dtype and torch.equal(value, got[key]), (key, i)
            else:
                assert value == got[key], (key, i)
