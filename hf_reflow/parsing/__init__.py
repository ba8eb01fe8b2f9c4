"""Command line + recipe -> a typed dataclass, decoded by draccus (what `lerobot-train` parses with).

The front end here only normalises what users type before draccus decodes it:

- `--config_path=recipe.yaml` (lerobot-train's flag; `--config` too) is read first and flags after it win key
  by key, like draccus's own config file; a run's `train_config.json` is such a recipe.
- `--key value` becomes `--key=value`; aliases (the seed guide's names) are renamed.
- List shorthand: `--num_steps=1,2,4` becomes `--num_steps=[1, 2, 4]`; strings are quoted for draccus, which reads every
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

from hf_reflow.parsing.argv import (
    CONFIG_KEYS,
    HELP_FLAGS,
    HelpRequested,
    Pair,
    command_line,
    flatten,
    load_recipe,
    rename,
    wants_help,
)
from hf_reflow.parsing.commands import (
    check_stages,
    parse_config,
    parse_pipeline_config,
    parse_train_config,
    stage_config,
    train_config,
    train_config_from_dict,
)
from hf_reflow.parsing.decode import NULLS, Parsed, check_finite, decode, run_draccus
from hf_reflow.parsing.env import parse_env_config, split_env_args
from hf_reflow.parsing.help import render_help
from hf_reflow.parsing.lerobot_train import ALIASES, LEROBOT_TRAIN_REFUSED, refuse_lerobot_train_flags
from hf_reflow.parsing.policy import (
    DEFAULT_POLICY_TYPE,
    check_policy_keys,
    decode_policy,
    policy_config,
    policy_config_class,
)

__all__ = [
    "ALIASES",
    "CONFIG_KEYS",
    "DEFAULT_POLICY_TYPE",
    "HELP_FLAGS",
    "HelpRequested",
    "LEROBOT_TRAIN_REFUSED",
    "NULLS",
    "Pair",
    "Parsed",
    "check_finite",
    "check_policy_keys",
    "check_stages",
    "command_line",
    "decode",
    "decode_policy",
    "flatten",
    "load_recipe",
    "parse_config",
    "parse_env_config",
    "parse_pipeline_config",
    "parse_train_config",
    "policy_config",
    "policy_config_class",
    "refuse_lerobot_train_flags",
    "rename",
    "render_help",
    "run_draccus",
    "split_env_args",
    "stage_config",
    "train_config",
    "train_config_from_dict",
    "wants_help",
]
