"""Offline SmolVLA fixtures: a tiny SmolVLM folder, a small image dataset and a tiny SmolVLA checkpoint.

Nothing is downloaded: the SmolVLM folder comes from the product's builder (`hf_reflow.policies.smolvlm`),
its tokenizer trained on this module's task strings.

    vlm = write_smolvlm_folder(tmp / "vlm")
    data = write_image_dataset(tmp / "data")
    teacher = write_smolvla_checkpoint(tmp / "teacher", vlm_dir=vlm, dataset_root=data)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hf_reflow.policies import smolvlm
from hf_reflow.policies.smolvlm import SmolVLMSize

IMAGE_KEY = "observation.images.top"
TASKS = ("push the red block to the left", "open the drawer", "press the button", "reach the green goal")

TINY = SmolVLMSize()
SMALL = SmolVLMSize(text_hidden=384, text_layers=8, text_heads=6, text_kv_heads=2, vision_hidden=192,
                    vision_layers=4, vision_heads=4, image_size=96, patch_size=16, scale_factor=2)  # fmt: skip
# SmolVLM2-500M's architecture (random weights): text 960 x 32 layers, vision 768 x 12, 512 px, patch 16.
SMOLVLM2_500M = SmolVLMSize(text_hidden=960, text_layers=32, text_heads=15, text_kv_heads=5, vision_hidden=768,
                            vision_layers=12, vision_heads=12, image_size=512, patch_size=16, scale_factor=4,
                            vocab_size=49280)  # fmt: skip


def write_smolvlm_folder(directory: str | Path, size: SmolVLMSize = TINY) -> Path:
    """The product's SmolVLM builder with a tokenizer trained on this module's task strings."""
    return smolvlm.write_smolvlm_folder(directory, size, texts=list(TASKS))


def write_image_dataset(
    root: str | Path,
    *,
    episodes: int = 4,
    length: int = 24,
    image_size: int = 64,
    action_dim: int = 4,
    seed: int = 0,
) -> Path:
    """A LeRobotDataset of smooth random trajectories with one camera, a 4-d state and a task string."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        IMAGE_KEY: {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channel"],
        },
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": None},
    }
    dataset = LeRobotDataset.create("local/tiny_images", 10, features, root=root, use_videos=False)
    rng = np.random.default_rng(seed)
    for episode in range(episodes):
        start, goal = rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4)
        for i in range(length):
            state = start + (goal - start) * i / length
            image = np.clip(rng.normal(0.5, 0.2, (image_size, image_size, 3)), 0, 1)
            image[: image_size // 4, : image_size // 4] = (state[:3] + 1) / 2  # a patch that shows the state
            action = np.resize(goal - state, action_dim) + 0.05 * rng.normal(size=action_dim)
            dataset.add_frame(
                {
                    IMAGE_KEY: (image * 255).astype(np.uint8),
                    "observation.state": state.astype(np.float32),
                    "action": action.astype(np.float32),
                    "task": TASKS[episode % len(TASKS)],
                }
            )
        dataset.save_episode()
    dataset.finalize()
    return Path(root)


def smolvla_config(vlm_dir: str | Path, dataset_root: str | Path, **overrides: Any) -> Any:
    """A `SmolVLAConfig` on the local VLM folder, with the dataset's features (chunk 8 by default)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    from hf_reflow.data import policy_features

    meta = LeRobotDatasetMetadata("local/tiny_images", root=dataset_root)
    inputs, outputs = policy_features(meta)
    backbone = smolvlm.smolvla_fields(vlm_dir)
    fields = {
        "input_features": inputs, "output_features": outputs, **backbone, "chunk_size": 8, "n_action_steps": 4,
        "resize_imgs_with_padding": tuple(backbone["resize_imgs_with_padding"]), "tokenizer_max_length": 16,
        "device": "cpu",
    }  # fmt: skip
    return SmolVLAConfig(**{**fields, **overrides})


def write_smolvla_checkpoint(
    directory: str | Path, *, vlm_dir: str | Path, dataset_root: str | Path, seed: int = 0, **overrides: Any
) -> Path:
    """Save a randomly initialised SmolVLA (seeded) with processors and the dataset's stats, LeRobot layout."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    config = smolvla_config(vlm_dir, dataset_root, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = SmolVLAPolicy(config)
    stats = LeRobotDatasetMetadata("local/tiny_images", root=dataset_root).stats
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    directory = Path(directory)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory
