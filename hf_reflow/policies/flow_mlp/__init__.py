"""hf-reflow's built-in `flow_mlp` LeRobot policy (importing this registers the policy type)."""

from hf_reflow.policies.flow_mlp.configuration_flow_mlp import FlowMLPConfig
from hf_reflow.policies.flow_mlp.modeling_flow_mlp import FlowMLPPolicy
from hf_reflow.policies.flow_mlp.processor_flow_mlp import make_flow_mlp_pre_post_processors

__all__ = ["FlowMLPConfig", "FlowMLPPolicy", "make_flow_mlp_pre_post_processors"]
