"""Dotted settings -> a typed dataclass, decoded by draccus, every error one line."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import draccus
import yaml
from draccus.utils import DecodingError
from lerobot.configs.policies import PreTrainedConfig

from hf_reflow.errors import ConfigError, ReflowError
from hf_reflow.parsing.argv import Pair, flatten

NULLS = ("", "null", "Null", "NULL", "~", "None")


@dataclass
class Parsed:
    """A decoded config, plus its policy settings left for the caller (see `policy_config`)."""

    config: Any
    policy_section: dict[str, Any] = field(default_factory=dict)  # the recipe's `policy:` mapping
    policy_args: list[str] = field(default_factory=list)  # `--policy.<key>=v` flags, as `--<key>=v`


def decode(cls: type, pairs: list[Pair]) -> Parsed:
    """Check every key against `cls`, then let draccus decode the values into `cls`."""
    args: list[str] = []
    sections: dict[str, dict[str, Any]] = {}  # dict fields, merged key by key
    parsed = Parsed(config=None)
    for pair in _expand(cls, pairs):
        path, hint, rest = field_of(cls, pair.key)
        if _is_policy(hint):
            _add_policy(parsed, pair, rest)
        elif dataclasses.is_dataclass(_without_none(hint)):
            keys = ", ".join(f.name for f in dataclasses.fields(_without_none(hint)))
            raise ConfigError(f"{pair.key} must be a mapping of keys (set one as --{pair.key}.KEY=VALUE; keys: {keys}), got {pair.value!r}.")
        elif _is_mapping(hint) and not rest and pair.value is None and _optional(hint):
            args.append(f"--{pair.key}=null")  # an optional section left unset (e.g. a saved run's `env: null`)
        elif _is_mapping(hint):
            _set_dotted(sections.setdefault(path, {}), rest, _yaml_value(pair.value) if pair.raw else pair.value)
        else:
            args.append(f"--{pair.key}={setting_arg(pair, hint)}")
    args += [f"--{path}={json.dumps(section)}" for path, section in sections.items()]
    parsed.config = run_draccus(cls, args)
    check_finite(parsed.config)
    return parsed


def _expand(cls: type, pairs: list[Pair]) -> list[Pair]:
    """A recipe's mapping under a dataclass field (e.g. eval's `policy: {path: [...]}`) -> its dotted keys."""
    out = []
    for pair in pairs:
        hint = field_of(cls, pair.key)[1]
        nested = dataclasses.is_dataclass(_without_none(hint)) and not _is_policy(hint)
        if not pair.raw and isinstance(pair.value, dict) and nested:
            out += _expand(cls, flatten(pair.value, f"{pair.key}.")) if pair.value else []
        else:
            out.append(pair)
    return out


def _add_policy(parsed: Parsed, pair: Pair, rest: str) -> None:
    if not rest and isinstance(pair.value, dict):
        parsed.policy_section.update(pair.value)
    elif not rest:
        raise ConfigError(f"policy must be a mapping of policy settings, got {pair.value!r}.")
    elif pair.raw:
        parsed.policy_args.append(f"--{rest}={pair.value}")
    else:
        _set_dotted(parsed.policy_section, rest, pair.value)


def field_of(cls: type, key: str) -> tuple[str, Any, str]:
    """(path of the field, its type, the rest of the key inside it) for a dotted key; an unknown key fails."""
    parts = key.split(".")
    node, path = cls, []
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(node)
        fields = [f.name for f in dataclasses.fields(node) if f.init or _is_policy(hints[f.name])]
        if part not in fields:
            where = f" under {'.'.join(path)}" if path else ""
            raise ConfigError(f"unknown config key(s) {key}; valid keys{where}: {', '.join(fields)}.")
        hint = hints[part]
        path.append(part)
        rest = ".".join(parts[i + 1 :])
        if _is_policy(hint) or _is_mapping(hint):
            return ".".join(path), hint, rest
        inner = _without_none(hint)
        if dataclasses.is_dataclass(inner) and rest:
            node = inner
            continue
        if rest:
            raise ConfigError(f"cannot set {key}: {'.'.join(path)} is a value, not a section.")
        return ".".join(path), hint, ""
    raise AssertionError("unreachable")


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _is_policy(hint: Any) -> bool:
    inner = _without_none(hint)
    return isinstance(inner, type) and issubclass(inner, PreTrainedConfig)


def _is_mapping(hint: Any) -> bool:
    inner = _without_none(hint)
    return inner is dict or typing.get_origin(inner) is dict


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def setting_arg(pair: Pair, hint: Any) -> str:
    """A setting's value as draccus reads it (YAML), for a field of type `hint`."""
    null = pair.value is None if not pair.raw else pair.value.strip() in NULLS
    if null and not _optional(hint):
        raise ConfigError(f"{pair.key} cannot be null; pass a value (see --help for its type).")
    if not pair.raw or null:
        return json.dumps(None if null else pair.value)  # JSON is YAML: strings quoted, null, true, lists
    raw, inner = pair.value, _without_none(hint)
    if inner is str:
        return json.dumps(raw)
    if raw.lstrip().startswith(("[", "{")):
        try:
            yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not YAML"
            raise ConfigError(f"{pair.key}: {raw!r} is not a valid YAML list / mapping ({problem}); e.g. --{pair.key}=[1, 2].") from None
    if typing.get_origin(inner) is list and not raw.lstrip().startswith("["):  # --num_steps=1,2,4
        items = [item.strip() for item in raw.split(",") if item.strip()]
        (item_type,) = typing.get_args(inner) or (Any,)
        return json.dumps(items) if item_type is str else "[" + ", ".join(items) + "]"
    return raw


