"""The one module that talks to the Hugging Face Hub: access checks, pushes with cards, downloads.

Every request goes through one `HfApi(endpoint=..., token=...)` owned by a `Hub` and passed to every
call (never huggingface_hub's module-level helpers, which are bound to the endpoint read at import,
and never `ModelCard.push_to_hub` / `RepoCard.validate`, which call huggingface.co directly).

- Authentication comes only from huggingface_hub's standard sources (`HF_TOKEN`, the saved login);
  the token is never written to a file, card, log line or error message.
- A push is one commit (checkpoint folder + README.md card). Transient failures (5xx, 408/429,
  connection reset, timeout) are retried with exponential backoff. A commit is atomic on the Hub,
  and a retried or repeated push of unchanged files makes no new commit (the preupload answer
  carries each remote file's oid and huggingface_hub drops unchanged files), so a lost response
  never turns into a duplicate commit.
- Downloads go through huggingface_hub's cache and honour `HF_HUB_OFFLINE`.
- The endpoint is `HF_ENDPOINT` read when the `Hub` is made (huggingface_hub reads it at import).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hf_reflow.errors import HubError

logger = logging.getLogger(__name__)

T = TypeVar("T")
PUSH_RECORD = "hub.json"  # where a pushed checkpoint remembers its repo and commit (never uploaded)
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
MAX_LINEAGE = 32


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
    """Pushes, access checks and downloads through one `HfApi`.

    Args:
        api: the `HfApi` to use; default `make_api()`.
        retries: retries of a request that failed transiently.
        backoff_s: first wait between retries; doubled after each.
    """

    def __init__(self, api: Any = None, *, retries: int = 4, backoff_s: float = 2.0) -> None:
        self.api = api if api is not None else make_api()
        self.retries, self.backoff_s = retries, backoff_s

    # ---- access ---------------------------------------------------------------------------
    def check_push_access(self, repo_id: str) -> str:
        """Fail fast unless `repo_id` is valid and the token may write there; return the user name."""
        from huggingface_hub import constants

        check_repo_id(repo_id)
        if constants.is_offline_mode():
            raise HubError(
                f"cannot push to {repo_id!r}: HF_HUB_OFFLINE=1 blocks all Hub requests; unset it (or set "
                "HF_HUB_OFFLINE=0) to push, or turn pushing off."
            )
        if not self.api.token:
            raise HubError(
                f"pushing to {repo_id!r} needs a Hugging Face token with write access and none was found; "
                "set HF_TOKEN or run `hf auth login`."
            )
        whoami = self.call(self.api.whoami, what="check the Hugging Face token")
        _check_write_access(whoami, repo_id)
        return whoami["name"]

    # ---- requests with retries ------------------------------------------------------------
    def call(self, fn: Callable[[], T], *, what: str) -> T:
        """Run one Hub request, retrying transient failures with backoff; errors become `HubError`."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except HubError:
                raise
            except Exception as e:  # huggingface_hub / httpx errors, mapped below
                if not _is_transient(e) or attempt == self.retries:
                    raise HubError(self._describe(e, what)) from None
                wait = self.backoff_s * 2**attempt
                logger.warning(
                    "%s failed (%s); retry %d/%d in %.1fs",
                    what,
                    self._short(e),
                    attempt + 1,
                    self.retries,
                    wait,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _short(self, error: Exception) -> str:
        status = getattr(getattr(error, "response", None), "status_code", None)
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        return self.redact(f"{type(error).__name__}{f' {status}' if status else ''}: {text}")

    def _describe(self, error: Exception, what: str) -> str:
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = {
            401: "the Hub rejected the token; set a valid HF_TOKEN or run `hf auth login`.",
            403: "the token has no write access there; use a write token or a namespace you own.",
            404: "not found; check the repo id, the revision and that a private repo's token can read it.",
        }.get(status)
        if hint is None:
            retry = "check the network and retry; a push can be rerun safely."
            hint = retry if _is_transient(error) else "fix what it names and rerun."
        return f"could not {what}: {self._short(error)}; {hint}"

    def redact(self, text: str) -> str:
        """`text` with the token (if any) replaced by `***`."""
        token = self.api.token
        return text.replace(token, "***") if isinstance(token, str) and token else text

    # ---- pushing --------------------------------------------------------------------------
    def push_folder(
        self,
        folder: str | Path,
        repo_id: str,
        *,
        repo_type: str = "model",
        private: bool = False,
        revision: str | None = None,
        commit_message: str,
        extra_files: dict[str, bytes] | None = None,
        exclude: tuple[str, ...] = (PUSH_RECORD,),
    ) -> PushResult:
        """Create the repo (an existing one is fine) and commit `folder` + `extra_files` in one commit."""
        self.check_push_access(repo_id)
        self.call(
            lambda: self.api.create_repo(
                repo_id, repo_type=repo_type, private=private or None, exist_ok=True
            ),
            what=f"create the {repo_type} repo {repo_id}",
        )
        if revision and revision != "main":
            self.call(
                lambda: self.api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                what=f"create branch {revision} in {repo_id}",
            )
        before = self.commit_id(repo_id, revision=revision, repo_type=repo_type)
        info = self.call(
            lambda: self.api.create_commit(
                repo_id,
                _operations(Path(folder), extra_files or {}, exclude),  # fresh operations per attempt
                commit_message=commit_message,
                repo_type=repo_type,
                revision=revision,
            ),
            what=f"commit to {repo_id}",
        )
        return PushResult(repo_id, repo_type, info.oid, info.commit_url, created=info.oid != before)

    def push_checkpoint(
        self,
        checkpoint: str | Path,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
        eval_rows: list[dict[str, Any]] | None = None,
        license: str = "apache-2.0",
    ) -> PushResult:
        """Push a local k-RF checkpoint with its model card; point the teacher's card at it (`new_version`)."""
        from hf_reflow import cards
        from hf_reflow.checkpoints import read_reflow_info, resolve_checkpoint

        folder = Path(resolve_checkpoint(checkpoint))
        if not folder.is_dir():
            raise HubError(
                f"--checkpoint must be a local checkpoint folder to push, got {str(checkpoint)!r}."
            )
        check_repo_id(repo_id)
        info = read_reflow_info(folder)
        policy_config = json.loads((folder / "config.json").read_text())
        lineage = self.lineage(info)
        card = cards.model_card(
            repo_id=repo_id,
            info=info,
            policy_config=policy_config,
            lineage=lineage,
            eval_rows=eval_rows,
            license=license,
        )
        message = commit_message or (
            f"Upload {cards.stage_label(info)} {policy_config.get('type', '')} policy "
            f"({info.get('num_steps', '?')} steps) with hf-reflow"
        )
        result = self.push_folder(
            folder, repo_id, private=private, revision=revision, commit_message=message,
            extra_files={"README.md": str(card).encode()},
        )  # fmt: skip
        _write_push_record(folder, result, revision)
        if lineage and lineage[-1].get("repo_id"):
            self.mark_superseded(lineage[-1]["repo_id"], repo_id)
        return result

    def push_couplings(
        self,
        folder: str | Path,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
        license: str = "apache-2.0",
    ) -> PushResult:
        """Push a complete stored-couplings folder as a Hub dataset with its dataset card."""
        from hf_reflow import cards
        from hf_reflow.offline_couplings import METADATA, block_path

        folder = Path(folder)
        if not (folder / METADATA).is_file():
            raise HubError(
                f"{str(folder)!r} is not a couplings folder (no {METADATA}); make one with `hf-reflow couplings generate`."
            )
        spec = json.loads((folder / METADATA).read_text())
        blocks = -(-spec["num_couplings"] // spec["block_size"])
        if not all(block_path(folder, b).is_file() for b in range(blocks)):
            raise HubError(
                f"couplings {str(folder)!r} are incomplete; finish them with `hf-reflow couplings generate` first."
            )
        check_repo_id(repo_id)
        teacher_repo = self._ancestor(spec["teacher"])[0].get("repo_id")
        card = cards.dataset_card(repo_id=repo_id, spec=spec, teacher_repo=teacher_repo, license=license)
        message = (
            commit_message
            or f"Upload {spec['num_couplings']} reflow couplings of {teacher_repo or spec['teacher']}"
        )
        result = self.push_folder(
            folder, repo_id, repo_type="dataset", private=private, revision=revision, commit_message=message,
            extra_files={"README.md": str(card).encode()},
        )  # fmt: skip
        _write_push_record(folder, result, revision)
        return result

    def mark_superseded(self, old_repo: str, new_repo: str) -> bool:
        """Set `new_version: new_repo` in an older hf-reflow stage's card; True when a commit was made.

        Repos whose card is not an hf-reflow stage (no `reflow` tag) are left alone, and a failure
        (e.g. no write access to someone else's teacher) only logs a warning.
        """
        from huggingface_hub import CommitOperationAdd, ModelCard

        try:
            text = self.read_text(old_repo, "README.md")
            if text is None:
                return False
            card = ModelCard(text)
            if "reflow" not in (card.data.tags or []) or getattr(card.data, "new_version", None) == new_repo:
                return False
            card.data.new_version = new_repo
            operation = [CommitOperationAdd("README.md", str(card).encode())]
            self.call(
                lambda: self.api.create_commit(
                    old_repo, operation, commit_message=f"Newer stage: {new_repo}"
                ),
                what=f"update the card of {old_repo}",
            )
            return True
        except HubError as e:
            logger.warning("could not point %s to its newer stage %s: %s", old_repo, new_repo, e)
            return False

    # ---- reading --------------------------------------------------------------------------
    def commit_id(self, repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> str:
        """The commit a revision (default main) of a repo points to."""
        info = self.call(
            lambda: self.api.repo_info(repo_id, revision=revision, repo_type=repo_type),
            what=f"read {repo_id}",
        )
        return info.sha

    def read_text(
        self, repo_id: str, filename: str, *, revision: str | None = None, repo_type: str = "model"
    ) -> str | None:
        """A file of a repo as text (through the cache), or None when the repo has no such file."""
        from huggingface_hub.errors import EntryNotFoundError

        def fetch() -> str | None:
            try:
                path = self.api.hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type)
            except EntryNotFoundError:
                return None
            return Path(path).read_text()

        return self.call(fetch, what=f"read {filename} of {repo_id}")

    def download(self, repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> Path:
        """A snapshot of a repo in huggingface_hub's cache (no request under HF_HUB_OFFLINE=1)."""
        from huggingface_hub.errors import LocalEntryNotFoundError

        def fetch() -> Path:
            try:
                return Path(self.api.snapshot_download(repo_id, revision=revision, repo_type=repo_type))
            except LocalEntryNotFoundError:
                raise HubError(
                    f"{repo_type} {repo_id!r} (revision {revision or 'main'}) is not in the Hugging Face cache and "
                    "cannot be downloaded (HF_HUB_OFFLINE=1 or no connection); download it once online, or pass "
                    "a local folder."
                ) from None

        return self.call(fetch, what=f"download {repo_id}")

    def lineage(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """A checkpoint's ancestors, oldest first: k, stage, repo_id (None if never pushed), commit, path."""
        rows: list[dict[str, Any]] = []
        child, teacher, seen = info, info.get("teacher"), set()
        while teacher and teacher not in seen and len(rows) < MAX_LINEAGE:
            seen.add(teacher)
            row, teacher_info = self._ancestor(str(teacher))
            row["commit"] = (
                child.get("teacher_commit") or row["commit"]
            )  # the commit trained from, if recorded
            rows.insert(0, row)
            child, teacher = teacher_info, teacher_info.get("teacher")
        return rows

    def _ancestor(self, teacher: str) -> tuple[dict[str, Any], dict[str, Any]]:
        from hf_reflow.checkpoints import PRETRAINED_DIR, REFLOW_INFO, read_reflow_info

        local = Path(teacher)
        if (local / "config.json").is_file() or (local / PRETRAINED_DIR / "config.json").is_file():
            folder = local if (local / "config.json").is_file() else local / PRETRAINED_DIR
            info, record = read_reflow_info(folder), read_push_record(folder)
            row = {"repo_id": record.get("repo_id"), "commit": record.get("commit"), "path": teacher}
        else:
            try:
                info = json.loads(self.read_text(teacher, REFLOW_INFO) or "{}")
                row = {"repo_id": teacher, "commit": self.commit_id(teacher), "path": teacher}
            except HubError as e:
                logger.warning(
                    "lineage: teacher %s is neither a local checkpoint nor readable on the Hub (%s)",
                    teacher,
                    e,
                )
                info, row = {}, {"repo_id": None, "commit": None, "path": teacher}
        return {**row, "k": info.get("k", "?"), "stage": info.get("stage", "unknown")}, info


def check_repo_id(repo_id: str) -> None:
    """Raise `HubError` unless `repo_id` is a valid `namespace/name` Hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    problem = None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        problem = "it must be namespace/name"
    else:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            problem = str(e).splitlines()[0].rstrip(".")
    if problem:
        raise HubError(f"invalid Hub repo id {repo_id!r}: {problem}; use e.g. your-name/toy-2rf.")


def _check_write_access(whoami: dict[str, Any], repo_id: str) -> None:
    """Raise unless the token behind `whoami` may write to `repo_id` (classic write or fine-grained)."""
    namespace, user = repo_id.split("/")[0], whoami.get("name")
    orgs = {org.get("name"): org.get("roleInOrg") for org in whoami.get("orgs", [])}
    token = (whoami.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    if namespace != user and namespace not in orgs:
        raise HubError(
            f"the token belongs to {user!r}, who cannot create repos under {namespace!r}; "
            f"push to {user}/{repo_id.split('/')[1]} or to an organisation {user!r} belongs to."
        )
    if orgs.get(namespace) == "read":
        raise HubError(
            f"{user!r} has the read role in {namespace!r}; ask for write access or push to {user}/..."
        )
    if role == "write":
        return
    if role == "fineGrained" and _fine_grained_can_write(token.get("fineGrained") or {}, namespace, repo_id):
        return
    raise HubError(
        f"the Hugging Face token of {user!r} has the {role!r} role and cannot write to {repo_id!r}; "
        "create a token with write access (https://huggingface.co/settings/tokens), then set HF_TOKEN or run "
        "`hf auth login`."
    )


def _fine_grained_can_write(fine: dict[str, Any], namespace: str, repo_id: str) -> bool:
    """A fine-grained token writes where a scope (the namespace or the repo) grants `repo.write`."""
    for scope in fine.get("scoped", []):
        if (scope.get("entity") or {}).get("name") in (namespace, repo_id) and "repo.write" in scope.get(
            "permissions", []
        ):
            return True
    return False


def _operations(folder: Path, extra_files: dict[str, bytes], exclude: tuple[str, ...]) -> list[Any]:
    """One `CommitOperationAdd` per file of `folder` (hidden and excluded names skipped) plus `extra_files`."""
    from huggingface_hub import CommitOperationAdd

    ops = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in extra_files or rel in exclude or any(part.startswith(".") for part in Path(rel).parts):
            continue
        ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)))
    return ops + [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in extra_files.items()
    ]


def _is_transient(error: Exception) -> bool:
    import httpx

    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(error, httpx.TransportError | ConnectionError | TimeoutError)


def checkpoint_commit(path_or_repo: str, *, revision: str | None = None) -> str | None:
    """The Hub commit a checkpoint comes from: a Hub id's snapshot, or what a pushed local folder recorded."""
    from hf_reflow.checkpoints import resolve_checkpoint

    folder = Path(resolve_checkpoint(path_or_repo, revision=revision))
    if folder.parent.name == "snapshots" and len(folder.name) == 40:  # huggingface_hub cache layout
        return folder.name
    return read_push_record(folder).get("commit")


def read_push_record(folder: str | Path) -> dict[str, Any]:
    """What `push_checkpoint` recorded about a local checkpoint's push ({} if never pushed)."""
    file = Path(folder) / PUSH_RECORD
    return json.loads(file.read_text()) if file.is_file() else {}


def _write_push_record(folder: Path, result: PushResult, revision: str | None) -> None:
    record = {
        "repo_id": result.repo_id,
        "repo_type": result.repo_type,
        "commit": result.commit,
        "revision": revision or "main",
    }
    (folder / PUSH_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))


# ---- training hooks (`push_to_hub: true` in a TrainConfig) ----------------------------------
def stage_repo_id(config: Any) -> str:
    """The repo a stage pushes to: `hub_repo_template` filled with hub_model_id, k, stage, suffix."""
    from hf_reflow.configs import stage_k
    from hf_reflow.couplings import load_teacher_lineage

    teacher_k = load_teacher_lineage(config.teacher.path).get("k", 1) if config.teacher.path else 0
    k = stage_k(config.stage, teacher_k)
    suffix = {"distill": "-distilled", "shortcut": "-shortcut"}.get(config.stage, "")
    return config.hub_repo_template.format(
        hub_model_id=config.hub_model_id, k=k, stage=config.stage, suffix=suffix
    )


def check_stage_push(config: Any) -> str:
    """Before training: the stage's repo id, once its id, the token and write access are checked."""
    repo_id = stage_repo_id(config)
    Hub().check_push_access(repo_id)
    return repo_id


def push_stage(config: Any, final: Path, repo_id: str) -> PushResult:
    """After training: push the final checkpoint; a failure says how to retry without retraining."""
    try:
        result = Hub().push_checkpoint(
            final, repo_id, private=config.hub_private, revision=config.hub_revision
        )
    except HubError as e:
        raise HubError(
            f"{e} The checkpoint is saved; retry the push with `hf-reflow push --checkpoint={final} --repo_id={repo_id}`."
        ) from None
    logger.warning(
        "pushed %s to %s (commit %s%s)",
        final,
        result.url,
        result.commit[:8],
        "" if result.created else ", unchanged",
    )
    return result
