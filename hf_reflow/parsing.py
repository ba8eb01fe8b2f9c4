"""Command line + recipe -> a typed dataclass, decoded by draccus (what `lerobot-train` parses with).

The front end here only normalises what users type before draccus decodes it:

- `--config_path=recipe.yaml` (lerobot-train's flag; `--config` too) is read first and flags after it win key
  by key, like draccus's own config file; a run's `train_config.json` is such a recipe.
- `--key value` becomes `--key=value`; aliases (the seed guide's names) are renamed.
- List shorthand: `--nfe=1,2,4` becomes `--nfe=[1, 2, 4]`; strings are quoted for draccus, which reads every
  value as YAML (`--hub_repo_template={hub_model_id}-v2` would not parse, `true` would become `'True'`).
- Keys are checked against the dataclass first, so an unknown key is one line naming the valid ones.
- `dict` fields (pipeline stage sections) take dotted keys (`--reflow.steps=500`), which draccus cannot.
- A field typed `PreTrainedConfig` (the policy) is not decoded here: its recipe section and its `--policy.*`
  flags are returned to the caller, which decodes them against the policy type's own config class.
- Plugins: `--policy.discover_packages_path=my_pkg` imports a package that registers more policy types, as
  lerobot-train does (`lerobot.configs.parser.load_plugin`).

Every user error is a `ConfigError` whose text is one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import yaml
from draccus.utils import DecodingError
from lerobot.configs import parser as lerobot_parser
from lerobot.configs.policies import PreTrainedConfig
from lerobot.envs.configs import EnvConfig
from lerobot.utils.import_utils import register_third_party_plugins

from hf_reflow.errors import ConfigError, ReflowError

CONFIG_KEYS = ("config_path", "config")  # lerobot-train's name first; both read a recipe
HELP_FLAGS = ("-h", "--help")
NULLS = ("", "null", "Null", "NULL", "~", "None")
# Keys a trainer writes into train_config.json for the record; ignored when that file is read back as a recipe.
RECORD_KEYS = ("optim_used",)
DEFAULT_POLICY_TYPE = "flow_mlp"  # hf-reflow's built-in policy (`hf_reflow.policies.flow_mlp`)


class HelpRequested(Exception):  # not an error: the CLI prints it and exits 0
    """`-h` / `--help` was given: `str(self)` is the command's help text."""


@dataclass
class Pair:
    """One setting: a dotted key and its value, as typed on the command line (`raw`) or read from a recipe."""

    key: str
    value: Any
    raw: bool  # True: a command-line string; False: a recipe's (YAML / JSON) value


@dataclass
class Parsed:
    """A decoded config, plus its policy settings left for the caller (see `policy_config`)."""

    config: Any
    policy_section: dict[str, Any] = field(default_factory=dict)  # the recipe's `policy:` mapping
    policy_args: list[str] = field(default_factory=list)  # `--policy.<key>=v` flags, as `--<key>=v`


def wants_help(args: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in args)


def command_line(args: list[str]) -> list[Pair]:
    """The settings of a command line, recipes first (`--config_path`), in the order they apply."""
    pairs = _cli_pairs(_load_plugins(args))
    recipes = [p for p in pairs if p.key in CONFIG_KEYS]
    return [q for p in recipes for q in flatten(load_recipe(p.value))] + [p for p in pairs if p.key not in CONFIG_KEYS]


def _load_plugins(args: list[str]) -> list[str]:
    """Import `--<x>.discover_packages_path=pkg` packages (they register policy types) and drop those flags."""
    found = lerobot_parser.parse_plugin_args(lerobot_parser.PLUGIN_DISCOVERY_SUFFIX, args)
    for flag, package in found.items():
        try:
            lerobot_parser.load_plugin(package)
        except lerobot_parser.PluginLoadError as e:
            raise ConfigError(f"--{flag}={package}: {' '.join(str(e).split())}") from None
        args = lerobot_parser.filter_arg(flag, args)
    return args


