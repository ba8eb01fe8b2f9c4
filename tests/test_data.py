"""The in-memory dataset equals LeRobotDataset item by item (same chunks, same padding flags)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_POLICY, assert_same_batch
from torch.utils.data import DataLoader, default_collate


@pytest.mark.parametrize("episodes", [None, [1, 4, 5]])
def test_in_memory_frames_equal_lerobot_items(toy_dataset, episodes):
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import InMemoryFrames, batch_loader, load_metadata, policy_features
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
    rows = [len(dataset) - 1, 0, 5, 0]  # unsorted, repeated: a batch's indices
    assert_same_batch(frames.read_batch(rows), default_collate([dataset[i] for i in rows]))
    # The trainer's loader yields what torch's DataLoader over the items yields, batch by batch, whether the
    # dataset reads a batch at once (in memory) or item by item (LeRobot's).
    sampler = [rows, [1, 2, 3], [len(dataset) - 2]]
    for source in (frames, dataset):
        loaded = zip(batch_loader(source, sampler), DataLoader(dataset, batch_sampler=sampler), strict=True)
        for got, expected in loaded:
            assert_same_batch(got, expected)


def test_camera_batches_augment_in_the_order_items_do():
    """Two cameras, a random transform: a batch read at once draws each frame's cameras in turn, as item by
    item, so its augmented frames equal the collated items' under the same seed."""
    from hf_reflow.data import InMemoryFrames

    frames = object.__new__(InMemoryFrames)  # the columns a dataset would give, without building one
    frames.camera_keys = ["observation.images.a", "observation.images.b"]
    frames.columns = {key: torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8) for key in frames.camera_keys}
    frames.columns["task"], frames.length = ["reach"] * 6, 6
    frames.image_transforms = lambda image: image + torch.rand(())  # one random draw per camera frame
    rows = [4, 0, 4]
    torch.manual_seed(0)
    batch = frames.read_batch(rows)
    torch.manual_seed(0)
    assert_same_batch(batch, default_collate([frames[i] for i in rows]))


def test_in_memory_camera_frames_equal_lerobot_items(image_dataset):
    """Camera frames held as uint8 come out as LeRobot's float [0, 1] CHW, bitwise; `auto` holds a small image
    dataset in memory; `always` refuses a video dataset in one line."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import InMemoryFrames, fits_in_memory, load_metadata

    dataset = LeRobotDataset("local/tiny_images", root=image_dataset, delta_timestamps={"action": [0.0, 0.1, 0.2]})
    frames = InMemoryFrames(dataset)
    key = dataset.meta.camera_keys[0]
    assert frames.columns[key].dtype == torch.uint8  # a quarter of the float memory
    for i in (0, 7, len(dataset) - 1):
        expected, got = dataset[i], frames[i]
        assert expected.keys() == got.keys()
        for name, value in expected.items():
            if torch.is_tensor(value):
                assert value.dtype == got[name].dtype and torch.equal(value, got[name]), (name, i)
    rows = [7, 0, len(dataset) - 1]
    assert_same_batch(frames.read_batch(rows), default_collate([dataset[i] for i in rows]))
    meta = load_metadata(DatasetConfig(root=str(image_dataset)))
    assert fits_in_memory(meta, len(dataset)) and not fits_in_memory(meta, 10**9)


def test_dataset_image_transforms_augment_the_frames_as_lerobot_train(image_dataset):
    """lerobot-train's --dataset.image_transforms.*: LeRobot's ImageTransforms on every camera frame."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hf_reflow.data import make_dataset
    from hf_reflow.parsing import parse_train_config

    config = parse_train_config([f"--dataset.root={image_dataset}", "--dataset.image_transforms.enable=true",
                                 "--dataset.image_transforms.max_num_transforms=2"])  # fmt: skip
    assert config.dataset.image_transforms.enable and config.dataset.image_transforms.max_num_transforms == 2
    torch.manual_seed(0)
    augmented = make_dataset(config.dataset, config.policy)
    plain = LeRobotDataset("local/tiny_images", root=image_dataset)
    key = next(k for k in plain.meta.camera_keys)
    assert augmented.image_transforms is not None
    assert any(not torch.equal(augmented[i][key], plain[i][key]) for i in range(5))
    assert make_dataset(parse_train_config([f"--dataset.root={image_dataset}"]).dataset, config.policy).image_transforms is None
