"""Where a checkpoint is, decided once: a local folder or a Hub repo id.

A checkpoint is a folder holding LeRobot's `config.json`; a training run dir names its final
`pretrained_model/`. A value of the form `namespace/name` (huggingface_hub's rule) that is no local path
is a Hub repo id. Every command that takes a checkpoint (`--teacher.path`, `--policy.path`, `--checkpoint`,
a Space's chain, a card's lineage) turns it into a `CheckpointRef` here and nowhere else.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_reflow.errors import CheckpointError, HubError
from hf_reflow.hub import Hub, check_repo_id, read_push_record

PRETRAINED_DIR = "pretrained_model"  # a run dir's final model, as lerobot-train names it
CONFIG_FILE = "config.json"
WEIGHTS = "model.safetensors"
_PASS = "pass a training output dir, its pretrained_model/ folder or a Hub repo id"


def is_repo_id(value: Any) -> bool:
    """Whether `value` names a Hub repo: `namespace/name` valid for huggingface_hub, no existing local path,
    and not `local/...` (LeRobot's name for a dataset that only lives on disk)."""
    if not isinstance(value, str) or value.startswith("local/") or Path(value).exists():
        return False
    try:
        check_repo_id(value)
    except HubError:
        return False
    return True


def checkpoint_folder(path: str | Path) -> Path | None:
    """The local folder holding the checkpoint's `config.json`: `path` itself or its `pretrained_model/`."""
    path = Path(path)
    return next((f for f in (path, path / PRETRAINED_DIR) if (f / CONFIG_FILE).is_file()), None)


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint named by a local path or a Hub repo id.

    Attributes:
        source: the value as the user gave it.
        folder: the local folder holding `config.json` (None for a Hub id until `local()` downloads it).
        repo_id: the Hub repo: `source` for a Hub id, the one a local folder was pushed to (its `hub.json`),
            or None.
        revision: the Hub revision asked for (None: main).
        commit: the Hub commit a local folder was pushed as (None when unknown).
    """

    source: str
    folder: Path | None
    repo_id: str | None
    revision: str | None = None
    commit: str | None = None

    @classmethod
    def of(
        cls, value: str | Path | CheckpointRef | None, *, revision: str | None = None, flag: str = "checkpoint"
    ) -> CheckpointRef:
        """Resolve `value` without any Hub request (a `CheckpointRef` is returned as it is).

        Raises:
            CheckpointError: empty, a folder without a checkpoint, or neither a folder nor a Hub repo id.
        """
        if isinstance(value, CheckpointRef):
            return value
        if value is None or not str(value):
            raise CheckpointError(f"{flag} is empty; {_PASS}.")
        folder = checkpoint_folder(value)
        if folder is not None:
            record = read_push_record(folder)
            return cls(str(value), folder, record.get("repo_id"), revision, record.get("commit"))
        if Path(value).exists():
            raise CheckpointError(
                f"{flag} {str(value)!r} holds no checkpoint (no {CONFIG_FILE} in it or in its {PRETRAINED_DIR}/); {_PASS}."
            )
        if is_repo_id(str(value)):
            return cls(str(value), None, str(value), revision)
        raise CheckpointError(
            f"no checkpoint at {flag} {str(value)!r} (no such folder, and not a Hub repo id like user/name); {_PASS}."
        )

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    def local(self) -> Path:
        """The local folder, downloading a Hub checkpoint through huggingface_hub's cache (`HF_HUB_OFFLINE` honoured)."""
        return self.folder if self.folder is not None else self._snapshot

    @functools.cached_property
    def _snapshot(self) -> Path:
        """A Hub checkpoint's snapshot folder, downloaded once per ref."""
        try:
            return Hub().download(self.source, revision=self.revision)
        except HubError as e:
            raise CheckpointError(f"checkpoint {self.source!r} is no local folder; as a Hub repo id: {e}") from None

    def read_text(self, filename: str, *, hub: Hub | None = None) -> str | None:
        """One file of the checkpoint (a Hub one reads only that file, through `hub` or a default client),
        or None when it has none; once `local()` has downloaded a Hub checkpoint, its files are read there."""
        folder = self.folder if self.folder is not None else self.__dict__.get("_snapshot")  # cached_property's slot
        if folder is not None:
            file = folder / filename
            return file.read_text(errors="replace") if file.is_file() else None  # bad bytes: not JSON, said so
        return (hub or Hub(retries=0)).read_text(self.source, filename, revision=self.revision)

    def config(self, *, hub: Hub | None = None) -> dict[str, Any]:
        """`config.json` as a mapping, checked to be a LeRobot policy config (it has a `type`)."""
        text = self.read_text(CONFIG_FILE, hub=hub)
        try:
            data = json.loads(text) if text is not None else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise CheckpointError(
                f"{self.source!r}: its {CONFIG_FILE} is missing or not a LeRobot policy config (no \"type\"); "
                "pass a LeRobot policy checkpoint."
            )
        return data
