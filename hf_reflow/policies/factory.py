"""Adapters looked up by LeRobot's `config.type`, imported only when asked for (as LeRobot's `factory.py`).

Built-in types map to the module and class of their adapter; `register_adapter` adds another type (a
`lerobot_policy_*` plugin's, say) at run time. An unknown type is a `ConfigError` that lists the known ones.
"""

from __future__ import annotations

import importlib

import torch

from hf_reflow.errors import ConfigError
from hf_reflow.policies.base import PolicyAdapter

# config.type -> (module, class) of its adapter; each module pulls its own (sometimes heavy) LeRobot code.
BUILTIN_ADAPTERS: dict[str, tuple[str, str]] = {
    "flow_mlp": ("hf_reflow.policies.flow_mlp.adapter", "FlowMLPAdapter"),
    "pi0": ("hf_reflow.policies.pi0", "PI0Adapter"),
    "pi05": ("hf_reflow.policies.pi0", "PI05Adapter"),
    "smolvla": ("hf_reflow.policies.smolvla", "SmolVLAAdapter"),
}
_REGISTERED: dict[str, type[PolicyAdapter]] = {}


def register_adapter(cls: type[PolicyAdapter]) -> type[PolicyAdapter]:
    """Class decorator: make `cls` the adapter for LeRobot policies of `cls.policy_type`."""
    _REGISTERED[cls.policy_type] = cls
    return cls


def supported_policy_types() -> list[str]:
    """Every policy type with an adapter, built-in or registered."""
    return sorted(BUILTIN_ADAPTERS.keys() | _REGISTERED.keys())


def adapter_class(policy_type: str) -> type[PolicyAdapter]:
    """The adapter class of a LeRobot policy type.

    Raises:
        ConfigError: no adapter for `policy_type` (the message lists the supported types).
    """
    if policy_type in _REGISTERED:
        return _REGISTERED[policy_type]
    if policy_type not in BUILTIN_ADAPTERS:
        raise ConfigError(
            f"policy type {policy_type!r} has no hf-reflow adapter; supported types: "
            f"{', '.join(supported_policy_types())}. Use one of those, or add an adapter with "
            "hf_reflow.policies.factory.register_adapter."
        )
    module, name = BUILTIN_ADAPTERS[policy_type]
    return getattr(importlib.import_module(module), name)


def adapter_for(policy: torch.nn.Module) -> PolicyAdapter:
    """The adapter wrapping `policy`, looked up by its `config.type`."""
    return adapter_class(policy.config.type)(policy)
