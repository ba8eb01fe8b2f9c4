"""Publishing to the Hub: a k-RF checkpoint with its model card, stored couplings with their dataset card,
local demonstrations (a LeRobotDataset) with LeRobot's dataset card, and the hooks `hf-reflow train` / `pipeline` call around training (`check_stage_push`, `push_stage`).

The transport (access checks, retries, uploads) is `hf_reflow.hub.Hub`; this module decides what goes
where: the card, the repo id of a stage (`hub_repo_template`), and the push record written beside the folder.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hf_reflow.artifacts.checkpoints import teacher_lineage
from hf_reflow.artifacts.run_dir import link_tree
from hf_reflow.atomic import write_text
from hf_reflow.configs import DatasetConfig
from hf_reflow.data import load_metadata
from hf_reflow.errors import HubError, ReflowError
from hf_reflow.hub import (
    CARD,
    Hub,
    PushResult,
    check_no_outside_links,
    check_repo_id,
    write_push_record,
)
from hf_reflow.publish import cards
from hf_reflow.publish.lineage import DEFAULT_LICENSE
from hf_reflow.stages import repo_suffix, stage_k

logger = logging.getLogger(__name__)


def push_checkpoint(hub: Hub, checkpoint: str | Path, repo_id: str, *, private: bool = False,
                    revision: str | None = None, commit_message: str | None = None,
                    eval_rows: list[dict[str, Any]] | None = None, license: str | None = None,
                    set_new_version: bool = False) -> PushResult:  # fmt: skip
    """Push a local k-RF checkpoint with its model card (also written to the folder as README.md).
    `license`: default the starting checkpoint's; `set_new_version`: point the teacher's card here."""
    check_repo_id(repo_id)
    if not Path(checkpoint).is_dir():  # a Hub id would resolve to a download in the cache
        raise HubError(f"--checkpoint must be a local checkpoint folder to push, got {str(checkpoint)!r}.")
    stage = cards.checkpoint_card(hub, checkpoint, repo_id, eval_rows=eval_rows, license=license)
    message = commit_message or f"Upload {stage.label} with hf-reflow"
    with staged(stage.folder, str(stage.card)) as upload:
        result = hub.push_folder(upload, repo_id, private=private, revision=revision, commit_message=message)
    write_text(stage.folder / CARD, str(stage.card))  # kept locally once pushed, never after a failed push
    write_push_record(stage.folder, result, revision)
    if set_new_version and stage.teacher_repo:
        point_new_version(hub, stage.teacher_repo, repo_id)
    return result


def push_couplings(hub: Hub, folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                   commit_message: str | None = None, license: str | None = None) -> PushResult:  # fmt: skip
    """Push a complete stored-couplings folder as a Hub dataset with its dataset card."""
    check_repo_id(repo_id)
    card, label = cards.couplings_card(hub, Path(folder), repo_id, license=license)
    with staged(Path(folder), str(card)) as upload:
        result = hub.push_folder(upload, repo_id, repo_type="dataset", private=private, revision=revision,
                                 commit_message=commit_message or f"Upload {label}")  # fmt: skip
    write_text(Path(folder) / CARD, str(card))
    write_push_record(Path(folder), result, revision)
    return result


DEMONSTRATION_TAGS = ["hf-reflow", "reflow", "robotics"]


def push_demonstrations(hub: Hub, root: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                        commit_message: str | None = None, license: str | None = None) -> PushResult:  # fmt: skip
    """Push a local LeRobotDataset (e.g. the pipeline's demonstrations) as a Hub dataset: the files LeRobot's
    `push_to_hub` uploads (all but `images/`), with the card LeRobot makes (`create_lerobot_dataset_card`).

    LeRobot's own `push_to_hub` is not called: it uploads through module-level clients bound to the endpoint
    read at import and validates the card on huggingface.co whatever the endpoint. As it does, the commit is
    tagged with LeRobot's codebase version (`v3.0`), so `LeRobotDataset(repo_id)` loads it without a revision.
    The push record written in `root` lets the model cards of stages trained on it name it by Hub id and commit.
    """
    from lerobot.datasets.dataset_metadata import CODEBASE_VERSION
    from lerobot.datasets.utils import create_lerobot_dataset_card

    check_repo_id(repo_id)
    info = load_metadata(DatasetConfig(repo_id=repo_id, root=str(root))).info
    card = create_lerobot_dataset_card(tags=DEMONSTRATION_TAGS, dataset_info=info, license=license or DEFAULT_LICENSE,
                                       repo_id=repo_id)  # fmt: skip
    with staged(Path(root), str(card), ignore=("images",)) as upload:
        result = hub.push_folder(upload, repo_id, repo_type="dataset", private=private, revision=revision,
                                 commit_message=commit_message or "Upload the demonstrations (LeRobotDataset)")  # fmt: skip
    hub.move_tag(repo_id, CODEBASE_VERSION, result.commit, repo_type="dataset")
    write_push_record(Path(root), result, revision)
    return result


@contextlib.contextmanager
def staged(folder: Path, card: str, *, ignore: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temporary copy of `folder` (hard links where possible) with the card as README.md: what is uploaded,
    so a failed push leaves the user's folder as it was. Links that leave `folder` are refused first;
    top-level entries named in `ignore` are left out."""
    check_no_outside_links(folder)
    with tempfile.TemporaryDirectory(prefix="hf-reflow-push-") as tmp:
        upload = Path(tmp) / "upload"
        link_tree(folder, upload)  # hard links where possible, as the final model links its checkpoint
        for name in ignore:
            shutil.rmtree(upload / name, ignore_errors=True)
        (upload / CARD).unlink(missing_ok=True)  # a hard link to the folder's card: never write through it
        (upload / CARD).write_text(card)
        yield upload


# ---- around training (`push_to_hub: true` in a TrainConfig) ---------------------------------
def repo_for_stage(template: str, hub_model_id: str, *, k: int, stage: str) -> str:
    """`template` (e.g. `{hub_model_id}-{k}rf{suffix}`) filled for a stage of kind `stage` and its k."""
    return template.format(hub_model_id=hub_model_id, k=k, stage=stage, suffix=repo_suffix(stage))


def stage_repo_id(config: Any) -> str:
    """The repo a stage pushes to: `hub_repo_template` filled with hub_model_id, k, stage, suffix."""
    teacher_k = teacher_lineage(config.teacher.path).get("k", 1) if config.teacher.path else 0
    return repo_for_stage(config.hub_repo_template, config.hub_model_id, k=stage_k(config.stage, teacher_k),
                          stage=config.stage)  # fmt: skip


def check_stage_push(config: Any) -> str:
    """Before training: the stage's repo id, once the repo exists (made now, as transformers' Trainer does)
    and the token may write to it."""
    repo_id = stage_repo_id(config)
    Hub().check_push_access(repo_id, private=config.hub_private, create=True)
    return repo_id


def push_stage_from_main_process(config: Any, final: Path, repo_id: str) -> None:
    """`push_stage` on the main process of an Accelerate launch while the others wait; the main process
    raises a failed push's error only after the barrier, so no process hangs there."""
    from accelerate import PartialState

    state, error = PartialState(), None
    if state.is_main_process:
        try:
            push_stage(config, final, repo_id)
        except ReflowError as e:  # let the other processes leave the barrier first
            error = e
    state.wait_for_everyone()
    if error is not None:
        raise error


def push_stage(config: Any, final: Path, repo_id: str) -> PushResult:
    """After training: push the final checkpoint; a failure says how to retry without retraining."""
    try:
        result = push_checkpoint(Hub(), final, repo_id, private=config.hub_private, revision=config.hub_revision,
                                 set_new_version=bool(getattr(config, "hub_set_new_version", False)))  # fmt: skip
    except HubError as e:
        raise HubError(f"{e} The checkpoint is saved; retry the push with `hf-reflow push --checkpoint={final} "
                       f"--repo_id={repo_id}`.") from None  # fmt: skip
    unchanged = "" if result.created else ", unchanged"
    logger.warning("pushed %s to %s (commit %s%s)", final, result.url, result.commit[:8], unchanged)
    return result


def point_new_version(hub: Any, old_repo: str, new_repo: str) -> bool:
    """Set `new_version: new_repo` in the card of an hf-reflow stage on the Hub (`reflow` tag); True when
    committed. Only on request; a failure (e.g. no write access to the teacher) only logs a warning."""
    # Not `huggingface_hub.metadata_update`: in huggingface_hub 1.33 it cannot use `hub.api`'s endpoint. It
    # takes a token but no endpoint (and `HfApi` has no such method); it reads the card with `ModelCard.load`,
    # i.e. the module-level `hf_hub_download` (endpoint: HF_ENDPOINT as read at import), and writes it with
    # `RepoCard.push_to_hub`, which first POSTs the card to the hard-coded https://huggingface.co/api/validate-yaml
    # (`RepoCard.validate`) and then uploads through the module-level `upload_file` (an `HfApi()` made at
    # import). So it would reach huggingface.co from any endpoint. The same steps on `hub.api` instead: read
    # README.md, set one metadata field, upload README.md.
    from huggingface_hub import ModelCard

    try:
        text = hub.read_text(old_repo, "README.md")
        card = ModelCard(text) if text else None
        if card is None or "reflow" not in (card.data.tags or []) or card.data.get("new_version") == new_repo:
            return False
        card.data.new_version = new_repo
        with hub.errors(f"update the card of {old_repo}"):
            hub.api.upload_file(
                path_or_fileobj=str(card).encode(),
                path_in_repo="README.md",
                repo_id=old_repo,
                commit_message=f"Newer stage: {new_repo}",
            )
        return True
    except HubError as e:
        logger.warning("could not point %s to its newer stage %s: %s", old_repo, new_repo, e)
        return False
