"""hf-reflow adapters for LeRobot's pi0 and pi0.5, one level below the policy (`policy.model`).

Their policy-level `forward(batch)` draws its own noise and time, so the loss calls the model-level
`forward(..., actions, noise, time)`; sampling reuses the model's own prefix prefill and
`denoise_step` (its step field is `num_inference_steps`). Both work in the padded
(chunk, max_action_dim) space, like SmolVLA.

- pi0: images + language in the prefix (cached once); the state is part of the suffix, so it goes
  with the condition and is re-embedded at every step (as LeRobot does).
- pi0.5: the discretised state is written into the prompt by its preprocessor; the suffix holds
  only the noisy actions and the time (adaRMS conditioning).

Shared frozen backbone: with `train_expert_only` the whole PaliGemma is frozen and the prefix holds
only images and language (pi0) or images and the prompt with the state (pi0.5), so the entire prefix
cache is the same for a teacher and a student initialised from it: `backbone_context` computes it
once per batch, and `share_backbone` points the teacher at the student's PaliGemma module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hf_reflow.policies.vla import VLAAdapter


@dataclass
class PaliGemmaPrefix:
    """The filled prefix: pad mask (B, L), the VLM's KV cache, and pi0's padded state (B, max_state_dim)."""

    pad_masks: Tensor
    cache: Any
    state: Tensor | None = None


class _PaliGemmaAdapter(VLAAdapter):
    """Shared by pi0 and pi0.5: prefix prefill as in their `sample_actions`, loss via `model.forward`."""

    steps_field = "num_inference_steps"
    backbone_label = "PaliGemma"

    def _prefix_inputs(self, batch: dict[str, Tensor]) -> tuple:
        """(images, img_masks, tokens, masks): the arguments of the model's `embed_prefix`."""
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        images, img_masks = self.policy._preprocess_images(batch)
        return images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]

    def _prefill(self, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        """The prefix pad mask (B, L) and KV cache, exactly as the model's `sample_actions` builds them."""
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        model = self.policy.model
        embs, pad_masks, att_masks = model.embed_prefix(*self._prefix_inputs(batch))
        model.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"
        _, cache = model.paligemma_with_expert.forward(
            attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad_masks, att_masks)),
            position_ids=torch.cumsum(pad_masks, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return pad_masks, cache

    def backbone_owner(self) -> tuple[torch.nn.Module, str]:
        return self.policy.model.paligemma_with_expert, "paligemma"

    @torch.no_grad()
    def backbone_context(self, batch: dict[str, Tensor]) -> PaliGemmaPrefix:
        """The whole prefix (pad mask, KV cache): frozen, so the same for the teacher and the student."""
        return PaliGemmaPrefix(*self._prefill(batch))


class PI0Adapter(_PaliGemmaAdapter):
    """pi0: the state is embedded in the suffix at every denoising step."""

    policy_type = "pi0"

    def encode(self, batch: dict[str, Tensor], context: PaliGemmaPrefix | None = None) -> PaliGemmaPrefix:
        pad_masks, cache = self._prefill(batch) if context is None else (context.pad_masks, context.cache)
        return PaliGemmaPrefix(pad_masks, cache, self.policy.prepare_state(batch))

    def velocity(self, x_t: Tensor, t: Tensor, condition: PaliGemmaPrefix) -> Tensor:
        """x_t (B, chunk, max_action_dim), t (B,) -> velocity, same shape (`denoise_step` clones the cache)."""
        return self.policy.model.denoise_step(condition.state, condition.pad_masks, condition.cache, x_t, t)

    def squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        state = self.policy.prepare_state(batch)
        return self.policy.model.forward(*self._prefix_inputs(batch), state, action, noise, t)


class PI05Adapter(_PaliGemmaAdapter):
    """pi0.5: the state lives in the prompt tokens; the suffix is actions + time only."""

    policy_type = "pi05"

    def encode(self, batch: dict[str, Tensor], context: PaliGemmaPrefix | None = None) -> PaliGemmaPrefix:
        return PaliGemmaPrefix(*self._prefill(batch)) if context is None else context

    def velocity(self, x_t: Tensor, t: Tensor, condition: PaliGemmaPrefix) -> Tensor:
        return self.policy.model.denoise_step(condition.pad_masks, condition.cache, x_t, t)

    def squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        return self.policy.model.forward(*self._prefix_inputs(batch), action, noise, t)
