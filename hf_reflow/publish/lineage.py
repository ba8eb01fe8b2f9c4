"""The facts a card states about where a checkpoint comes from: itself, its teachers, its base model, its
license and datasets, read from local folders or from the Hub."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hf_reflow.artifacts.checkpoints import REFLOW_INFO, read_reflow_info
from hf_reflow.errors import CheckpointError, HubError
from hf_reflow.hub import read_push_record
from hf_reflow.refs import CheckpointRef, is_repo_id

logger = logging.getLogger(__name__)
DEFAULT_LICENSE = "apache-2.0"  # what a card says when the starting checkpoint names no license
MAX_LINEAGE = 32  # teachers followed back at most (a cycle or a very long chain stops there)


def hub_id(value: Any) -> str | None:
    """`value` when it names a Hub repo (`refs.is_repo_id`), else None."""
    return value if is_repo_id(value) else None


def hub_dataset(info: dict[str, Any]) -> dict[str, Any] | None:
    """The training dataset on the Hub: {repo_id, commit, revision} when it was read from the Hub, or read
    from a local `root` that was pushed since (its push record); None for a local dataset never pushed."""
    dataset = info.get("dataset") or {}
    if dataset.get("root"):
        record = read_push_record(dataset["root"]) if Path(dataset["root"]).is_dir() else {}
        return {"repo_id": record["repo_id"], "commit": record.get("commit"), "revision": None} if record.get("repo_id") else None
    if not hub_id(dataset.get("repo_id")):
        return None
    return {"repo_id": dataset["repo_id"], "commit": dataset.get("commit"), "revision": dataset.get("revision")}


def hub_datasets(info: dict[str, Any]) -> list[str]:
    """The training dataset's Hub id as a list (the card's `datasets`), [] for a local one never pushed."""
    found = hub_dataset(info)
    return [found["repo_id"]] if found else []


# ---- the facts a card needs from the Hub ------------------------------------------------------
def source(hub: Any, path: str) -> dict[str, Any]:
    """A checkpoint named by a local path or a Hub id: repo_id (None if never pushed), commit, path,
    folder (local), k, stage, teacher and its `reflow.json` as `info`."""
    try:
        ref = CheckpointRef.of(path)
        if ref.is_local:
            info = read_reflow_info(ref)
            row = {"repo_id": ref.repo_id, "commit": ref.commit, "folder": str(ref.folder)}
        else:  # through the caller's client (its endpoint and token)
            info = json.loads(hub.read_text(path, REFLOW_INFO) or "{}")
            row = {"repo_id": path, "commit": hub.repo_info(path).sha}
    except (CheckpointError, HubError) as e:
        logger.warning("%s is neither a local checkpoint nor readable on the Hub (%s)", path, e)
        info, row = {}, {"repo_id": None, "commit": None}
    return {**row, "path": path, "k": info.get("k", "?"), "stage": info.get("stage", "unknown"),
            "teacher": info.get("teacher"), "info": info}  # fmt: skip


def lineage(hub: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
    """A checkpoint's teachers, oldest first (rows of `source`, commit = the one trained from)."""
    rows: list[dict[str, Any]] = []
    child, teacher, seen = info, info.get("teacher"), set()
    while teacher and teacher not in seen and len(rows) < MAX_LINEAGE:
        seen.add(teacher)
        row = source(hub, str(teacher))
        row["commit"] = child.get("teacher_commit") or row["commit"]
        rows.insert(0, row)
        child, teacher = row["info"], row["teacher"]
    return rows


def base_source(
    hub: Any, folder: Path, info: dict[str, Any], teachers: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a stage started from: its teacher; else `reflow.json`'s `base_model` (+ `base_model_commit`),
    else `policy.path` in the run's train_config.json (beside the checkpoint or one level up); {} for none."""
    if teachers:
        return teachers[-1]
    path = info.get("base_model")
    for config in (folder / "train_config.json", folder.parent / "train_config.json"):
        if not path and config.is_file():
            path = (json.loads(config.read_text()).get("policy") or {}).get("path")
    if not path:
        return {}
    row = source(hub, str(path))
    return {**row, "commit": info.get("base_model_commit") or row["commit"]}


def card_license(hub: Any, row: dict[str, Any]) -> dict[str, str]:
    """`license` (+ `license_name` / `license_link`) from a source's card: its local README.md, else its
    Hub repo's; apache-2.0 when neither names one."""
    from huggingface_hub import ModelCard

    text, local = None, Path(row.get("folder") or "") / "README.md"
    if row.get("folder") and local.is_file():
        text = local.read_text()
    elif row.get("repo_id"):
        try:
            text = hub.read_text(row["repo_id"], "README.md", revision=row.get("commit"))
        except HubError as e:
            logger.warning(
                "cannot read the license of %s (%s); the card says %s", row["repo_id"], e, DEFAULT_LICENSE
            )
    data = ModelCard(text).data.to_dict() if text else {}
    if not data.get("license"):
        return {"license": DEFAULT_LICENSE}
    return {k: data[k] for k in ("license", "license_name", "license_link") if data.get(k)}


def pushed_id(path_or_repo: str | None) -> str | None:
    """The Hub id of a folder that was pushed (its hub.json), or of a Hub id itself."""
    if path_or_repo and Path(path_or_repo).is_dir():
        return read_push_record(path_or_repo).get("repo_id")
    return hub_id(path_or_repo)
