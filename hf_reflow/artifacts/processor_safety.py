"""Loading a checkpoint runs no code from any repo: an allow-list of processor steps per policy type.

LeRobot 0.6.1 builds a processor step from its JSON either by `registry_name` or by importing the `class`
path the JSON names. Refusing the `class` path is not enough: some *registered* steps load code or models
named in their arguments (`action_tokenizer_processor` calls `AutoProcessor.from_pretrained(...,
trust_remote_code=True)` on any repo, `reward_classifier_processor` loads a model from any path). So a
checkpoint may hold only the steps LeRobot's own `make_pre_post_processors` builds for its policy type
(`ALLOWED_STEPS`, pinned to that function by tests/test_security.py), each with only that step's keys,
the one model-naming argument (`tokenizer_name`) equal to what LeRobot passes for the type, and every
file it names (`state_file`) inside the checkpoint. Anything else is refused in one line before LeRobot
reads the file. hf-reflow never passes `trust_remote_code`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_reflow.errors import CheckpointError

PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # hard-coded in LeRobot 0.6.1's pi0 / pi0.5 processors

# Each allowed step's config keys, as LeRobot 0.6.1 saves them.
_STEP_KEYS: dict[str, frozenset[str]] = {
    "rename_observations_processor": frozenset({"rename_map"}),
    "to_batch_processor": frozenset(),
    "device_processor": frozenset({"device", "float_dtype"}),
    "normalizer_processor": frozenset({"eps", "features", "norm_map"}),
    "unnormalizer_processor": frozenset({"eps", "features", "norm_map"}),
    "smolvla_new_line_processor": frozenset(),
    "pi0_new_line_processor": frozenset(),
    "pi05_prepare_state_tokenizer_processor_step": frozenset(),
    "tokenizer_processor": frozenset({"max_length", "padding", "padding_side", "task_key", "tokenizer_name", "truncation"}),
    "relative_actions_processor": frozenset({"action_names", "enabled", "exclude_joints"}),
    "absolute_actions_processor": frozenset({"enabled"}),
}
_DEFAULT_PRE = ("rename_observations_processor", "to_batch_processor", "device_processor", "normalizer_processor")
_DEFAULT_POST = ("unnormalizer_processor", "device_processor")
_PI_POST = (*_DEFAULT_POST, "absolute_actions_processor")

# policy type -> (preprocessor steps, postprocessor steps) that make_pre_post_processors builds for it.
ALLOWED_STEPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "flow_mlp": (frozenset(_DEFAULT_PRE), frozenset(_DEFAULT_POST)),
    "smolvla": (frozenset({*_DEFAULT_PRE, "smolvla_new_line_processor", "tokenizer_processor"}), frozenset(_DEFAULT_POST)),
    "pi0": (frozenset({*_DEFAULT_PRE, "pi0_new_line_processor", "tokenizer_processor", "relative_actions_processor"}),
            frozenset(_PI_POST)),  # fmt: skip
    "pi05": (frozenset({*_DEFAULT_PRE, "pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor",
                        "relative_actions_processor"}), frozenset(_PI_POST)),  # fmt: skip
}

# The tokenizer LeRobot's processor factory names for each type (the only step argument that names a model).
_TOKENIZER: dict[str, Callable[[Any], str]] = {
    "smolvla": lambda config: config.vlm_model_name,
    "pi0": lambda config: PALIGEMMA_TOKENIZER,
    "pi05": lambda config: PALIGEMMA_TOKENIZER,
}


def check_processor_steps(folder: str | Path, config: Any, *, trust_hint: bool = True) -> None:
    """Refuse processor JSON that holds anything LeRobot's factory would not build for `config.type`.

    Raises `CheckpointError` (one line) naming the file, the step and what was wrong; `trust_hint` adds how
    a user who trusts a local folder can load it anyway.
    """
    folder = Path(folder)
    policy_type = getattr(config, "type", None)
    if policy_type not in ALLOWED_STEPS:
        raise CheckpointError(
            f"refusing the processors of {str(folder)!r}: policy type {policy_type!r} has no processor allow-list; "
            f"hf-reflow loads processors for {', '.join(sorted(ALLOWED_STEPS))}."
        )
    for filename, allowed in zip(PROCESSOR_FILES, ALLOWED_STEPS[policy_type], strict=True):
        file = folder / filename
        if not file.is_file():
            continue  # LeRobot reports a missing pipeline file itself
        for index, entry in enumerate(_read_steps(file)):
            problem = _step_problem(entry, allowed, folder, config)
            if problem is not None:
                hint = (
                    "; if you trust this local checkpoint, load it with allow_unregistered_processor_steps=True"
                    if trust_hint
                    else ""
                )
                raise CheckpointError(
                    f"refusing processor step {index} of {str(file)!r}: {problem}. A {policy_type} checkpoint may "
                    f"only hold the steps LeRobot builds for {policy_type} ({', '.join(sorted(allowed))}) with their "
                    f"own arguments; use a checkpoint saved by LeRobot or hf-reflow{hint}."
                )


def _read_steps(file: Path) -> list[Any]:
    try:
        pipeline = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{str(file)!r} is not a readable processor JSON ({type(e).__name__}).") from None
    steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
    if not isinstance(steps, list):
        raise CheckpointError(f"{str(file)!r} is not a processor pipeline (no list of steps).")
    return steps


def _step_problem(entry: Any, allowed: frozenset[str], folder: Path, config: Any) -> str | None:
    """Why a processor step entry is refused, or None when it is one LeRobot builds for the type."""
    if not isinstance(entry, dict):
        return f"it is a {type(entry).__name__}, not a step object"
    if "class" in entry:
        return f"it names the import path {str(entry['class'])[:200]!r} ('class'), which is never imported from a checkpoint"
    name = entry.get("registry_name")
    if not isinstance(name, str):
        return "it has no registry_name"
    if name not in allowed:
        return f"its registry_name {name[:200]!r} is not a step LeRobot builds for this policy type"
    arguments = entry.get("config", {})
    if not isinstance(arguments, dict):
        return f"its config is a {type(arguments).__name__}, not an object"
    unknown = sorted(set(arguments) - _STEP_KEYS[name])
    if unknown:
        return f"{name} takes no argument {unknown[0][:100]!r}"
    if "tokenizer_name" in arguments and arguments["tokenizer_name"] != _TOKENIZER[config.type](config):
        return (f"its tokenizer_name {str(arguments['tokenizer_name'])[:200]!r} is not the tokenizer LeRobot uses for "
                f"{config.type} ({_TOKENIZER[config.type](config)!r})")  # fmt: skip
    extra = sorted(set(entry) - {"registry_name", "config", "state_file"})
    if extra:
        return f"it has an unknown key {extra[0][:100]!r}"
    return _state_file_problem(entry.get("state_file"), folder)


def _state_file_problem(state_file: Any, folder: Path) -> str | None:
    """A step's `state_file` must be a plain `.safetensors` name of a file inside the checkpoint."""
    if state_file is None:
        return None
    if not isinstance(state_file, str) or Path(state_file).name != state_file or state_file in ("", ".", ".."):
        return f"its state_file {str(state_file)[:200]!r} is not a file name inside the checkpoint"
    if not state_file.endswith(".safetensors"):
        return f"its state_file {state_file[:200]!r} is not a .safetensors file"
    return contained_problem(folder / state_file, folder)


def checkpoint_root(folder: Path) -> Path:
    """What a checkpoint's files may point into: the folder, or for a Hub snapshot the repo's cache folder
    (huggingface_hub links `snapshots/<commit>/<file>` to `../../blobs/<hash>`)."""
    folder = Path(folder).resolve()
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent
    return folder


def contained_problem(file: Path, folder: Path) -> str | None:
    """Why `file` (named by the checkpoint in `folder`) is refused, or None when it resolves inside it."""
    root = checkpoint_root(folder)
    try:
        target = Path(file).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return f"{Path(file).name!r} is a broken link"
    if not target.is_relative_to(root):
        return f"{Path(file).name!r} points outside the checkpoint"
    return None


def check_contained(folder: str | Path, names: tuple[str, ...]) -> None:
    """Refuse a checkpoint whose files `names` (those present) resolve outside it (symlinks to elsewhere)."""
    folder = Path(folder)
    for name in names:
        file = folder / name
        if file.is_symlink() or file.exists():
            problem = contained_problem(file, folder)
            if problem:
                raise CheckpointError(
                    f"refusing the checkpoint {str(folder)!r}: {problem}; a checkpoint's files must lie inside its "
                    "folder: replace the link with the file itself."
                )
