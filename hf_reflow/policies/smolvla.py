"""hf-reflow adapter for LeRobot's SmolVLA, built from LeRobot 0.6.1's own modules.

- `encode`: SmolVLA's prefix (images, language, state) embedded once and prefilled into the VLM's
  KV cache, exactly as `VLAFlowMatching.sample_actions` does; every ODE step reuses it.
- `velocity`: `VLAFlowMatching.denoise_step` on that cache (the action expert only).
- `loss`: `VLAFlowMatching.forward` with the given noise and time on the padded (max_action_dim)
  normalised chunk, trimmed to the real action dims and masked like `SmolVLAPolicy.forward`.
- `action_shape`: the padded (chunk, max_action_dim) space; teacher end points stay padded.

Shared frozen backbone: with `train_expert_only` the VLM (vision encoder, connector, text layers)
is frozen, so a teacher and a student initialised from it hold identical VLM weights.
`share_backbone` points the teacher at the student's VLM module (no second copy), and
`backbone_context` computes once per batch what both can reuse: the VLM's keys/values of the image
and language tokens. These never attend to the state token (it opens a new attention block), so
they do not depend on `state_proj`, which the student still trains. Each model then adds only its
own state token (`encode(batch, context)`): one token through the VLM layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hf_reflow.errors import ConfigError
from hf_reflow.policies.vla import VLAAdapter


@dataclass
class SmolVLAPrefix:
    """A filled prefix: pad mask (B, L) and the VLM's `DynamicCache` of post-RoPE keys/values."""

    pad_masks: Tensor
    cache: Any


@dataclass
class SmolVLAContext:
    """The frozen, state-independent part of the prefix, shared by a teacher and its student.

    Attributes:
        keys: per VLM layer (B, heads_kv, L_ctx, head_dim) post-RoPE keys of the image + language tokens.
        values: per VLM layer, same shape.
        pad_masks: (B, L_ctx) True for real tokens.
    """

    keys: list[Tensor]
    values: list[Tensor]
    pad_masks: Tensor


def _lerobot_inputs(policy: Any, batch: dict[str, Tensor]) -> tuple:
    """(images, img_masks, lang_tokens, lang_masks, state) as `SmolVLAPolicy.forward` prepares them."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)  # (B, max_state_dim)
    return images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state


class SmolVLAAdapter(VLAAdapter):
    """SmolVLA in hf-reflow's convention (t = 1 noise, t = 0 action; LeRobot's own)."""

    policy_type = "smolvla"
    steps_field = "num_steps"

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__(policy)
        if policy.config.adapt_to_pi_aloha:
            raise ConfigError(
                "SmolVLA with adapt_to_pi_aloha=true is not supported by hf-reflow (its forward rewrites the "
                "batch in place); train with adapt_to_pi_aloha=false."
            )
        self.model = policy.model  # VLAFlowMatching

    # ---- the ODE ---------------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor], context: SmolVLAContext | None = None) -> SmolVLAPrefix:
        """Fill the prefix KV cache: LeRobot's prefill, or the shared context plus this model's state token."""
        if context is not None:
            return self._encode_from_context(batch, context)
        embs, pad_masks, att_masks = self.model.embed_prefix(*_lerobot_inputs(self.policy, batch))
        return SmolVLAPrefix(pad_masks, self._prefill(embs, pad_masks, att_masks))

    def _prefill(self, embs: Tensor, pad_masks: Tensor, att_masks: Tensor) -> Any:
        """LeRobot's prefix prefill: run the VLM over prefix embeddings (B, L, D), return the KV cache."""
        from lerobot.policies.common.vla_utils import make_att_2d_masks

        _, cache = self.model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(pad_masks, att_masks),
            position_ids=torch.cumsum(pad_masks, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return cache

    def velocity(self, x_t: Tensor, t: Tensor, condition: SmolVLAPrefix) -> Tensor:
        """`denoise_step` on the cached prefix: x_t (B, chunk, max_action_dim), t (B,) -> velocity, same shape."""
        return self.model.denoise_step(condition.pad_masks, condition.cache, x_t, t)

    # ---- the loss and the shared frozen backbone (see `VLAAdapter`) ----------------------------
    def squared_error(self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor) -> Tensor:
        """`VLAFlowMatching.forward` with our noise and time: (B, chunk, max_action_dim)."""
        return self.model.forward(*_lerobot_inputs(self.policy, batch), action, noise, t)

    def backbone_owner(self) -> tuple[torch.nn.Module, str]:
        return self.model.vlm_with_expert, "vlm"  # the VLM: vision encoder, connector, text layers

    @torch.no_grad()
    def backbone_context(self, batch: dict[str, Tensor]) -> SmolVLAContext:
        """The VLM keys/values of the image and language tokens (no state), computed once per batch."""
        embs, pad_masks, att_masks = self.model.embed_prefix(*_lerobot_inputs(self.policy, batch))
        n_ctx = int(att_masks[0].nonzero()[0])  # the state token is the first one opening a new block
        embs, pad_masks, att_masks = embs[:, :n_ctx], pad_masks[:, :n_ctx], att_masks[:, :n_ctx]
        cache = self._prefill(embs, pad_masks, att_masks)
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        return SmolVLAContext(keys, values, pad_masks)

    def _encode_from_context(self, batch: dict[str, Tensor], context: SmolVLAContext) -> SmolVLAPrefix:
        """This model's state token through the VLM layers, attending to the shared context; its cache."""
        from transformers import DynamicCache

        vlm_with_expert = self.model.vlm_with_expert
        state = self.policy.prepare_state(batch)  # (B, max_state_dim)
        hidden = self.model.state_proj(state)[:, None, :]  # (B, 1, hidden)
        batch_size = hidden.shape[0]
        position_ids = context.pad_masks.sum(dim=1, keepdim=True)  # (B, 1): after the real context tokens
        ones = torch.ones(batch_size, 1, dtype=torch.bool, device=hidden.device)
        pad_masks = torch.cat([context.pad_masks, ones], dim=1)  # (B, L_ctx + 1)
        attention_mask = pad_masks[:, None, :]  # (B, 1, L_ctx + 1): the state sees every real token
        layers = vlm_with_expert.get_model_layers(
            [vlm_with_expert.get_vlm_model().text_model, vlm_with_expert.lm_expert]
        )
        head_dim = vlm_with_expert.vlm.config.text_config.head_dim
        cache = DynamicCache()
        for index in range(vlm_with_expert.num_vlm_layers):
            cache.update(context.keys[index], context.values[index], index)
            (attention,), cache = vlm_with_expert.forward_attn_layer(
                layers, [hidden, None], index, position_ids, attention_mask, batch_size, head_dim,
                use_cache=True, past_key_values=cache,
            )  # fmt: skip
            hidden = _finish_layer(layers[0][index], hidden, attention)
        return SmolVLAPrefix(pad_masks, cache)


def _finish_layer(layer: Any, hidden: Tensor, attention: Tensor) -> Tensor:
    """The rest of one VLM decoder layer after attention, as `SmolVLMWithExpertModel.forward` does it."""
    if attention.dtype != layer.self_attn.o_proj.weight.dtype:
        attention = attention.to(layer.self_attn.o_proj.weight.dtype)
    out = layer.self_attn.o_proj(attention)
    out += hidden  # in place, as LeRobot: a bf16 VLM keeps the residual stream in bf16
    residual = out.clone()
    out = layer.mlp(layer.post_attention_layernorm(out))
    out += residual
    return out