def _cli_pairs(args: list[str]) -> list[Pair]:
    """`--a.b=1 --c 2` -> settings (`-` in names read as `_`)."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; settings look like --key=value (e.g. --steps=500).")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value, e.g. --{key}=VALUE.")
            raw, i = args[i + 1], i + 1
        pairs.append(Pair(key.replace("-", "_"), raw, raw=True))
        i += 1
    return pairs


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds a key twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (each key may appear once per section)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (or a run's train_config.json) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found; pass --config_path=<path to a YAML recipe or train_config.json>.")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(f"recipe {str(path)!r} is nested too deeply to be a recipe; a recipe is a few levels of keys.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping of config keys.")
    return {k: v for k, v in data.items() if k not in RECORD_KEYS}


def flatten(data: dict[str, Any], prefix: str = "") -> list[Pair]:
    """A nested recipe -> dotted settings, so recipe sections merge with flags key by key. The `policy`
    mapping stays whole: its keys (e.g. feature names) may hold dots."""
    pairs = []
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "policy":
            pairs.extend(flatten(value, f"{prefix}{key}."))
        else:
            pairs.append(Pair(f"{prefix}{key}", value, raw=False))
    return pairs


def rename(pairs: list[Pair], aliases: dict[str, str]) -> list[Pair]:
    """Apply aliases (`--teacher_model_path` -> `teacher.path`)."""
    return [Pair(aliases.get(p.key, p.key), p.value, p.raw) for p in pairs]


def decode(cls: type, pairs: list[Pair]) -> Parsed:
    """Check every key against `cls`, then let draccus decode the values into `cls`."""
    args: list[str] = []
    sections: dict[str, dict[str, Any]] = {}  # dict fields, merged key by key
    parsed = Parsed(config=None)
    for pair in _expand(cls, pairs):
        path, hint, rest = _field_of(cls, pair.key)
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
            args.append(f"--{pair.key}={_arg(pair, hint)}")
    args += [f"--{path}={json.dumps(section)}" for path, section in sections.items()]
    parsed.config = run_draccus(cls, args)
    check_finite(parsed.config)
    return parsed


def _expand(cls: type, pairs: list[Pair]) -> list[Pair]:
    """A recipe's mapping under a dataclass field (e.g. eval's `policy: {path: [...]}`) -> its dotted keys."""
    out = []
    for pair in pairs:
        hint = _field_of(cls, pair.key)[1]
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


def _field_of(cls: type, key: str) -> tuple[str, Any, str]:
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


def _arg(pair: Pair, hint: Any) -> str:
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
    if typing.get_origin(inner) is list and not raw.lstrip().startswith("["):  # --nfe=1,2,4
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


@dataclass
class _EnvArgs:
    env: EnvConfig | None = None  # lerobot-eval's `--env.*` section


def split_env_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(`--env.*` flags, the rest): lerobot-eval's env section is parsed apart (`parse_env_config`)."""
    env = [a for a in args if a.startswith("--env.")]
    return env, [a for a in args if not a.startswith("--env.")]


def parse_env_config(env_args: list[str]) -> EnvConfig:
    """A LeRobot `EnvConfig` from lerobot-eval's `--env.type=TYPE --env.<field>=...` flags, with installed
    `lerobot_env_*` plugins registered first (as LeRobot's scripts do); a wrong type or field is one line."""
    register_third_party_plugins()
    if not any(a.startswith("--env.type=") for a in env_args):
        raise ConfigError(f"--env.* settings need --env.type (a LeRobot env type, e.g. metaworld_detour); got {env_args}.")
    env = run_draccus(_EnvArgs, env_args, prefix="env.").env
    return env


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
    """`steps must be int; got 'ten'` (`nfe[]` for a list's item) from draccus's `Couldn't parse 'ten' into an int`."""
    parts = [str(p) for p in error.key_path]
    item = bool(parts) and parts[-1].isdigit()
    key = ".".join(p for p in parts if not p.isdigit())
    value = re.search(r"Couldn't parse (.*) into", error.message)
    try:
        hint = _field_of(cls, key)[1]
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


def decode_policy(cls: type, section: dict[str, Any], args: list[str]) -> PreTrainedConfig:
    """A policy config of class `cls` from a mapping (a checkpoint's config.json + the recipe's section) and
    `--<key>=v` flags, decoded by draccus as `PreTrainedConfig.from_pretrained` does."""
    args = [_policy_arg(cls, arg) for arg in args]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(section, f)
    try:
        with draccus.config_type("json"):
            return run_draccus(cls, args, config_file=f.name, prefix="policy.")
    finally:
        os.unlink(f.name)


def _policy_arg(cls: type, arg: str) -> str:
    key, _, raw = arg[2:].partition("=")
    hints = _hints(cls)
    if "." in key or key not in hints:
        return arg
    return f"--{key}={_arg(Pair(f'policy.{key}', raw, raw=True), hints[key])}"


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation in a plugin's class: values go to draccus unconverted
        return {}


def policy_config_class(policy_type: str) -> type:
    """LeRobot's config class of a policy type (`PreTrainedConfig.get_choice_class`)."""
    # Imported here, not at the top, to register flow_mlp: its package loads LeRobot's policies (~4 s), which
    # a command line that fails on a misspelt key should not wait for. (No import circle: policies sit below.)
    import hf_reflow.policies.flow_mlp  # noqa: F401

    try:
        return PreTrainedConfig.get_choice_class(policy_type)
    except (KeyError, ValueError):
        known = ", ".join(sorted(PreTrainedConfig.get_known_choices()))
        raise ConfigError(f"policy.type {policy_type!r} is not a LeRobot policy type; known types: {known}.") from None


def check_policy_keys(cls: type, policy_type: str, keys: list[str]) -> None:
    """`--policy.<key>` names against the type's config class, before anything decodes or loads."""
    valid = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted({k.split(".")[0] for k in keys} - valid)
    if unknown:
        raise ConfigError(
            f"unknown policy key(s) {', '.join('policy.' + k for k in unknown)} for type {policy_type!r}; "
            f"valid keys: type, path, {', '.join(sorted(valid))}."
        )


# ---- `hf-reflow <command> --help` ------------------------------------------------------------------


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
