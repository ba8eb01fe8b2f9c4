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

from hf_reflow import flow
from hf_reflow.errors import CheckpointError
from hf_reflow.policies.base import PolicyAdapter, register_adapter, same_weights


@dataclass
class PaliGemmaPrefix:
    """The filled prefix: pad mask (B, L), the VLM's KV cache, and pi0's padded state (B, max_state_dim)."""

    pad_masks: Tensor
    cache: Any
    state: Tensor | None = None


class _PaliGemmaAdapter(PolicyAdapter):
    """Shared by pi0 and pi0.5: prefix prefill as in their `sample_actions`, loss via `model.forward`."""

    steps_field = "num_inference_steps"

    @property
    def action_shape(self) -> tuple[int, int]:
        return self.config.chunk_size, self.config.max_action_dim

    @property
    def action_dim(self) -> int:
        return self.config.output_features["action"].shape[0]

    def action_target(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The dataset chunk padded to (B, chunk, max_action_dim) and its (B, chunk) validity mask."""
        pad = batch.get("action_is_pad")
        return self.policy.prepare_action(batch), None if pad is None else ~pad

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

    def _squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        """The model-level forward: element-wise squared velocity error (B, chunk, max_action_dim)."""
        raise NotImplementedError

    # ---- shared frozen backbone ----------------------------------------------------------
    def backbone_frozen(self) -> bool:
        """True when the whole PaliGemma is frozen (`train_expert_only`)."""
        paligemma = self.policy.model.paligemma_with_expert.paligemma
        return self.config.train_expert_only and not any(p.requires_grad for p in paligemma.parameters())

    def share_backbone(self, student: PolicyAdapter) -> None:
        """Make this (teacher) adapter use `student`'s frozen PaliGemma, dropping its own copy."""
        if type(student) is not type(self) or not student.backbone_frozen():
            raise CheckpointError(
                f"the teacher's PaliGemma can only be shared with a {self.policy_type} student whose PaliGemma is "
                "frozen (policy.train_expert_only=true); set teacher.shared_backbone=false otherwise."
            )
        mine = self.policy.model.paligemma_with_expert
        theirs = student.policy.model.paligemma_with_expert.paligemma
        if not same_weights(mine.paligemma, theirs):
            raise CheckpointError(
                "the student's PaliGemma weights differ from the teacher's, so the backbone cannot be shared; "
                "initialise the student from the teacher (init_from_teacher=true) or set teacher.shared_backbone=false."
            )
        mine.paligemma = theirs

    @torch.no_grad()
    def backbone_context(self, batch: dict[str, Tensor]) -> PaliGemmaPrefix:
        """The whole prefix (pad mask, KV cache): frozen, so the same for the teacher and the student."""
        return PaliGemmaPrefix(*self._prefill(batch))

    def loss(
        self,
        batch: dict[str, Tensor],
        noise: Tensor,
        action: Tensor,
        t: Tensor,
        *,
        kind: flow.LossKind = "mse",
        mask: Tensor | None = None,
        condition: Any = None,
    ) -> Tensor:
        """Per-sample loss (B,) from LeRobot's model-level forward, trimmed to the real action dims.

        Args:
            noise, action: (B, chunk, max_action_dim), action padded. t: (B,).
            mask: (B, chunk) True for real actions; None = all real (teacher couplings).
            condition: a prefix from `encode` (shared-backbone path); None = LeRobot's model-level forward.
        """
        if condition is None:
            squared = self._squared_error(batch, noise, action, t)
        else:  # the shared-backbone path: the action expert on the given prefix cache
            velocity = self.velocity(flow.interpolate(noise, action, t), t, condition)
            squared = (flow.velocity_target(noise, action) - velocity).pow(2)
        return flow.reduce_squared_error(squared[:, :, : self.action_dim], kind=kind, mask=mask)


@register_adapter
class PI0Adapter(_PaliGemmaAdapter):
    """pi0: the state is embedded in the suffix at every denoising step."""

    policy_type = "pi0"

    def encode(self, batch: dict[str, Tensor], context: PaliGemmaPrefix | None = None) -> PaliGemmaPrefix:
        pad_masks, cache = self._prefill(batch) if context is None else (context.pad_masks, context.cache)
        return PaliGemmaPrefix(pad_masks, cache, self.policy.prepare_state(batch))

    def velocity(self, x_t: Tensor, t: Tensor, condition: PaliGemmaPrefix) -> Tensor:
        """x_t (B, chunk, max_action_dim), t (B,) -> velocity, same shape (`denoise_step` clones the cache)."""
        return self.policy.model.denoise_step(condition.state, condition.pad_masks, condition.cache, x_t, t)

    def _squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        state = self.policy.prepare_state(batch)
        return self.policy.model.forward(*self._prefix_inputs(batch), state, action, noise, t)


@register_adapter
class PI05Adapter(_PaliGemmaAdapter):
    """pi0.5: the state lives in the prompt tokens; the suffix is actions + time only."""

    policy_type = "pi05"

    def encode(self, batch: dict[str, Tensor], context: PaliGemmaPrefix | None = None) -> PaliGemmaPrefix:
        return PaliGemmaPrefix(*self._prefill(batch)) if context is None else context

    def velocity(self, x_t: Tensor, t: Tensor, condition: PaliGemmaPrefix) -> Tensor:
        return self.policy.model.denoise_step(condition.pad_masks, condition.cache, x_t, t)

    def _squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        return self.policy.model.forward(*self._prefix_inputs(batch), action, noise, t)
