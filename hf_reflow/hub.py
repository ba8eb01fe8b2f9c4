"""The Hugging Face Hub client: access checks, pushes and downloads on huggingface_hub's own machinery.

One `HfApi(endpoint=..., token=...)` makes every request (never the module-level helpers, bound to the
endpoint read at import, nor `metadata_update` / `ModelCard.push_to_hub`, which in huggingface_hub 1.33
validate cards on huggingface.co whatever the endpoint). Access: `create_repo(exist_ok=True)` then
`auth_check(write=True)`; the token (standard sources only) is never written, logged or shown. Push:
`upload_folder`, whose requests huggingface_hub retries (408, 429, 5xx, dropped connections) and which
skips unchanged files, so a repeated push makes no commit. The commit carries `parent_commit`: if it lands
but its answer is lost, its retry fails (412) instead of committing twice, and our one retry layer, around
the commit only, reruns the upload, which finds nothing left to change. It also retries a transient
commit failure when huggingface_hub sends the commit once (no hf_xet), never otherwise. A Space is a repo
of type "space" created with its sdk (`create_repo(..., space_sdk="gradio")`), pushed the same way.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_reflow.errors import HubError

logger = logging.getLogger(__name__)

PUSH_RECORD = "hub.json"  # where a pushed folder remembers its repo and commit (never uploaded)
CARD = "README.md"
HIDDEN = (".*", "*/.*")  # hidden files and folders are never uploaded
SPACE_SDK = "gradio"
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
HINTS = {
    401: "the Hub rejected the token; set a valid HF_TOKEN or run `hf auth login`.",
    403: "the token cannot write there; use a write token (https://huggingface.co/settings/tokens) and a "
    "namespace you or your organisation own.",
    404: "not found; check the repo id, the revision and that a private repo's token can read it.",
}


@dataclass
class PushResult:
    """Where a push landed. `created` is False when the Hub already held identical files."""

    repo_id: str
    repo_type: str
    commit: str
    url: str
    created: bool


def make_api(endpoint: str | None = None) -> Any:
    """An `HfApi` for `endpoint` (default: `HF_ENDPOINT` now, else huggingface.co) with the standard token."""
    from huggingface_hub import HfApi, get_token

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    return HfApi(endpoint=endpoint.rstrip("/") if endpoint else None, token=get_token())


class Hub:
    """One `HfApi`; `retries`: reruns of an upload whose commit failed (see the module docstring)."""

    def __init__(self, api: Any = None, *, retries: int = 2) -> None:
        self.api = api if api is not None else make_api()
        self.retries = retries

    def check_push_access(self, repo_id: str, *, repo_type: str = "model", private: bool = False,
                          create: bool = False, space_sdk: str | None = None) -> None:  # fmt: skip
        """Fail fast unless the token may write to `repo_id`; `create` makes the repo first (exist_ok),
        else a repo that does not exist yet passes (the push creates it, or fails there). A Space is
        created with `space_sdk` (e.g. gradio)."""
        from huggingface_hub import constants
        from huggingface_hub.errors import RepositoryNotFoundError

        check_repo_id(repo_id)
        if constants.is_offline_mode():
            raise HubError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE=1 blocks all Hub requests; unset it "
                           "(or set HF_HUB_OFFLINE=0) to push, or turn pushing off.")  # fmt: skip
        if not self.api.token:
            raise HubError(f"pushing to {repo_id!r} needs a Hugging Face token with write access and none was "
                           "found; set HF_TOKEN or run `hf auth login`.")  # fmt: skip
        with self.errors(f"get write access to {repo_id}"):
            if create:
                space = {"space_sdk": space_sdk} if repo_type == "space" else {}
                self.api.create_repo(
                    repo_id, repo_type=repo_type, private=private or None, exist_ok=True, **space
                )
            try:
                self.api.auth_check(repo_id, repo_type=repo_type, write=True)
            except RepositoryNotFoundError:
                if create:
                    raise

    def push_folder(self, folder: str | Path, repo_id: str, *, repo_type: str = "model", private: bool = False,
                    revision: str | None = None, commit_message: str, space_sdk: str | None = None) -> PushResult:  # fmt: skip
        """Create the repo (an existing one is fine) and upload `folder`, less hidden files and hub.json."""
        self.check_push_access(
            repo_id, repo_type=repo_type, private=private, create=True, space_sdk=space_sdk
        )
        if revision and revision != "main":
            with self.errors(f"create branch {revision} in {repo_id}"):
                self.api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        before = parent = self.commit_id(repo_id, revision=revision, repo_type=repo_type)
        for attempt in range(self.retries + 1):
            try:
                info = self.api.upload_folder(
                    folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, revision=revision,
                    commit_message=commit_message, ignore_patterns=[PUSH_RECORD, *HIDDEN], parent_commit=parent,
                )  # fmt: skip
                break
            except _hub_errors() as e:
                if attempt == self.retries or not _retry_commit(e):
                    raise HubError(self.describe(e, f"commit to {repo_id}")) from None
                logger.warning(
                    "commit to %s failed (%s); rereading its head and retrying", repo_id, self.short(e)
                )
                parent = self.commit_id(repo_id, revision=revision, repo_type=repo_type)
        return PushResult(repo_id, repo_type, info.oid, info.commit_url, created=info.oid != before)

    def push_checkpoint(self, checkpoint: str | Path, repo_id: str, *, private: bool = False,
                        revision: str | None = None, commit_message: str | None = None,
                        eval_rows: list[dict[str, Any]] | None = None, license: str | None = None,
                        set_new_version: bool = False) -> PushResult:  # fmt: skip
        """Push a local k-RF checkpoint with its model card (also written to the folder as README.md).
        `license`: default the starting checkpoint's; `set_new_version`: point the teacher's card here."""
        from hf_reflow import cards

        check_repo_id(repo_id)
        if not Path(checkpoint).is_dir():  # a Hub id would resolve to a download in the cache
            raise HubError(
                f"--checkpoint must be a local checkpoint folder to push, got {str(checkpoint)!r}."
            )
        stage = cards.checkpoint_card(self, checkpoint, repo_id, eval_rows=eval_rows, license=license)
        _write_text(stage.folder / CARD, str(stage.card))
        message = commit_message or f"Upload {stage.label} with hf-reflow"
        result = self.push_folder(
            stage.folder, repo_id, private=private, revision=revision, commit_message=message
        )
        _write_push_record(stage.folder, result, revision)
        if set_new_version and stage.teacher_repo:
            cards.set_new_version(self, stage.teacher_repo, repo_id)
        return result

    def push_couplings(self, folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                       commit_message: str | None = None, license: str | None = None) -> PushResult:  # fmt: skip
        """Push a complete stored-couplings folder as a Hub dataset with its dataset card."""
        from hf_reflow import cards

        check_repo_id(repo_id)
        card, label = cards.couplings_card(self, Path(folder), repo_id, license=license)
        _write_text(Path(folder) / CARD, str(card))
        result = self.push_folder(folder, repo_id, repo_type="dataset", private=private, revision=revision,
                                  commit_message=commit_message or f"Upload {label}")  # fmt: skip
        _write_push_record(Path(folder), result, revision)
        return result

    def push_space(self, folder: str | Path, repo_id: str, *, private: bool = False,
                   commit_message: str = "Upload the hf-reflow Space") -> PushResult:  # fmt: skip
        """Push a Space folder (README.md header, app, requirements.txt, packages.txt) as a Gradio Space."""
        return self.push_folder(folder, repo_id, repo_type="space", private=private, commit_message=commit_message,
                                space_sdk=SPACE_SDK)  # fmt: skip

    def model_info(self, repo_id: str) -> Any:
        """A model repo's info (`sha`, `private`); a one-line `HubError` when it cannot be read."""
        with self.errors(f"read model {repo_id}"):
            return self.api.repo_info(repo_id, repo_type="model")

    def commit_id(self, repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> str:
        """The commit a revision (default main) of a repo points to."""
        with self.errors(f"read {repo_id}"):
            return self.api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha

    def read_text(self, repo_id: str, filename: str, *, revision: str | None = None,
                  repo_type: str = "model") -> str | None:  # fmt: skip
        """A file of a repo as text (through the cache), or None when the repo has no such file."""
        from huggingface_hub.errors import RemoteEntryNotFoundError

        with self.errors(f"read {filename} of {repo_id}"):
            try:
                return Path(
                    self.api.hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type)
                ).read_text()
            except RemoteEntryNotFoundError:
                return None

    def download(self, repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> Path:
        """A snapshot of a repo in huggingface_hub's cache (no request under HF_HUB_OFFLINE=1)."""
        from huggingface_hub.errors import LocalEntryNotFoundError

        with self.errors(f"download {repo_id}"):
            try:
                return Path(self.api.snapshot_download(repo_id, revision=revision, repo_type=repo_type))
            except LocalEntryNotFoundError:
                raise HubError(f"{repo_type} {repo_id!r} (revision {revision or 'main'}) is not in the Hugging Face "
                               "cache and cannot be downloaded (HF_HUB_OFFLINE=1 or no connection); download it once "
                               "online, or pass a local folder.") from None  # fmt: skip

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn huggingface_hub / httpx failures into one-line `HubError`s that say what to do."""
        try:
            yield
        except _hub_errors() as e:
            raise HubError(self.describe(e, what)) from None

    def short(self, error: Exception) -> str:
        """`Type status: first line`, with the token (if it ever appears) replaced by `***`."""
        text = f"{type(error).__name__}{f' {_status(error)}' if _status(error) else ''}: {str(error).strip()[:200]}"
        token = self.api.token
        return (
            text.splitlines()[0].replace(token, "***")
            if isinstance(token, str) and token
            else text.splitlines()[0]
        )

    def describe(self, error: Exception, what: str) -> str:
        transient = _status(error) in (*TRANSIENT_STATUS, None)
        retry = (
            "check the network and retry; a push can be rerun safely."
            if transient
            else "fix what it names and rerun."
        )
        return f"could not {what}: {self.short(error)}; {HINTS.get(_status(error), retry)}"


def check_repo_id(repo_id: str) -> None:
    """Raise `HubError` unless `repo_id` is a valid `namespace/name` Hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    problem = "it must be namespace/name" if not isinstance(repo_id, str) or repo_id.count("/") != 1 else None
    try:
        problem or validate_repo_id(repo_id)
    except HFValidationError as e:
        problem = str(e).splitlines()[0].rstrip(".")
    if problem:
        raise HubError(f"invalid Hub repo id {repo_id!r}: {problem}; use e.g. your-name/toy-2rf.")


def _hub_errors() -> tuple[type[Exception], ...]:
    import httpx

    return (
        OSError,
        httpx.HTTPError,
        ValueError,
    )  # HfHubHTTPError is an OSError, HFValidationError a ValueError


def _status(error: Exception) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _retry_commit(error: Exception) -> bool:
    """Whether an upload failed at its commit POST in a way that rerunning it fixes (module docstring)."""
    import httpx

    try:
        request = error.response.request if getattr(error, "response", None) is not None else error.request
    except (AttributeError, RuntimeError):  # no request attached
        return False
    if not re.search(r"/commit/[^/]+$", request.url.path):
        return False
    if _status(error) == 412:  # the branch moved: our commit whose answer was lost landed, or another one
        return True
    transient = _status(error) in TRANSIENT_STATUS or isinstance(error, httpx.TransportError)
    return transient and not _library_retries_commit()


def _library_retries_commit() -> bool:
    """huggingface_hub 1.33's `upload_folder` streams through hf_xet when installed, a pipeline that retries
    the commit POST itself; without hf_xet it calls `create_commit`, which sends it once."""
    from huggingface_hub import constants

    return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None


def checkpoint_commit(path_or_repo: str, *, revision: str | None = None) -> str | None:
    """The Hub commit a checkpoint comes from: a Hub id's snapshot, or what a pushed local folder recorded."""
    from hf_reflow.checkpoints import resolve_checkpoint

    folder = Path(resolve_checkpoint(path_or_repo, revision=revision))
    if folder.parent.name == "snapshots" and len(folder.name) == 40:  # huggingface_hub cache layout
        return folder.name
    return read_push_record(folder).get("commit")


def read_push_record(folder: str | Path) -> dict[str, Any]:
    """What a push recorded about a local folder ({} if never pushed)."""
    file = Path(folder) / PUSH_RECORD
    return json.loads(file.read_text()) if file.is_file() else {}


def _write_push_record(folder: Path, result: PushResult, revision: str | None) -> None:
    record = {"repo_id": result.repo_id, "repo_type": result.repo_type, "commit": result.commit,
              "revision": revision or "main"}  # fmt: skip
    _write_text(folder / PUSH_RECORD, json.dumps(record, indent=2, sort_keys=True))


def _write_text(file: Path, text: str) -> None:
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(file)


# ---- training hooks (`push_to_hub: true` in a TrainConfig) ----------------------------------
def repo_for_stage(template: str, hub_model_id: str, *, k: int, stage: str) -> str:
    """`template` (e.g. `{hub_model_id}-{k}rf{suffix}`) filled for a stage of kind `stage` and its k."""
    suffix = {"distill": "-distilled", "shortcut": "-shortcut"}.get(stage, "")
    return template.format(hub_model_id=hub_model_id, k=k, stage=stage, suffix=suffix)


def stage_repo_id(config: Any) -> str:
    """The repo a stage pushes to: `hub_repo_template` filled with hub_model_id, k, stage, suffix."""
    from hf_reflow.configs import stage_k
    from hf_reflow.couplings import load_teacher_lineage

    teacher_k = load_teacher_lineage(config.teacher.path).get("k", 1) if config.teacher.path else 0
    return repo_for_stage(config.hub_repo_template, config.hub_model_id, k=stage_k(config.stage, teacher_k),
                          stage=config.stage)  # fmt: skip


def check_stage_push(config: Any) -> str:
    """Before training: the stage's repo id, once the repo exists (made now, as transformers' Trainer does)
    and the token may write to it."""
    repo_id = stage_repo_id(config)
    Hub().check_push_access(repo_id, private=config.hub_private, create=True)
    return repo_id


def push_stage(config: Any, final: Path, repo_id: str) -> PushResult:
    """After training: push the final checkpoint; a failure says how to retry without retraining."""
    try:
        result = Hub().push_checkpoint(
            final,
            repo_id,
            private=config.hub_private,
            revision=config.hub_revision,
            set_new_version=bool(getattr(config, "hub_set_new_version", False)),
        )
    except HubError as e:
        raise HubError(f"{e} The checkpoint is saved; retry the push with `hf-reflow push --checkpoint={final} "
                       f"--repo_id={repo_id}`.") from None  # fmt: skip
    logger.warning(
        "pushed %s to %s (commit %s%s)",
        final,
        result.url,
        result.commit[:8],
        "" if result.created else ", unchanged",
    )
    return result
