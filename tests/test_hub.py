"""Hub integration against the loopback Hub (tests/hub_server.py): no network.

Every test asserts that only the routes the server implements were hit, so a huggingface_hub upgrade
that adds a call fails here loudly. A live test against the real Hub runs only with HF_TOKEN and
HF_REFLOW_LIVE_HUB=1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import REPO, train_config
from hub_server import LoopbackHub

from hf_reflow.errors import CheckpointError, HubError

WRITE = "hf_loopbackWRITEtoken0123456789abcdef"
READ = "hf_loopbackREADtoken0123456789abcdefgh"
TOKENS = {WRITE: {"name": "alice", "role": "write", "orgs": ["lab"]}, READ: {"name": "bob", "role": "read"}}
KNOWN = {"whoami", "create_repo", "validate_yaml", "preupload", "commit", "branch", "info", "tree", "resolve"}


@pytest.fixture
def hub_server(tmp_path):
    with LoopbackHub(tmp_path / "hub", TOKENS) as server:
        yield server
    assert server.state.unknown == [], f"unknown routes hit: {server.state.unknown}"
    assert server.routes_hit() <= KNOWN


@pytest.fixture
def online(monkeypatch, hub_server, tmp_path):
    """This process talks to the loopback Hub with the write token and a fresh cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", WRITE)
    return hub_server


@pytest.fixture
def checkpoint_1rf(teacher_1rf, tmp_path) -> Path:
    """A private copy of the session's 1-RF checkpoint (a push writes hub.json into the folder)."""
    return Path(
        shutil.copytree(Path(teacher_1rf) / "pretrained_model", tmp_path / "1rf" / "pretrained_model")
    )


def fast_hub():
    from hf_reflow.hub import Hub

    return Hub(retries=3, backoff_s=0.01)


def cli_env(hub_server, tmp_path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub_server.url, HF_HOME=str(tmp_path / "hf_home"))
    if token:
        env["HF_TOKEN"] = token
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_reflow", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def chunk(policy_dir: str | Path, noise: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Stock LeRobot: from_pretrained + processors + predict_action_chunk for fixed noise (B, chunk, dim)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    import hf_reflow.policies.flow_mlp  # noqa: F401  (registers flow_mlp, as the plugin does)

    config = PreTrainedConfig.from_pretrained(policy_dir)
    policy = get_policy_class(config.type).from_pretrained(policy_dir, config=config).eval()
    pre, _ = make_pre_post_processors(config, pretrained_path=str(policy_dir))
    with torch.no_grad():
        return policy.predict_action_chunk(pre({"observation.state": state}), noise=noise)


def test_round_trip_hub_teacher_card_lineage_and_idempotence(
    online, checkpoint_1rf, toy_dataset, tmp_path, caplog, capfd
):
    from huggingface_hub import ModelCard

    from hf_reflow.evaluate import evaluate_checkpoint
    from hf_reflow.trainer import ReflowTrainer

    caplog.set_level(logging.DEBUG)
    hub = fast_hub()
    first = hub.push_checkpoint(checkpoint_1rf, "alice/toy-1rf")
    assert first.created
    # A 2-RF whose teacher is a Hub id: downloaded from the loopback Hub through the cache.
    config = train_config(
        stage="reflow", steps=10, output_dir=str(tmp_path / "2rf"), dataset__root=str(toy_dataset),
        teacher__path="alice/toy-1rf", push_to_hub=True, hub_model_id="alice/toy",
    )  # fmt: skip
    final = ReflowTrainer(config).train()  # pushes to alice/toy-2rf (template default)
    assert (tmp_path / "cache" / "models--alice--toy-1rf").is_dir()
    info = json.loads((final / "reflow.json").read_text())
    assert info["k"] == 2 and info["teacher"] == "alice/toy-1rf" and info["teacher_commit"] == first.commit
    assert json.loads((final / "hub.json").read_text())["repo_id"] == "alice/toy-2rf"

    rows = evaluate_checkpoint(str(final), config.dataset, nfes=[1, 2], num_samples=8, episodes=1, env="toy")
    pushed = hub.push_checkpoint(final, "alice/toy-2rf", eval_rows=rows)
    assert pushed.created  # the card gained the evaluation table
    again = hub.push_checkpoint(final, "alice/toy-2rf", eval_rows=rows)
    assert not again.created and again.commit == pushed.commit
    assert len(online.repo("alice/toy-2rf").history()) == 3  # initial, training push, eval push

    snapshot = Path(hub.api.snapshot_download("alice/toy-2rf", cache_dir=str(tmp_path / "fresh")))
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        [p.name for p in final.iterdir() if p.name != "hub.json"] + ["README.md", ".gitattributes"]
    )
    noise, state = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4)
    assert torch.equal(chunk(snapshot, noise, state), chunk(final, noise, state))

    card = ModelCard.load(snapshot / "README.md")
    assert card.data.base_model == "alice/toy-1rf" and card.data.base_model_relation == "finetune"
    assert {"reflow", "rectified-flow", "lerobot", "flow_mlp", "2-rf"} <= set(card.data.tags)
    assert card.data.library_name == "lerobot" and card.data.pipeline_tag == "robotics"
    metrics = {(r.metric_type, r.metric_config) for r in card.data.eval_results}
    assert {("success_rate", "nfe=1"), ("straightness", "nfe=2"), ("latency_ms", "nfe=1")} <= metrics
    assert f"commit/{first.commit}" in card.text  # lineage table links the teacher's commit
    teacher_card = ModelCard(hub.read_text("alice/toy-1rf", "README.md"))
    assert teacher_card.data.new_version == "alice/toy-2rf"
    assert teacher_card.data.base_model is None and "1-rf" in teacher_card.data.tags

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if WRITE.encode() in p.read_bytes()]
    out, err = capfd.readouterr()
    assert WRITE not in out + err + caplog.text


