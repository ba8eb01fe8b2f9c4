"""Offline SmolVLA fixtures: a tiny SmolVLM folder, a small image dataset and a tiny SmolVLA checkpoint.

Nothing is downloaded. LeRobot builds SmolVLA from `vlm_model_name` with `AutoConfig`,
`AutoProcessor` and (in the preprocessor) `AutoTokenizer`; all three accept a local folder, so
`write_smolvlm_folder` writes one with a random-weight architecture config, a SmolVLM processor and
a byte-level BPE tokenizer trained in well under a second with the `tokenizers` library.

    vlm = write_smolvlm_folder(tmp / "vlm")
    data = write_image_dataset(tmp / "data")
    teacher = write_smolvla_checkpoint(tmp / "teacher", vlm_dir=vlm, dataset_root=data)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_KEY = "observation.images.top"
SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
TASKS = ("push the red block to the left", "open the drawer", "press the button", "reach the green goal")


@dataclass(frozen=True)
class SmolVLMSize:
    """Architecture of a random-weight SmolVLM (defaults: ~1.3 M parameters, 64 px images)."""

    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    scale_factor: int = 2
    vocab_size: int = 512


TINY = SmolVLMSize()
SMALL = SmolVLMSize(text_hidden=384, text_layers=8, text_heads=6, text_kv_heads=2, vision_hidden=192,
                    vision_layers=4, vision_heads=4, image_size=96, patch_size=16, scale_factor=2)  # fmt: skip
# SmolVLM2-500M's architecture (random weights): text 960 x 32 layers, vision 768 x 12, 512 px, patch 16.
SMOLVLM2_500M = SmolVLMSize(text_hidden=960, text_layers=32, text_heads=15, text_kv_heads=5, vision_hidden=768,
                            vision_layers=12, vision_heads=12, image_size=512, patch_size=16, scale_factor=4,
                            vocab_size=49280)  # fmt: skip


def train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` with SmolVLM's special tokens, trained on the task strings."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", *SPECIAL_TOKENS.values()]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 512),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        [*TASKS, "robot arm camera image state action gripper"] * 4, trainer=trainer
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        extra_special_tokens=SPECIAL_TOKENS,
    )


def write_smolvlm_folder(directory: str | Path, size: SmolVLMSize = TINY) -> Path:
    """Write a loadable SmolVLM folder (config, processor, tokenizer) with `size`'s architecture."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    directory = Path(directory)
    tokenizer = train_tokenizer(size.vocab_size)
    image_seq_len = (size.image_size // size.patch_size) ** 2 // size.scale_factor**2
    text = {
        "model_type": "llama", "hidden_size": size.text_hidden, "intermediate_size": 4 * size.text_hidden,
        "num_hidden_layers": size.text_layers, "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads, "head_dim": size.text_hidden // size.text_heads,
        "vocab_size": size.vocab_size, "pad_token_id": tokenizer.pad_token_id, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
    }  # fmt: skip
    vision = {
        "hidden_size": size.vision_hidden, "intermediate_size": 4 * size.vision_hidden,
        "num_hidden_layers": size.vision_layers, "num_attention_heads": size.vision_heads,
        "image_size": size.image_size, "patch_size": size.patch_size,
    }  # fmt: skip
    config = SmolVLMConfig(
        text_config=text,
        vision_config=vision,
        scale_factor=size.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.save_pretrained(directory)
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": size.image_size},
        max_image_size={"longest_edge": size.image_size},
        do_image_splitting=False,
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=image_seq_len,
    )
    processor.save_pretrained(directory)
    (directory / "tiny_smolvlm.json").write_text(__import__("json").dumps(asdict(size)))
    return directory


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
    import json

    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    from hf_reflow.data import policy_features

    size = json.loads((Path(vlm_dir) / "tiny_smolvlm.json").read_text())
    meta = LeRobotDatasetMetadata("local/tiny_images", root=dataset_root)
    inputs, outputs = policy_features(meta)
    fields = {
        "input_features": inputs, "output_features": outputs, "vlm_model_name": str(Path(vlm_dir).resolve()),
        "load_vlm_weights": False, "chunk_size": 8, "n_action_steps": 4, "num_vlm_layers": size["text_layers"],
        "resize_imgs_with_padding": (size["image_size"], size["image_size"]), "tokenizer_max_length": 16,
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
