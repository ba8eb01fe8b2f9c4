"""A training run's directory in lerobot-train's layout, and the rule for reusing one.

    output_dir/
      train_config.json                         the run's config (identifies the run for --resume)
      checkpoints/<step>/pretrained_model/      a stock LeRobot checkpoint + train_config.json
      checkpoints/<step>/training_state/        JSON + safetensors, for an exact --resume
      checkpoints/last -> <step>                the newest complete checkpoint
      pretrained_model/                         the final model (hard links to the last checkpoint's files);
                                                written last, so it marks a finished run
      logs/                                     trackers
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hf_reflow.artifacts.checkpoints import check_weights
from hf_reflow.artifacts.content import with_inputs_found
from hf_reflow.artifacts.run_lock import LOCK_FILE
from hf_reflow.atomic import TEMPORARY_MARK, atomic_path, remove
from hf_reflow.configs import RECORD_KEYS, TrainConfig, resolved_paths
from hf_reflow.errors import CheckpointError, ConfigError
from hf_reflow.parsing import train_config_from_dict
from hf_reflow.refs import PRETRAINED_DIR, checkpoint_folder

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state"
LAST = "last"  # checkpoints/last -> the newest complete checkpoint (lerobot-train's name)
TRAIN_CONFIG = "train_config.json"
# A run dir may be moved, then resumed; Hub and tracker settings may change too (e.g. to push a finished run).
IGNORED_ON_RESUME = (
    "resume", "output_dir", "push_to_hub", "hub_model_id", "hub_repo_template", "hub_private", "hub_revision",
    "hub_set_new_version",
    "wandb", "job_name", "env", "env_eval_freq", "eval", *RECORD_KEYS,  # evaluation settings do not change the weights
)  # fmt: skip


def check_run_dir(config: TrainConfig) -> bool:
    """True when `config.output_dir` holds this run, finished; False when it is new (or this run, unfinished).

    Checked before any setup: the dir (or the folder it will be made in) is writable, and a dir that holds
    files holds this run (`--resume=true`, same settings). Temporary names a killed run left are removed.

    Raises:
        CheckpointError: a file, an unwritable place, another run, or this one without `--resume=true`.
    """
    output_dir = Path(config.output_dir)
    check_writable(output_dir)
    if not output_dir.exists() or not any(p.name != LOCK_FILE for p in output_dir.iterdir()):
        return False
    saved = output_dir / TRAIN_CONFIG
    if not config.resume or not saved.is_file():
        raise CheckpointError(
            f"output dir {str(output_dir)!r} already holds a run; pass --resume=true to continue it "
            "or choose another --output_dir."
        )
    changed = differences(config, saved)
    if changed:
        raise CheckpointError(
            f"output dir {str(output_dir)!r} holds a different run (differs in {', '.join(changed)}); "
            "resume with the same settings or choose another --output_dir."
        )
    remove_temporary(output_dir)
    return _finished(output_dir)


def differences(config: TrainConfig, saved: Path) -> list[str]:
    """The settings in which `config` differs from the run whose `train_config.json` is `saved` ([]: the same run).

    Local paths are compared resolved, as they are stored: the same run typed from another directory is the same
    run; an input found at another path with the content the run recorded (a moved or copied run) is the same input.
    """
    mine = {k: v for k, v in resolved_paths(config.to_dict()).items() if k not in IGNORED_ON_RESUME}
    recorded = with_inputs_found(_read_saved_config(saved), config.to_dict())
    theirs = {k: v for k, v in resolved_paths(_saved_config(recorded, saved).to_dict()).items() if k not in IGNORED_ON_RESUME}
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def _finished(output_dir: Path) -> bool:
    """The run's final model is there and its weights read; damaged final weights (e.g. truncated) are removed,
    so the resume rebuilds them from the last checkpoint's training state."""
    final = output_dir / PRETRAINED_DIR
    if checkpoint_folder(final) != final:
        return False
    try:
        check_weights(final)
    except CheckpointError as e:
        logger.warning("the final model is damaged (%s); rebuilding it from the last checkpoint", e)
        shutil.rmtree(final)
        return False
    return True


