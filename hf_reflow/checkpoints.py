"""Checkpoints in LeRobot's `pretrained_model/` layout: resolve, load, save atomically.

A checkpoint folder is what stock LeRobot loads (`config.json`, `model.safetensors`, pre/post
processor JSON + stats) plus `reflow.json`, hf-reflow's lineage metadata, kept out of `config.json`
because stock loading rejects unknown keys there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from hf_reflow.errors import CheckpointError

REFLOW_INFO = "reflow.json"
PRETRAINED_DIR = "pretrained_model"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_checkpoint(path_or_repo: str | Path, *, revision: str | None = None) -> str:
    """The local folder of a checkpoint: a folder holding `config.json` (a run dir resolves to its final
    `pretrained_model/`), or a Hub repo id downloaded through huggingface_hub's cache (`HF_HUB_OFFLINE` honoured).
    """
    path = Path(path_or_repo)
    for candidate in (path, path / PRETRAINED_DIR):
        if (candidate / "config.json").is_file():
            return str(candidate)
    if path.exists():
        raise CheckpointError(
            f"{str(path)!r} holds no checkpoint (no config.json in it or in {PRETRAINED_DIR}/); "
            "pass a training output dir or its pretrained_model/ folder."
        )
    if _REPO_ID.match(str(path_or_repo)):
        from hf_reflow.errors import HubError
        from hf_reflow.hub import Hub

        try:
            return str(Hub().download(str(path_or_repo), revision=revision))
        except HubError as e:
            raise CheckpointError(f"checkpoint {str(path_or_repo)!r} is no local folder; as a Hub repo id: {e}") from None
    raise CheckpointError(f"checkpoint {str(path_or_repo)!r} is neither a local folder nor a Hub repo id (user/name).")


def load_config(path_or_repo: str, *, revision: str | None = None) -> Any:
    """The LeRobot policy config of a checkpoint, without loading weights."""
    from lerobot.configs.policies import PreTrainedConfig

    import hf_reflow.policies.flow_mlp  # noqa: F401  (registers the built-in policy type)

    source = resolve_checkpoint(path_or_repo, revision=revision)
    try:
        return PreTrainedConfig.from_pretrained(source)
    except Exception as e:
        raise CheckpointError(
            f"cannot read the policy config of {source!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Check the path / repo id, or set HF_HUB_OFFLINE=0 to allow a download."
        ) from None


def load_policy(path_or_repo: str, *, device: torch.device | str = "cpu", revision: str | None = None, config=None):
    """Load a LeRobot policy (any registered type) from a checkpoint onto `device`, in eval mode."""
    from lerobot.policies.factory import get_policy_class

    source = resolve_checkpoint(path_or_repo, revision=revision)
    config = load_config(source) if config is None else config
    config.device = torch.device(device).type
    policy = get_policy_class(config.type).from_pretrained(source, config=config)
    return policy.to(device)


def load_processors(path_or_repo: str, config: Any, *, device: torch.device | str = "cpu", revision=None):
    """The checkpoint's own (pre, post) processors, with their device step pointed at `device`."""
    from lerobot.policies.factory import make_pre_post_processors

    source = resolve_checkpoint(path_or_repo, revision=revision)
    overrides = {"device_processor": {"device": str(device)}}
    return make_pre_post_processors(config, pretrained_path=source, preprocessor_overrides=overrides)


def read_reflow_info(path: str | Path) -> dict[str, Any]:
    """`reflow.json` of a local checkpoint ({} for a checkpoint hf-reflow did not train)."""
    file = Path(resolve_checkpoint(path)) / REFLOW_INFO
    return json.loads(file.read_text()) if file.is_file() else {}


def save_checkpoint(
    directory: Path,
    policy: torch.nn.Module,
    preprocessor: Any,
    postprocessor: Any,
    info: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a stock-loadable checkpoint to `directory` via a temporary sibling, then rename it in place."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp, state_dict=state_dict)
    preprocessor.save_pretrained(tmp)
    postprocessor.save_pretrained(tmp)
    (tmp / REFLOW_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    _replace_dir(tmp, directory)
    return directory


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing an older `dst` with only a brief window without it."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