def test_faults_are_retried_without_duplicate_or_partial_commits(online, checkpoint_1rf):
    hub = fast_hub()
    online.state.faults += [("commit", "503"), ("commit", "drop")]
    result = hub.push_checkpoint(checkpoint_1rf, "alice/faulty")
    assert result.created and not online.state.faults
    assert len(online.repo("alice/faulty").history()) == 2  # initial + one push
    # The commit lands but its response is lost: the retry finds identical files and commits nothing.
    online.state.faults.append(("commit", "drop_after"))
    rows = [{"nfe": 1, "straightness": 0.5}]  # a card change, so the push has something to commit
    changed = hub.push_checkpoint(checkpoint_1rf, "alice/faulty", eval_rows=rows)
    history = online.repo("alice/faulty").history()
    assert len(history) == 3 and changed.commit == history[0]["oid"]
    # Every attempt fails: an error that names the fix, and the repo is left as it was.
    online.state.faults += [("commit", "503")] * 2
    with pytest.raises(HubError, match="could not commit to alice/faulty.*503"):
        from hf_reflow.hub import Hub

        Hub(retries=1, backoff_s=0.01).push_checkpoint(checkpoint_1rf, "alice/faulty", eval_rows=rows + rows)
    assert len(online.repo("alice/faulty").history()) == 3


def test_access_checks(online, monkeypatch):
    from hf_reflow.hub import Hub

    assert fast_hub().check_push_access("lab/model") == "alice"
    for bad in ("no-namespace", "a/b/c", "alice/bad name!"):
        with pytest.raises(HubError, match="invalid Hub repo id"):
            fast_hub().check_push_access(bad)
    with pytest.raises(HubError, match="cannot create repos under 'bob'"):
        fast_hub().check_push_access("bob/model")
    monkeypatch.setenv("HF_TOKEN", READ)
    with pytest.raises(HubError, match="'read' role") as error:
        Hub().check_push_access("bob/model")
    assert READ not in str(error.value)
    monkeypatch.setenv("HF_TOKEN", "hf_unknown_token_value_123")
    with pytest.raises(HubError, match="rejected the token") as error:
        Hub().check_push_access("alice/model")
    assert "hf_unknown_token_value_123" not in str(error.value)


def test_revision_branch_and_private_repo(online, checkpoint_1rf):
    hub = fast_hub()
    result = hub.push_checkpoint(checkpoint_1rf, "lab/branchy", revision="v1", private=True)
    repo = online.repo("lab/branchy")
    assert repo.meta["private"] and len(repo.history("v1")) == 2 and len(repo.history("main")) == 1
    assert result.commit == repo.read("refs.json")["v1"]


def test_offline_download_uses_the_cache(online, checkpoint_1rf, monkeypatch):
    from huggingface_hub import constants

    from hf_reflow.checkpoints import resolve_checkpoint

    fast_hub().push_checkpoint(checkpoint_1rf, "alice/cached")
    path = resolve_checkpoint("alice/cached")
    assert (Path(path) / "model.safetensors").is_file()
    hits = len(online.state.hits)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_checkpoint("alice/cached") == path and len(online.state.hits) == hits
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve_checkpoint("alice/never-downloaded")


