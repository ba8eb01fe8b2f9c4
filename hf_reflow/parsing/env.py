"""`--env.*` flags -> a LeRobot `EnvConfig` (any registered env type), as lerobot-eval decodes them."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.envs.configs import EnvConfig
from lerobot.utils.import_utils import register_third_party_plugins

from hf_reflow.errors import ConfigError
from hf_reflow.parsing.decode import run_draccus


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
