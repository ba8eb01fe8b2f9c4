"""The command line and recipe files -> dotted settings (`Pair`s), before any decoding."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lerobot.configs import parser as lerobot_parser

from hf_reflow.configs.fields import RECORD_KEYS
from hf_reflow.errors import ConfigError, RenamedSettingWarning

CONFIG_KEYS = ("config_path", "config")  # lerobot-train's name first; both read a recipe


HELP_FLAGS = ("-h", "--help")

# Settings renamed since they were first written, per command: old key -> new. A command line or a recipe that
# still uses an old key works, with a `RenamedSettingWarning` naming the new key. (`nfe` -> `num_steps`: one
# name for the step count, the guide's and LeRobot's.)
RENAMED_KEYS = {
    "eval": {"nfe": "num_steps"},
    "pipeline": {"eval.nfe": "eval.num_steps"},
}


class HelpRequested(Exception):  # not an error: the CLI prints it and exits 0
    """`-h` / `--help` was given: `str(self)` is the command's help text."""


@dataclass
class Pair:
    """One setting: a dotted key and its value, as typed on the command line (`raw`) or read from a recipe."""

    key: str
    value: Any
    raw: bool  # True: a command-line string; False: a recipe's (YAML / JSON) value


def wants_help(args: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in args)


def command_line(args: list[str], command: str | None = None) -> list[Pair]:
    """The settings of a command line, recipes first (`--config_path`), in the order they apply (with
    `command`'s renamed keys under their new names)."""
    pairs = _cli_pairs(_load_plugins(args))
    recipes = [p for p in pairs if p.key in CONFIG_KEYS]
    settings = [q for p in recipes for q in flatten(load_recipe(p.value))] + [p for p in pairs if p.key not in CONFIG_KEYS]
    return upgrade_keys(settings, RENAMED_KEYS.get(command or "", {}))


def upgrade_keys(pairs: list[Pair], renamed: dict[str, str]) -> list[Pair]:
    """Settings under a renamed key (old -> new in `renamed`) moved to the new key, each with a
    `RenamedSettingWarning` (the CLI prints it on one line)."""
    for pair in pairs:
        if pair.key in renamed:
            new = renamed[pair.key]
            warnings.warn(f"`{pair.key}` is renamed `{new}`; the old name is read until hf-reflow 1.0, write "
                          f"--{new}=... (or `{new}:` in a recipe) instead.", RenamedSettingWarning, stacklevel=2)  # fmt: skip
    return [Pair(renamed.get(p.key, p.key), p.value, p.raw) for p in pairs]


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


PACKAGED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # shipped in the wheel; `recipes/` in a checkout


def recipe_path(path: str | Path) -> Path:
    """`path` as given when it is a file; else a recipe installed with hf-reflow, by its path in the checkout
    (`recipes/metaworld/default.yaml`) or by name (`metaworld/default`), so the README's commands also work
    from a wheel, in any directory."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("recipes",) else path.parts
    packaged = PACKAGED_RECIPES.joinpath(*parts) if parts else PACKAGED_RECIPES
    for candidate in (packaged, packaged.with_name(packaged.name + ".yaml")):
        if candidate.is_file():
            return candidate
    return path


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (or a run's train_config.json) into a dict."""
    path = recipe_path(path)
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
