"""Importing this registers hf-reflow's `flow_mlp` policy type with LeRobot."""

from hf_reflow.policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy  # noqa: F401