def check_writable(output_dir: Path) -> None:
    """Refuse an output dir that is a file or where no file can be created (one `CheckpointError`)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(f"output dir {str(output_dir)!r} is a file; choose another --output_dir.")
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    try:  # a probe file, not os.access: root passes permission checks, yet a read-only file system refuses it
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".hf-reflow-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(
            f"output dir {str(output_dir)!r} is not writable (creating a file in {str(existing)!r} failed: "
            f"{e.strerror}); choose another --output_dir or fix its permissions."
        ) from None


def _read_saved_config(saved: Path) -> dict:
    try:
        data = json.loads(saved.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{str(saved)!r} is not readable JSON ({type(e).__name__}), so this run cannot be resumed; "
            "delete the output dir to start over, or choose another --output_dir."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(saved)!r} is not a run config; delete the output dir or choose another --output_dir.")
    return data


def _saved_config(recorded: dict, saved: Path) -> TrainConfig:
    """The run's `train_config.json` (`recorded`, read from `saved`) as a recipe: keys added since that run take
    their defaults, and its policy resolves as it did then (an older run's policy section holds only the fields
    it set)."""
    data = {k: v for k, v in recorded.items() if k not in RECORD_KEYS}
    try:
        return train_config_from_dict(data)
    except (ConfigError, CheckpointError) as e:  # e.g. its teacher is gone, and no input here has its weights
        raise CheckpointError(
            f"{str(saved)!r} no longer parses as a run config ({e}); delete the output dir to start over, or "
            "choose another --output_dir."
        ) from None


def remove_temporary(output_dir: Path) -> None:
    """Delete what an interrupted save left: `.<name>.tmp*` / `.<name>.old-*` in the run dir and `checkpoints/`,
    whatever process wrote them (a killed run's PID is in the name, so nothing else would ever remove them)."""
    for folder in (Path(output_dir), Path(output_dir) / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") and (TEMPORARY_MARK in path.name or ".old-" in path.name):
                remove(path)


def find_resumable_checkpoint(output_dir: Path, loads: Callable[[Path], None]) -> int | None:
    """The step of the newest numbered checkpoint whose training state `loads` without error (older ones
    are tried in turn when a newer one is damaged, e.g. truncated by a full disk); None when there is none.

    Raises:
        CheckpointError: no checkpoint loads (the newest one's reason).
    """
    steps = sorted((int(p.name) for p in (Path(output_dir) / CHECKPOINTS).glob("[0-9]*") if p.name.isdigit()), reverse=True)
    newest_error = None
    for step in steps:
        try:
            loads(checkpoint_dir(output_dir, step) / TRAINING_STATE)
        except CheckpointError as e:
            logger.warning("cannot resume from checkpoint %06d (%s); trying the one before", step, e)
            newest_error = newest_error or e
            continue
        return step
    if newest_error is not None:
        older = f"; none of the {len(steps) - 1} older checkpoint(s) can be resumed either" if len(steps) > 1 else ""
        raise CheckpointError(f"{newest_error}{older}") from None
    return None


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"{step:06d}"


def point_last_at(checkpoint: Path) -> None:
    """`checkpoints/last` -> `checkpoint` (relative), replaced atomically."""
    with atomic_path(checkpoint.parent / LAST) as tmp:
        os.symlink(checkpoint.name, tmp, target_is_directory=True)


def link_tree(src: Path, dst: Path, *, symlinks: bool = False) -> None:
    """Make `dst` a copy of `src` whose files are hard links where possible (no second copy of the weights);
    `symlinks`: links in `src` stay links (a run dir's relative `checkpoints/last`). A live run's lock file and
    half-written temporary names are not copied (a lock file is written in place)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_path(dst) as tmp:
        ignore = shutil.ignore_patterns(LOCK_FILE, f".*{TEMPORARY_MARK}", f".*{TEMPORARY_MARK}-*")
        shutil.copytree(src, tmp, symlinks=symlinks, copy_function=link_or_copy, ignore=ignore)
