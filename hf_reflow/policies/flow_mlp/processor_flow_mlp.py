"""Pre/post processors of `flow_mlp`: LeRobot's default pipeline (rename, batch, device, normalise)."""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from hf_reflow.policies.flow_mlp.configuration_flow_mlp import FlowMLPConfig


def make_flow_mlp_pre_post_processors(
    config: FlowMLPConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    """Found by LeRobot's `make_pre_post_processors` through its `processor_<type>` naming convention."""
    return make_default_pre_post_processors(config, dataset_stats, normalizer_device=config.device)