def _yaml_value(raw: str) -> Any:
    """A command-line value as YAML (`true`, `1e-4`, `[a, b]`); text that is not YAML, or a braced name
    without a colon (`{hub_model_id}-v2`), stays text."""
    if raw == "":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, dict) and ":" not in raw else value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    if not dotted:  # the whole section at once (`--reflow={steps: 5}` or a recipe's mapping)
        if not isinstance(value, dict):
            raise ConfigError(f"a section must be a mapping of keys, got {value!r}.")
        data.update(value)
        return
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section.")
    node[leaf] = value


def run_draccus(cls: type, args: list[str], config_file: str | None = None, prefix: str = "") -> Any:
    """`draccus.parse`, with its errors (and ours, raised inside a `__post_init__`) as one-line `ConfigError`s;
    `prefix` (e.g. `policy.`) is how the user names `cls`'s keys."""
    try:
        return draccus.parse(config_class=cls, config_path=config_file, args=args, exit_on_error=False)
    except ReflowError:
        raise
    except Exception as e:  # draccus's DecodingError / ParsingError / ArgumentError, wrapping the cause
        raise _one_line(e, cls, prefix) from None


def _one_line(error: BaseException, cls: type, prefix: str) -> ReflowError:
    """One line for a draccus failure: our own error raised inside a `__post_init__`, else the first cause
    that is not draccus's (a config class's own check), else draccus's message with the key it names."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    ours = [e for e in chain if isinstance(e, ReflowError)]
    if ours:
        return ours[0]
    theirs = [e for e in chain if not type(e).__module__.startswith(("draccus", "argparse"))]
    decoding = [e for e in chain if isinstance(e, DecodingError)]
    what = f"{prefix.rstrip('.')} settings" if prefix else "config"
    if theirs and not isinstance(theirs[-1], ValueError | TypeError) or theirs and not decoding:
        return ConfigError(f"invalid {what}: {_text(theirs[-1])}")
    if decoding:
        return ConfigError(_decoding_text(decoding[-1], cls, prefix))
    return ConfigError(f"invalid {what}: {_text(chain[0])}")


def _decoding_text(error: DecodingError, cls: type, prefix: str) -> str:
    """`steps must be int; got 'ten'` (`num_steps[]` for a list's item) from draccus's `Couldn't parse 'ten' into an int`."""
    parts = [str(p) for p in error.key_path]
    item = bool(parts) and parts[-1].isdigit()
    key = ".".join(p for p in parts if not p.isdigit())
    value = re.search(r"Couldn't parse (.*) into", error.message)
    try:
        hint = field_of(cls, key)[1]
    except ConfigError:
        hint = None
    if item and typing.get_origin(_without_none(hint)) is list:
        hint = (typing.get_args(_without_none(hint)) or (Any,))[0]
    if value is None or hint is None:
        return f"invalid value for {prefix}{key}: {_text(error.message)}; see --help for its type."
    return f"{prefix}{key}{'[]' if item else ''} must be {_type_name(_without_none(hint))}; got {value.group(1)}."


def _text(error: BaseException | str) -> str:
    return " ".join(str(error).split())


def check_finite(config: Any, prefix: str = "") -> None:
    """nan / inf pass every `< 0` check: refuse them in every float field, once, here."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, PreTrainedConfig):
            check_finite(value, f"{prefix}{f.name}.")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{prefix}{f.name} must be a finite number; got {value!r}.")


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any"
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))