def test_cli_fails_fast_before_training(hub_server, toy_dataset, tmp_path):
    base = ["train", "--config=recipes/toy/1rf.yaml", f"--dataset.root={toy_dataset}", "--push_to_hub=true"]
    cases = [
        (WRITE, "--hub_model_id=alice/bad name", "invalid Hub repo id"),
        (None, "--hub_model_id=alice/toy", "none was found; set HF_TOKEN"),
        (READ, "--hub_model_id=bob/toy", "'read' role"),
    ]
    for i, (token, model_id, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        result = run_cli(cli_env(hub_server, tmp_path, token), *base, model_id, f"--output_dir={out}")
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()  # nothing trained, nothing written
        assert token is None or token not in result.stdout + result.stderr


def test_cli_push_with_eval_rows(hub_server, checkpoint_1rf, tmp_path):
    rows = [
        {"checkpoint": str(checkpoint_1rf), "nfe": n, "straightness": 0.1 * n, "latency_ms": 1.0}
        for n in (1, 10)
    ]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    env = cli_env(hub_server, tmp_path, WRITE)
    args = [
        "push",
        f"--checkpoint={checkpoint_1rf}",
        "--repo-id=alice/cli-1rf",
        f"--eval={tmp_path / 'results.json'}",
    ]
    result = run_cli(env, *args)
    assert result.returncode == 0, result.stderr
    assert "pushed: " in result.stdout and WRITE not in result.stdout + result.stderr
    readme = hub_server.repo("alice/cli-1rf")
    card = readme.blob(readme.files("main")["README.md"]).decode()
    assert "model-index" in card and "| 10 | n/a | 1 | n/a | 1 |" in card
    result = run_cli(env, *args[:2], "--repo_id=alice/cli-1rf", "--eval=missing.json")
    assert result.returncode == 2 and "cannot read eval results" in result.stderr


@pytest.mark.live
@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("HF_REFLOW_LIVE_HUB") == "1"),
    reason="live Hub test: set HF_TOKEN (write) and HF_REFLOW_LIVE_HUB=1",
)
def test_live_hub_push_and_load(checkpoint_1rf, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from hf_reflow.hub import Hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = Hub()
    user = hub.check_push_access(f"{hub.api.whoami()['name']}/x")
    repo_id = f"{user}/hf-reflow-live-{uuid.uuid4().hex[:8]}"
    try:
        result = hub.push_checkpoint(checkpoint_1rf, repo_id, private=True)
        assert result.created and not hub.push_checkpoint(checkpoint_1rf, repo_id, private=True).created
        snapshot = Path(hub.api.snapshot_download(repo_id, cache_dir=str(tmp_path / "cache")))
        noise, state = torch.randn(2, 8, 2), torch.randn(2, 4)
        assert torch.equal(chunk(snapshot, noise, state), chunk(checkpoint_1rf, noise, state))
    finally:
        hub.api.delete_repo(repo_id, missing_ok=True)


def test_couplings_pushed_as_a_dataset_train_by_repo_id(online, checkpoint_1rf, toy_dataset, tmp_path):
    from huggingface_hub import DatasetCard

    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.offline_couplings import generate, load_couplings
    from hf_reflow.trainer import ReflowTrainer

    hub = fast_hub()
    hub.push_checkpoint(checkpoint_1rf, "alice/toy-1rf")
    folder = tmp_path / "couplings"
    generate(
        folder,
        TeacherConfig(path=str(checkpoint_1rf)),
        DatasetConfig(root=str(toy_dataset)),
        num_couplings=48,
        block_size=32,
    )
    result = hub.push_couplings(folder, "alice/toy-couplings")
    assert result.created and not hub.push_couplings(folder, "alice/toy-couplings").created
    files = online.repo("alice/toy-couplings", "datasets").files("main")
    assert {
        "README.md",
        "couplings.json",
        "blocks/block-000000.safetensors",
        "blocks/block-000001.safetensors",
    } <= set(files)

    _, local = load_couplings(str(folder))
    _, remote = load_couplings("alice/toy-couplings")  # a Hub dataset id, through the cache
    assert all(torch.equal(local[k], remote[k]) for k in local)
    card = DatasetCard.load(Path(hub.download("alice/toy-couplings", repo_type="dataset")) / "README.md")
    assert {"reflow", "couplings", "flow_mlp"} <= set(card.data.tags) and "alice/toy-1rf" in card.text
    config = train_config(
        stage="reflow", steps=3, output_dir=str(tmp_path / "2rf"), dataset__root=str(toy_dataset),
        teacher__path=str(checkpoint_1rf), couplings__path="alice/toy-couplings",
    )  # fmt: skip
    final = ReflowTrainer(config).train()
    assert json.loads((final / "reflow.json").read_text())["couplings_dataset"] == "alice/toy-couplings"
