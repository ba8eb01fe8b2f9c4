"""Tiny pi0 / pi0.5 models for offline tests of the model-level adapters.

LeRobot 0.6.1 builds pi0 / pi0.5 only in two hard-coded sizes (`get_gemma_config`: gemma_300m,
gemma_2b) with a PaliGemma whose vision tower and projector sizes are fixed in
`PaliGemmaWithExpertModel.__init__` (projection 2048, SigLIP so400m): over 1 B parameters, far too
slow for a CPU test. `tiny_paligemma()` patches, for the duration of a `with` block, the two names
those modules look up (`get_gemma_config` and the PaliGemma class), shrinking the widths; every
other line of LeRobot's model (prefix, suffix, attention, `forward`, `sample_actions`,
`denoise_step`) runs unchanged. Their tokenizer (`google/paligemma-3b-pt-224`) is gated and
hard-coded in the preprocessors, so batches here carry token ids directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

WIDTH = 64  # LeRobot hard-codes 8 heads x 1 KV head in its joint attention (`1 * 8 * head_dim`)
IMAGE_SIZE = 28  # SigLIP patch 14 -> 4 image tokens
IMAGE_KEY = "observation.images.top"


def _tiny_gemma_config(module: Any) -> Any:
    def get_gemma_config(variant: str) -> Any:
        if variant not in ("gemma_300m", "gemma_2b"):
            raise ValueError(f"Unknown variant: {variant}")
        return module.GemmaConfig(
            width=WIDTH, depth=2, mlp_dim=2 * WIDTH, num_heads=8, num_kv_heads=1, head_dim=8
        )

    return get_gemma_config


def _shrunk_paligemma(real_class: type) -> Any:
    def build(config: Any) -> Any:
        vision = config.vision_config
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 32, 64, 1
        vision.num_attention_heads = 2
        vision.projection_dim = config.text_config.hidden_size  # LeRobot fixes 2048 (gemma_2b's width)
        return real_class(config=config)

    return build


@contextlib.contextmanager
def tiny_paligemma() -> Iterator[None]:
    """Within the block, pi0 / pi0.5 models are built with ~20 M parameters (mostly the 257k vocabulary)."""
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    saved = []
    for module in (modeling_pi0, modeling_pi05):
        saved.append((module, module.get_gemma_config, module.PaliGemmaForConditionalGenerationWithPiGemma))
        module.get_gemma_config = _tiny_gemma_config(module)
        module.PaliGemmaForConditionalGenerationWithPiGemma = _shrunk_paligemma(
            module.PaliGemmaForConditionalGenerationWithPiGemma
        )
    try:
        yield
    finally:
        for module, gemma_config, paligemma in saved:
            module.get_gemma_config = gemma_config
            module.PaliGemmaForConditionalGenerationWithPiGemma = paligemma


def make_policy(
    policy_type: str,
    *,
    chunk_size: int = 8,
    action_dim: int = 4,
    seed: int = 0,
    train_expert_only: bool = False,
) -> Any:
    """A tiny float32 pi0 / pi0.5 policy with one 28-px camera, a 4-d state and `action_dim` actions."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class
    from lerobot.policies.pi0.configuration_pi0 import PI0Config
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    config_class = {"pi0": PI0Config, "pi05": PI05Config}[policy_type]
    config = config_class(
        input_features={
            IMAGE_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(4,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))},
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        image_resolution=(IMAGE_SIZE, IMAGE_SIZE),
        dtype="float32",
        device="cpu",
        train_expert_only=train_expert_only,
    )
    with torch.random.fork_rng(), tiny_paligemma():
        torch.manual_seed(seed)
        return get_policy_class(policy_type)(config)


def make_batch(
    policy: Any, batch_size: int = 3, *, tokens: int = 6, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A preprocessed-looking batch: images in [0, 1], normalised state and action chunk, token ids."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    g = torch.Generator().manual_seed(seed)
    chunk, action_dim = policy.config.chunk_size, policy.config.output_features["action"].shape[0]
    mask = torch.ones(batch_size, tokens, dtype=torch.bool)
    mask[0, -2:] = False  # a padded prompt
    is_pad = torch.zeros(batch_size, chunk, dtype=torch.bool)
    is_pad[-1, chunk // 2 :] = True  # a chunk running past the episode end
    return {
        IMAGE_KEY: torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "observation.state": torch.randn(batch_size, 4, generator=g),
        "action": torch.randn(batch_size, chunk, action_dim, generator=g),
        "action_is_pad": is_pad,
        OBS_LANGUAGE_TOKENS: torch.randint(0, 1000, (batch_size, tokens), generator=g),
        OBS_LANGUAGE_ATTENTION_MASK: mask,
    }
