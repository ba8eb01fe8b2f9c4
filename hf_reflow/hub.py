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
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_reflow.atomic import write_text
from hf_reflow.errors import HubError

logger = logging.getLogger(__name__)

PUSH_RECORD = "hub.json"  # where a pushed folder remembers its repo and commit (never uploaded)
CARD = "README.md"
HIDDEN = (".*", "*/.*")  # hidden files and folders are never uploaded
TEMPORARY = ("*.tmp-*", "*/*.tmp-*", "*.partial-*", "*/*.partial-*")  # what an interrupted writer leaves: never uploaded
SPACE_SDK = "gradio"
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
RETRY, FIX = "check the network and retry; a push can be rerun safely.", "fix what it names and rerun."
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


DEFAULT_ENDPOINT = "https://huggingface.co"


def web_url() -> str:
    """The Hub's web address for links on cards and Space pages: `HF_ENDPOINT` now (as `make_api`), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


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
        check_revision(revision)
        check_no_outside_links(folder)
        self.check_push_access(
            repo_id, repo_type=repo_type, private=private, create=True, space_sdk=space_sdk
        )
        if revision and revision != "main":
            with self.errors(f"create branch {revision} in {repo_id}"):
                self.api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        before = parent = self.repo_info(repo_id, revision=revision, repo_type=repo_type).sha
        for attempt in range(self.retries + 1):
            try:
                info = self.api.upload_folder(
                    folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, revision=revision,
                    commit_message=commit_message, ignore_patterns=[PUSH_RECORD, *HIDDEN, *TEMPORARY], parent_commit=parent,
                )  # fmt: skip
                break
            except _hub_errors() as e:
                if attempt == self.retries or not _retry_commit(e):
                    raise HubError(self.describe(e, f"commit to {repo_id}")) from None
                logger.warning(
                    "commit to %s failed (%s); rereading its head and retrying", repo_id, self.short(e)
                )
                parent = self.repo_info(repo_id, revision=revision, repo_type=repo_type).sha
        return PushResult(repo_id, repo_type, info.oid, info.commit_url, created=info.oid != before)

    def push_space(self, folder: str | Path, repo_id: str, *, private: bool = False,
                   commit_message: str = "Upload the hf-reflow Space") -> PushResult:  # fmt: skip
        """Push a Space folder (README.md header, app, requirements.txt, packages.txt) as a Gradio Space."""
        return self.push_folder(folder, repo_id, repo_type="space", private=private, commit_message=commit_message,
                                space_sdk=SPACE_SDK)  # fmt: skip

    def move_tag(self, repo_id: str, tag: str, revision: str, *, repo_type: str = "model") -> None:
        """Point `tag` at `revision` (deleted first when it exists), as LeRobot tags a dataset's codebase version."""
        from huggingface_hub.errors import RevisionNotFoundError

        with self.errors(f"tag {repo_id} {tag}"):
            with suppress(RevisionNotFoundError):
                self.api.delete_tag(repo_id, tag=tag, repo_type=repo_type)
            self.api.create_tag(repo_id, tag=tag, revision=revision, repo_type=repo_type)

    def repo_info(self, repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> Any:
        """A repo's info: `sha` (the commit `revision`, default main, points to), `private`, ..."""
        check_revision(revision)
        with self.errors(f"read {repo_type} {repo_id}"):
            return self.api.repo_info(repo_id, revision=revision, repo_type=repo_type)

    def read_text(self, repo_id: str, filename: str, *, revision: str | None = None,
                  repo_type: str = "model") -> str | None:  # fmt: skip
        """A file of a repo as text (through the cache), or None when the repo has no such file."""
        from huggingface_hub.errors import RemoteEntryNotFoundError

        check_revision(revision)
        with self.errors(f"read {filename} of {repo_id}"):
            try:
                file = self.api.hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type)
            except RemoteEntryNotFoundError:
                return None
            return Path(file).read_text()

    def download(self, repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> Path:
        """A snapshot of a repo in huggingface_hub's cache (no request under HF_HUB_OFFLINE=1)."""
        from huggingface_hub.errors import LocalEntryNotFoundError

        check_revision(revision)
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
        status, token = _status(error), self.api.token
        text = f"{type(error).__name__}{f' {status}' if status else ''}: {str(error).strip()[:200]}"
        text = text.splitlines()[0]
        return text.replace(token, "***") if isinstance(token, str) and token else text

    def describe(self, error: Exception, what: str) -> str:
        """`could not <what>: <short>; <advice>`: the status's hint, else retry (transient) or fix it."""
        status = _status(error)
        advice = HINTS.get(status, RETRY if status in (*TRANSIENT_STATUS, None) else FIX)
        return f"could not {what}: {self.short(error)}; {advice}"


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


_BAD_REF_CHARS = frozenset(" ~^:?*[\\")


def revision_problem(revision: Any) -> str | None:
    """Why `revision` is no valid branch / tag / commit name (git's check-ref-format rules), or None."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision:
        return "it must be a non-empty branch, tag or commit name"
    if ".." in revision or "@{" in revision or "//" in revision:
        return "it may not contain '..', '@{' or '//'"
    if revision.startswith(("/", ".", "-")) or revision.endswith(("/", ".", ".lock")):
        return "it may not start with '/', '.' or '-', nor end with '/', '.' or '.lock'"
    if any(ch in _BAD_REF_CHARS or ord(ch) < 32 or ord(ch) == 127 for ch in revision):
        return "it may not contain spaces, control characters or any of ~^:?*[\\"
    if any(part.startswith(".") for part in revision.split("/")):
        return "no part of it may start with '.'"
    return None


def check_revision(revision: str | None) -> None:
    """Raise `HubError` unless `revision` is None or a valid branch / tag / commit name."""
    problem = revision_problem(revision)
    if problem:
        raise HubError(f"invalid Hub revision {str(revision)[:200]!r}: {problem}; use e.g. main, v1.0 or a commit hash.")


def check_no_outside_links(folder: str | Path) -> None:
    """Refuse to upload a folder holding a symlink that leaves it (its target's content would be uploaded)."""
    root = Path(folder).resolve()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise HubError(
                f"refusing to push {str(folder)!r}: {str(path.relative_to(folder))!r} is a link to a file outside "
                "the folder, whose content would be uploaded; replace the link with the file itself or remove it."
            )


def _hub_errors() -> tuple[type[Exception], ...]:
    """What a Hub call raises: HfHubHTTPError is an OSError, HFValidationError a ValueError."""
    import httpx

    return OSError, httpx.HTTPError, ValueError


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


def read_push_record(folder: str | Path) -> dict[str, Any]:
    """What a push recorded about a local folder ({} if never pushed)."""
    file = Path(folder) / PUSH_RECORD
    return json.loads(file.read_text()) if file.is_file() else {}


def write_push_record(folder: Path, result: PushResult, revision: str | None) -> None:
    """Remember in `folder/hub.json` where it was pushed (read by cards, the Space and lineage)."""
    record = {"repo_id": result.repo_id, "repo_type": result.repo_type, "commit": result.commit,
              "revision": revision or "main"}  # fmt: skip
    write_text(folder / PUSH_RECORD, json.dumps(record, indent=2, sort_keys=True))


