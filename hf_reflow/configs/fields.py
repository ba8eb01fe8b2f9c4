"""Field helpers and value checks shared by every config dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any

from hf_reflow.errors import ConfigError
from hf_reflow.hub import revision_problem

TRACKERS = ("tensorboard", "trackio")


OPTIMIZERS = ("adamw", "adam", "sgd")


SCHEDULERS = ("warmup_cosine", "cosine_decay_with_warmup", "constant")


COUPLING_STATES = ("demonstrations", "closed_loop")


def at_least(name: str, value: int | float | None, low: int | float) -> None:
    """Refuse `value` below `low` (None passes: the field's default applies)."""
    if value is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}.")


MAX_SEED = 2**32 - 1  # numpy's and CUDA's seeding take 32 bits


MAX_COUNT = 100_000_000  # steps, episodes, couplings: beyond this a run would not end in any sensible time


MAX_ODE_STEPS = 1000  # Euler steps per chunk


def at_most(name: str, value: int | float | None, high: int | float, hint: str = "") -> None:
    """Refuse `value` above `high` (None passes)."""
    if value is not None and value > high:
        raise ConfigError(f"{name} must be <= {high:,}{hint}, got {value:,}.")


def check_seed(value: int | None) -> None:
    at_least("seed", value, 0)
    at_most("seed", value, MAX_SEED, " (32 bits)")


def check_new_folder(flag: str, path: str) -> None:
    """A folder to write a new dataset into: absent or empty, never a file."""
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is a file" if not folder.is_dir() else "already holds files"
        raise ConfigError(f"{flag} {path!r} {what}; pass a new (or empty) folder for the dataset.")


def check_output_file(flag: str, path: str | None) -> None:
    """A file to write at the end: its folder must exist now, not after every metric is computed."""
    if path and not Path(path).parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: its folder {str(Path(path).parent)!r} does not exist; create it first.")


def check_choice(name: str, value: str, valid: tuple[str, ...], hint: str = "") -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}{hint}.")


N_ACTION_STEPS_HELP = (
    "closed loop: evaluate every cell re-planning after each of these many actions, e.g. 8,4,2 (each <= the "
    "policy's chunk_size); null: each policy's own n_action_steps"
)


def check_n_action_steps(values: list[int] | None) -> None:
    if values is not None and (not values or any(not isinstance(n, int) or not 1 <= n <= 1000 for n in values)):
        raise ConfigError(f"n_action_steps must list action counts >= 1, e.g. --n_action_steps=8,4,2; got {values!r}.")


EXPERT_AIM_HELP = (
    "demonstrations only: what the expert puts on the goal. hand = Meta-World's stock experts; fingertips = reach's "
    "success point (the fingertips, 4.5 cm below the hand the observation reports) goes onto the goal, so the "
    "demonstrations cross the 5 cm tolerance still moving (other tasks: unchanged). Evaluation is unchanged"
)


EXPERT_AIMS = ("hand", "fingertips")  # hf_reflow.envs.metaworld.EXPERT_AIMS (envs sit below configs: checked equal in tests)


HOLD_STEPS_HELP = (
    "demonstrations only: the expert goes on this many env steps after its first success (within the horizon), "
    "so they show the last centimetres done with margin; 0 = they end at the first success. Evaluation is unchanged"
)


def check_revision(name: str, value: str | None) -> None:
    problem = revision_problem(value)
    if problem:
        raise ConfigError(f"{name} {str(value)[:200]!r} is not a valid Hub revision: {problem}; use e.g. main, v1.0 or a commit hash.")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with its `--help` string."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# Keys a trainer writes into train_config.json for the record; ignored when that file is read back as a recipe.
RECORD_KEYS = ("optim_used", "input_hashes")


def check_repo_template(flag: str, template: str) -> None:
    """Refuse a `hub_repo_template` that does not format with {hub_model_id}, {k}, {stage} and {suffix}."""
    try:
        template.format(hub_model_id="a/b", k=1, stage="reflow", suffix="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"{flag} {template!r} is invalid ({e!r}); it may use {{hub_model_id}}, {{k}}, {{stage}} and {{suffix}}, "
            "e.g. '{hub_model_id}-{k}rf{suffix}'."
        ) from None
