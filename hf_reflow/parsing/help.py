"""`--help` of every command, rendered from the dataclass fields and their help texts."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hf_reflow.parsing.decode import _is_policy, _type_name
from hf_reflow.parsing.policy import policy_config_class


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(getattr(value, "value", value))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _first_paragraph(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def _option(name: str, kind: str, default: Any, text: str) -> list[str]:
    shown = "" if default is dataclasses.MISSING else f", default: {_show(default)}"
    head = f"  --{name}  ({kind}{shown})"
    return [head, f"      {text}"] if text else [head]


def _options(cls: type, prefix: str = "") -> list[str]:
    """The option lines of `cls`: its own keys first, then one block per section."""
    lines: list[str] = []
    sections: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, text, name = hints[f.name], f.metadata.get("help", ""), prefix + f.name
        if dataclasses.is_dataclass(hint):
            sections += ["", f"{name}: {_first_paragraph(hint)}", *_options(hint, f"{name}.")]
        elif _is_policy(hint):
            sections += ["", f"policy: {text}"]
            sections += _option("policy.type", "str", "flow_mlp", "a new policy of this LeRobot type, e.g. flow_mlp, smolvla, pi0, pi05")
            sections += _option("policy.path", "str", None, "start from this checkpoint (run dir, pretrained_model/ or Hub id)")
            sections += _option("policy.<field>", "per its LeRobot config class", dataclasses.MISSING, "")
        elif typing.get_origin(hint) is dict:
            sections += ["", f"{name}: {text}", *_option(f"{name}.<key>", "section", dataclasses.MISSING, "")]
        else:
            lines += _option(name, _type_name(hint), _default(f), text)
    return lines + sections


def _policy_fields(policy_type: str) -> list[str]:
    cls = policy_config_class(policy_type)
    hints = typing.get_type_hints(cls)
    lines = ["", f"policy fields of type {policy_type} ({cls.__module__}.{cls.__name__}):"]
    for f in sorted((f for f in dataclasses.fields(cls) if f.init), key=lambda f: f.name):
        lines += _option(f"policy.{f.name}", _type_name(hints.get(f.name, Any)), _default(f), "")
    return lines


def render_help(cls: type, command: str, *, aliases: dict[str, str] | None = None, policy_type: str | None = None) -> str:
    """The `--help` text of a command: every option with its type, default and help string."""
    lines = [
        f"usage: hf-reflow {command} [--config_path=RECIPE.yaml] [--key=value ...]",
        "",
        _first_paragraph(cls),
        "",
        "Values are YAML (true, null, 1e-4, [a, b]); lists may also be written a,b,c. Unknown keys are rejected.",
        "",
        "options:",
        "  -h, --help",
        "      show this help and exit",
        "  --config_path=PATH  (also --config)",
        "      a YAML recipe (or a run's train_config.json) whose keys are these options; flags after it win key by key",
    ]
    lines += _options(cls)
    lines += list(getattr(cls, "HELP_EXTRA", ()))  # options parsed apart from the dataclass (e.g. eval's --env.*)
    if policy_type:
        lines += _policy_fields(policy_type)
    if aliases:
        lines += ["", "aliases (the seed guide's and lerobot-train's names):"]
        lines += [f"  --{name} = --{target}" for name, target in aliases.items()]
        if "policy.repo_id" in aliases:
            lines += ["  (--policy.repo_id also sets hub_repo_template to {hub_model_id} unless given: the exact repo)"]
    return "\n".join(lines)
