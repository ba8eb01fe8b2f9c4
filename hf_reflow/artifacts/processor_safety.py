"""No code runs from a checkpoint we load: processor steps only from LeRobot's step registry.

LeRobot 0.6.1 builds a processor step from its JSON either by `registry_name` or by importing the `class`
path the JSON names; the second would let any checkpoint run any importable callable. `check_processor_steps`
refuses it before LeRobot reads the file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from hf_reflow.errors import CheckpointError

logger = logging.getLogger(__name__)
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
_PLUGINS_IMPORTED = False


def check_processor_steps(folder: str | Path, config: Any = None, *, trust_hint: bool = True) -> None:
    """Refuse processor JSON whose steps would make LeRobot import a path the checkpoint names.

    LeRobot 0.6.1's `DataProcessorPipeline.from_pretrained` resolves a step by its `registry_name` in
    `ProcessorStepRegistry` or, without one, by importing the `class` path the JSON names and calling it
    with the JSON's `config` (any importable callable: `subprocess.Popen`, `os.system`, ...). Allowed here:
    steps whose `registry_name` LeRobot, hf-reflow or an installed `lerobot_policy_*` plugin registered,
    and no `class` key at all. Raises `CheckpointError` (one line) naming the first offending step.
    """
    from lerobot.processor import ProcessorStepRegistry

    folder = Path(folder)
    _import_step_registrations(config, plugins=False)
    for filename in PROCESSOR_FILES:
        file = folder / filename
        if not file.is_file():
            continue  # LeRobot reports a missing pipeline file itself
        try:
            pipeline = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{str(file)!r} is not a readable processor JSON ({type(e).__name__}).") from None
        steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
        if not isinstance(steps, list):
            raise CheckpointError(f"{str(file)!r} is not a processor pipeline (no list of steps).")
        for index, entry in enumerate(steps):
            name = entry.get("registry_name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in ProcessorStepRegistry.list():
                _import_step_registrations(config, plugins=True)  # an installed plugin may register it
            problem = _step_problem(entry, set(ProcessorStepRegistry.list()))
            if problem is not None:
                hint = (
                    "; if you trust this local checkpoint, load it with allow_unregistered_processor_steps=True"
                    if trust_hint
                    else ""
                )
                raise CheckpointError(
                    f"refusing processor step {index} of {str(file)!r}: {problem}. hf-reflow only builds steps "
                    "registered by LeRobot, hf-reflow or an installed lerobot_policy_* plugin (install the plugin "
                    f"that registers it){hint}."
                )


def _step_problem(entry: Any, registered: set[str]) -> str | None:
    """Why a processor step entry is refused, or None when LeRobot would build it from the registry."""
    if not isinstance(entry, dict):
        return f"it is a {type(entry).__name__}, not a step object"
    if "class" in entry:
        return f"it names the import path {str(entry['class'])[:200]!r} ('class'), which is never imported from a checkpoint"
    name = entry.get("registry_name")
    if not isinstance(name, str):
        return "it has no registry_name"
    if name not in registered:
        return f"its registry_name {name[:200]!r} is not a registered processor step"
    return None


def _import_step_registrations(config: Any, *, plugins: bool) -> None:
    """Import installed code that registers processor steps (never a module a checkpoint names).

    Always: hf-reflow's policy and the `processor_<type>` module of the config's (registered) policy class,
    the module LeRobot itself imports for that type. With `plugins`: installed `lerobot_policy_*` packages.
    """
    global _PLUGINS_IMPORTED
    import lerobot.processor  # noqa: F401  (LeRobot's own steps)

    import hf_reflow.policies.flow_mlp  # noqa: F401  (registers flow_mlp's steps; heavy, so imported on use)

    if config is not None:
        module = type(config).__module__.replace("configuration_", "processor_")
        if module != type(config).__module__:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                importlib.import_module(module)
    if plugins and not _PLUGINS_IMPORTED:
        _PLUGINS_IMPORTED = True
        for dist in importlib.metadata.distributions():
            name = dist.metadata.get("Name") or ""
            if name.replace("-", "_").startswith("lerobot_policy_"):
                try:
                    importlib.import_module(name.replace("-", "_"))
                except Exception:  # a broken plugin must not stop loading checkpoints it does not concern
                    logger.warning("could not import the LeRobot plugin %s", name, exc_info=True)
