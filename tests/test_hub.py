"""Hub integration against the loopback Hub (tests/hub_server.py): no network.

Every test asserts that only the routes the server implements were hit, so a huggingface_hub upgrade
that adds a call fails here loudly. huggingface_hub's own retry waits are made instant (and counted);
requests are counted on the server. A live test against the real Hub runs only with HF_TOKEN and
HF_REFLOW_LIVE_HUB=1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import conftest
import pytest
import torch
from conftest import REPO, train_config
from hub_server import LoopbackHub

from hf_reflow.errors import CheckpointError, HubError
from hf_reflow.publish import publish

WRITE = "hf_loopbackWRITEtoken0123456789abcdef"
READ = "hf_loopbackREADtoken0123456789abcdefgh"
TOKENS = {WRITE: {"name": "alice", "role": "write", "orgs": ["lab"]}, READ: {"name": "bob", "role": "read"}}
KNOWN = {
    "agent_harnesses",  # the `hf` CLI (hf download, in the reproduce test)
    "refs",  # LeRobot's dataset version lookup
    "tag",
    "delete_tag",
    "auth_check",
    "create_repo",
    "validate_yaml",
    "preupload",
    "commit",
    "branch",
    "info",
    "tree",
    "resolve",
}


@pytest.fixture
def hub_server(tmp_path):
    with LoopbackHub(tmp_path / "hub", TOKENS) as server:
        yield server
    assert server.state.unknown == [], f"unknown routes hit: {server.state.unknown}"
    assert server.routes_hit() <= KNOWN


class _InstantTime:
    """`time` for huggingface_hub's http_backoff: its waits are recorded, not slept."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def online(monkeypatch, hub_server, tmp_path):
    """This process talks to the loopback Hub with the write token and a fresh cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", _InstantTime())
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


def fast_hub(retries: int = 2):
    from hf_reflow.hub import Hub

    return Hub(retries=retries)


def hits(server, route: str) -> int:
    return sum(name == route for _, name, _ in server.state.hits)


def cli_env(hub_server, tmp_path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub_server.url, HF_HOME=str(tmp_path / "hf_home"))
    if token:
        env["HF_TOKEN"] = token
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`hf-reflow ARGS` in its own process (a fork of the test server) with `env` as its whole environment."""
    return conftest.run_cli(*args, env=env)


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

    from hf_reflow.evaluation.offline import evaluate_checkpoint
    from hf_reflow.training.trainer import ReflowTrainer

    caplog.set_level(logging.DEBUG)
    hub = fast_hub()
    first = publish.push_checkpoint(hub, checkpoint_1rf, "alice/toy-1rf", license="mit")
    assert first.created and (checkpoint_1rf / "README.md").is_file()  # the card is also kept locally
    # A 2-RF whose teacher is a Hub id: downloaded from the loopback Hub through the cache.
    config = train_config(
        stage="reflow", steps=10, output_dir=str(tmp_path / "2rf"), dataset__root=str(toy_dataset),
        teacher__path="alice/toy-1rf", push_to_hub=True, hub_model_id="alice/toy",
    )  # fmt: skip
    repo_id = publish.check_stage_push(config)  # what `hf-reflow train --push_to_hub=true` does around training
    final = ReflowTrainer(config).train()
    publish.push_stage_from_main_process(config, final, repo_id)  # to alice/toy-2rf (template default)
    assert (tmp_path / "cache" / "models--alice--toy-1rf").is_dir()
    info = json.loads((final / "reflow.json").read_text())
    assert info["k"] == 2 and info["teacher"] == "alice/toy-1rf" and info["teacher_commit"] == first.commit
    assert json.loads((final / "hub.json").read_text())["repo_id"] == "alice/toy-2rf"

    rows = evaluate_checkpoint(str(final), config.dataset, step_counts=[1, 2], num_samples=8, episodes=1, env="toy")
    pushed = publish.push_checkpoint(hub, final, "alice/toy-2rf", eval_rows=rows)
    assert pushed.created  # the card gained the evaluation table
    again = publish.push_checkpoint(hub, final, "alice/toy-2rf", eval_rows=rows)
    assert not again.created and again.commit == pushed.commit
    assert len(online.repo("alice/toy-2rf").history()) == 3  # initial, training push, eval push

    snapshot = Path(hub.api.snapshot_download("alice/toy-2rf", cache_dir=str(tmp_path / "fresh")))
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        [p.name for p in final.iterdir() if p.name != "hub.json"] + [".gitattributes"]
    )
    noise, state = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4)
    assert torch.equal(chunk(snapshot, noise, state), chunk(final, noise, state))

    card = ModelCard.load(snapshot / "README.md")
    assert card.data.base_model == "alice/toy-1rf" and card.data.base_model_relation == "finetune"
    assert card.data.license == "mit"  # the teacher's, read from its card on the Hub
    assert {"reflow", "rectified-flow", "lerobot", "flow_mlp", "2-rf"} <= set(card.data.tags)
    assert card.data.library_name == "lerobot" and card.data.pipeline_tag == "robotics"
    assert card.data.eval_results is None and card.data.datasets is None  # trained on a local dataset
    assert "Here it is empty" in card.text and "| 1 |" in card.text
    assert "## Inputs & Outputs" in card.text and "| `observation.state` | state | `(4,)` |" in card.text
    assert "lerobot-eval --policy.path=alice/toy-2rf --policy.num_steps=" in card.text
    assert "hf-reflow eval --policy.path=alice/toy-2rf" in card.text
    assert f"commit/{first.commit}" in card.text  # lineage table links the teacher's commit
    assert f"]({online.url}/alice/toy-1rf/commit/{first.commit})" in card.text  # links follow the endpoint
    assert "huggingface.co" not in card.text
    teacher_card = ModelCard(hub.read_text("alice/toy-1rf", "README.md"))
    assert teacher_card.data.get("new_version") is None  # never set unless asked
    assert teacher_card.data.base_model is None and "1-rf" in teacher_card.data.tags
    assert (
        publish.push_checkpoint(hub, final, "alice/toy-2rf", eval_rows=rows, set_new_version=True).commit
        == pushed.commit
    )
    teacher_card = ModelCard(hub.read_text("alice/toy-1rf", "README.md"))
    assert teacher_card.data.new_version == "alice/toy-2rf" and teacher_card.data.license == "mit"

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if WRITE.encode() in p.read_bytes()]
    out, err = capfd.readouterr()
    assert WRITE not in out + err + caplog.text


def test_card_of_a_1rf_fine_tuned_from_a_hub_checkpoint(online, checkpoint_1rf, tmp_path):
    """base_model from the run's policy.path, license inherited, Hub datasets and model-index."""
    from huggingface_hub import ModelCard

    hub = fast_hub()
    publish.push_checkpoint(hub, checkpoint_1rf, "lab/base", license="cc-by-4.0")
    tuned = Path(shutil.copytree(checkpoint_1rf, tmp_path / "tuned" / "pretrained_model"))
    for name in ("hub.json", "README.md"):
        (tuned / name).unlink()
    run_config = json.loads((tuned / "train_config.json").read_text())
    (tuned / "train_config.json").unlink()  # read from the run dir, one level up, as a run lays it out
    run_config["policy"]["path"] = "lab/base"
    (tuned.parent / "train_config.json").write_text(json.dumps(run_config))
    info = json.loads((tuned / "reflow.json").read_text())
    info["dataset"] = {"repo_id": "lab/demos", "root": None}
    (tuned / "reflow.json").write_text(json.dumps(info))
    rows = [
        {"num_steps": 1, "straightness": 0.5, "latency_ms": 1.0},
        {"num_steps": 10, "straightness": 0.1, "dataset": "local/x"},
    ]
    publish.push_checkpoint(hub, tuned, "alice/tuned", eval_rows=rows)

    card = ModelCard(hub.read_text("alice/tuned", "README.md"))
    assert card.data.base_model == "lab/base" and card.data.license == "cc-by-4.0"
    assert card.data.datasets == ["lab/demos"]
    results = {(r.dataset_type, r.metric_type, r.metric_config) for r in card.data.eval_results}
    assert ("lab/demos", "straightness", "num_steps=1") in results
    assert not [r for r in results if r[1] == "latency_ms"]  # machine-bound: never in the model-index
    assert not [r for r in results if r[2] == "num_steps=10"]  # measured on a local dataset: not in model-index
    assert "**Fine-tuned from:** [lab/base]" in card.text and "Here it is empty" not in card.text


def test_faults_are_retried_without_duplicate_or_partial_commits(online, checkpoint_1rf):
    hub = fast_hub()
    online.state.faults += [("commit", "503"), ("commit", "drop")]
    result = publish.push_checkpoint(hub, checkpoint_1rf, "alice/faulty")
    assert result.created and not online.state.faults
    assert len(online.repo("alice/faulty").history()) == 2  # initial + one push
    # The commit lands but its response is lost: huggingface_hub's retry of it fails (412, the branch
    # moved), our one rerun finds identical files and commits nothing.
    online.state.faults.append(("commit", "drop_after"))
    rows = [{"num_steps": 1, "straightness": 0.5}]  # a card change, so the push has something to commit
    changed = publish.push_checkpoint(hub, checkpoint_1rf, "alice/faulty", eval_rows=rows)
    history = online.repo("alice/faulty").history()
    assert len(history) == 3 and changed.commit == history[0]["oid"] and changed.created
    # Every attempt fails: an error that names the fix, and the repo is left as it was.
    online.state.faults += [("commit", "503")] * 6
    card_before = (checkpoint_1rf / "README.md").read_text()
    with pytest.raises(HubError, match="could not commit to alice/faulty.*503.*rerun safely"):
        publish.push_checkpoint(hub, checkpoint_1rf, "alice/faulty", eval_rows=rows + rows)
    assert len(online.repo("alice/faulty").history()) == 3
    assert (checkpoint_1rf / "README.md").read_text() == card_before  # the failed push's card was never written


def test_temporary_files_are_never_pushed(online, checkpoint_1rf, tmp_path):
    """What an interrupted writer leaves (`*.tmp-<pid>`, `*.partial-*`) stays out of the upload."""
    folder = tmp_path / "with_leftovers"
    shutil.copytree(checkpoint_1rf, folder)
    (folder / "model.safetensors.tmp-1234").write_bytes(b"half a file")
    (folder / "data.partial-99").write_text("x")
    publish.push_checkpoint(fast_hub(), folder, "alice/leftovers")
    files = online.repo("alice/leftovers").files("main")
    assert "model.safetensors" in files and not any(".tmp-" in f or ".partial-" in f for f in files)


def test_retries_are_not_nested(online, checkpoint_1rf, monkeypatch):
    """One layer of retries per request: huggingface_hub's (counted on the server), ours only where it has none."""
    from huggingface_hub import constants

    hub = fast_hub(retries=2)
    publish.push_checkpoint(hub, checkpoint_1rf, "alice/counted")
    before = len(online.repo("alice/counted").history())
    rows = [{"num_steps": 1, "straightness": 0.25}]
    # preupload: huggingface_hub tries 1 + 5 times; we add nothing, and nothing is committed.
    online.state.hits.clear()
    online.state.faults += [("preupload", "503")] * 6
    with pytest.raises(HubError, match="503"):
        publish.push_checkpoint(hub, checkpoint_1rf, "alice/counted", eval_rows=rows)
    assert hits(online, "preupload") == 6 and hits(online, "commit") == 0 and not online.state.faults
    # commit (hf_xet installed: upload_folder's pipeline retries it itself): 1 + 5 attempts, none of ours.
    online.state.hits.clear()
    online.state.faults += [("commit", "503")] * 6
    with pytest.raises(HubError, match="503"):
        publish.push_checkpoint(hub, checkpoint_1rf, "alice/counted", eval_rows=rows)
    assert hits(online, "commit") == 6 and hits(online, "preupload") == 1
    assert len(online.repo("alice/counted").history()) == before
    # without hf_xet huggingface_hub sends the commit once: ours is then the only layer (1 + 2 attempts).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    online.state.hits.clear()
    online.state.faults += [("commit", "503")] * 3
    with pytest.raises(HubError, match="503"):
        publish.push_checkpoint(hub, checkpoint_1rf, "alice/counted", eval_rows=rows)
    assert hits(online, "commit") == 3 and hits(online, "preupload") == 3
    online.state.hits.clear()
    online.state.faults += [("commit", "503"), ("commit", "drop_after")]
    assert publish.push_checkpoint(hub, checkpoint_1rf, "alice/counted", eval_rows=rows).created
    assert hits(online, "commit") == 2 and len(online.repo("alice/counted").history()) == before + 1


def test_access_checks(online, monkeypatch):
    from hf_reflow.hub import Hub

    fast_hub().check_push_access("lab/model", create=True)
    assert online.repo("lab/model").history() and "whoami" not in online.routes_hit()
    fast_hub().check_push_access("alice/not-yet")  # without create: a new repo passes, nothing is made
    with pytest.raises(HubError, match="must be a local checkpoint folder"):
        publish.push_checkpoint(fast_hub(), "lab/model", "alice/copy")
    assert not online.repo("alice/not-yet").path.exists()
    for bad in ("no-namespace", "a/b/c", "alice/bad name!"):
        with pytest.raises(HubError, match="invalid Hub repo id"):
            fast_hub().check_push_access(bad)
    with pytest.raises(HubError, match="get write access to bob/model.*403.*cannot write there"):
        fast_hub().check_push_access("bob/model", create=True)
    monkeypatch.setenv("HF_TOKEN", READ)
    for repo_id in ("bob/model", "lab/model"):  # a new repo (create refused), an existing one (auth_check)
        with pytest.raises(HubError, match="403.*cannot write there") as error:
            Hub().check_push_access(repo_id, create=True)
        assert READ not in str(error.value)
    assert hits(online, "auth_check") >= 2
    monkeypatch.setenv("HF_TOKEN", "hf_unknown_token_value_123")
    with pytest.raises(HubError, match="rejected the token") as error:
        Hub().check_push_access("alice/model", create=True)
    assert "hf_unknown_token_value_123" not in str(error.value)


def test_revision_branch_and_private_repo(online, checkpoint_1rf):
    hub = fast_hub()
    result = publish.push_checkpoint(hub, checkpoint_1rf, "lab/branchy", revision="v1", private=True)
    repo = online.repo("lab/branchy")
    assert repo.meta["private"] and len(repo.history("v1")) == 2 and len(repo.history("main")) == 1
    assert result.commit == repo.read("refs.json")["v1"]


def test_offline_download_uses_the_cache(online, checkpoint_1rf, monkeypatch):
    from huggingface_hub import constants

    from hf_reflow.refs import CheckpointRef

    publish.push_checkpoint(fast_hub(), checkpoint_1rf, "alice/cached")
    path = CheckpointRef.of("alice/cached").local()
    assert (Path(path) / "model.safetensors").is_file()
    hits = len(online.state.hits)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert CheckpointRef.of("alice/cached").local() == path and len(online.state.hits) == hits
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        CheckpointRef.of("alice/never-downloaded").local()


def test_cli_fails_fast_before_training(hub_server, toy_dataset, tmp_path):
    base = ["train", "--config=recipes/toy/1rf.yaml", f"--dataset.root={toy_dataset}", "--push_to_hub=true"]
    cases = [  # an invalid repo id needs no Hub: tests/test_bad_inputs.py (train_push_bad_repo_id)
        (None, "--hub_model_id=alice/toy", "none was found; set HF_TOKEN"),
        (READ, "--hub_model_id=bob/toy", "cannot write there"),
    ]
    for i, (token, model_id, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        result = run_cli(cli_env(hub_server, tmp_path, token), *base, model_id, f"--output_dir={out}")
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()  # nothing trained, nothing written
        assert token is None or token not in result.stdout + result.stderr
    assert not (hub_server.state.root / "models" / "bob").exists()  # no repo made either


def test_cli_push_with_eval_rows(hub_server, checkpoint_1rf, tmp_path):
    rows = [
        {"checkpoint": str(checkpoint_1rf), "num_steps": n, "straightness": 0.1 * n, "latency_ms": 1.0}
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
    assert "| 10 | n/a | 1 | n/a | 1 |" in card and "\nmodel-index:" not in card  # local training data
    # A missing --eval file is refused before any request: tests/test_bad_inputs.py (push_missing_eval_file).


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
    repo_id = f"{hub.api.whoami()['name']}/hf-reflow-live-{uuid.uuid4().hex[:8]}"
    try:
        hub.check_push_access(repo_id, private=True, create=True)
        result = publish.push_checkpoint(hub, checkpoint_1rf, repo_id, private=True)
        assert result.created and not publish.push_checkpoint(hub, checkpoint_1rf, repo_id, private=True).created
        snapshot = Path(hub.api.snapshot_download(repo_id, cache_dir=str(tmp_path / "cache")))
        noise, state = torch.randn(2, 8, 2), torch.randn(2, 4)
        assert torch.equal(chunk(snapshot, noise, state), chunk(checkpoint_1rf, noise, state))
    finally:
        hub.api.delete_repo(repo_id, missing_ok=True)


def test_couplings_pushed_as_a_dataset_train_by_repo_id(online, checkpoint_1rf, toy_dataset, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, ModelCard

    from hf_reflow.artifacts.couplings_store import load_couplings
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.training.couplings import generate
    from hf_reflow.training.trainer import ReflowTrainer

    hub = fast_hub()
    teacher = publish.push_checkpoint(hub, checkpoint_1rf, "alice/toy-1rf", license="mit")
    folder = tmp_path / "couplings"
    generate(
        folder,
        TeacherConfig(path=str(checkpoint_1rf)),
        DatasetConfig(root=str(toy_dataset)),
        num_couplings=48,
        block_size=32,
    )
    result = publish.push_couplings(hub, folder, "alice/toy-couplings")
    assert result.created and not publish.push_couplings(hub, folder, "alice/toy-couplings").created
    # --dataset.revision: a Hub dataset's lineage records the commit its revision resolves to
    from hf_reflow.data import dataset_source

    source = dataset_source(DatasetConfig(repo_id="alice/toy-couplings", revision="main"))
    assert source == {"repo_id": "alice/toy-couplings", "root": None, "revision": "main", "commit": result.commit}
    files = online.repo("alice/toy-couplings", "datasets").files("main")
    assert set(files) == {
        ".gitattributes",
        "README.md",
        "couplings.json",
        "data/train-00000.parquet",
        "data/train-00001.parquet",
    }

    _, local = load_couplings(str(folder))
    _, remote = load_couplings("alice/toy-couplings")  # a Hub dataset id, through the cache
    assert all(torch.equal(local[k], remote[k]) for k in local)
    snapshot = Path(hub.download("alice/toy-couplings", repo_type="dataset"))
    card = DatasetCard.load(snapshot / "README.md")
    rows = load_dataset(str(snapshot), split="train")  # the card's `configs` name the parquet shards
    assert len(rows) == 48 and rows.features["noise"].shape == (8, 2)
    assert {"reflow", "couplings", "flow_mlp"} <= set(card.data.tags) and "alice/toy-1rf" in card.text
    assert card.data.license == "mit" and teacher.commit in card.text
    config = train_config(
        stage="reflow", steps=3, output_dir=str(tmp_path / "2rf"), dataset__root=str(toy_dataset),
        teacher__path=str(checkpoint_1rf), couplings__path="alice/toy-couplings",
    )  # fmt: skip
    final = ReflowTrainer(config).train()
    assert json.loads((final / "reflow.json").read_text())["couplings_dataset"] == "alice/toy-couplings"
    publish.push_checkpoint(hub, final, "alice/toy-2rf-stored")
    card = ModelCard(hub.read_text("alice/toy-2rf-stored", "README.md"))
    assert card.data.datasets == ["alice/toy-couplings"] and card.data.base_model == "alice/toy-1rf"
    assert "**Trained on stored couplings:** [alice/toy-couplings]" in card.text


# ---- the Space: `hf-reflow space --push` and the pipeline's one-flag push --------------------------
TINY = str(REPO / "recipes" / "metaworld" / "tiny.yaml")
EGL_PACKAGES = {"libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libopengl0", "libgl1", "libgles2"}


def space_files(server, repo_id: str) -> dict[str, bytes]:
    repo = server.repo(repo_id, "spaces")
    return {path: repo.blob(oid) for path, oid in repo.files("main").items()}


def space_header(files: dict[str, bytes]) -> dict:
    import yaml

    return yaml.safe_load(files["README.md"].decode().split("---\n")[1])


def yaml_header(readme: Path) -> dict:
    return space_header({"README.md": readme.read_bytes()})


def test_space_push_refuses_unpushed_stages_then_names_and_preloads_the_chain(
    online, checkpoint_1rf, tmp_path
):
    from hf_reflow import space

    student = Path(shutil.copytree(checkpoint_1rf, tmp_path / "2rf" / "pretrained_model"))
    chain = tmp_path / "chain"
    chain.mkdir()
    stages = [{"name": "1-RF", "stage": "flow_matching", "k": 1, "path": str(checkpoint_1rf)},
              {"name": "2-RF", "stage": "reflow", "k": 2, "path": str(student)}]  # fmt: skip
    (chain / "pipeline.json").write_text(json.dumps({
        "env": "metaworld", "tasks": ["reach-v3"], "stages": stages,
        "dataset": {"root": "data", "repo_id": "local/metaworld"},
    }))  # fmt: skip
    publish.push_checkpoint(fast_hub(), checkpoint_1rf, "alice/toy-1rf")
    env = cli_env(online, tmp_path, WRITE)
    args = ["space", "--push", "--repo_id=alice/compare", f"--chain={chain}"]
    refused = run_cli(env, *args)
    assert refused.returncode == 2 and refused.stderr.count("hf-reflow: error:") == 1, refused.stderr
    error = refused.stderr.strip().splitlines()[-1]
    assert (
        f"2-RF ({student})" in error
        and "never pushed" in error
        and "--chain" in error
        and "1-RF" not in error
    )
    assert "Traceback" not in refused.stderr and not online.repo("alice/compare", "spaces").path.exists()

    publish.push_checkpoint(fast_hub(), student, "alice/toy-2rf")
    result = run_cli(env, *args)
    assert result.returncode == 0, result.stderr
    assert (
        f"pushed: {online.url}/spaces/alice/compare" in result.stdout
        and WRITE not in result.stdout + result.stderr
    )
    files = space_files(online, "alice/compare")
    header = space_header(files)
    models = ["alice/toy-1rf", "alice/toy-2rf"]
    assert header["models"] == header["preload_from_hub"] == models
    template = yaml_header(REPO / "space" / "README.md")
    assert (header["sdk"], header["sdk_version"], header["app_file"]) == (
        "gradio",
        template["sdk_version"],
        "app.py",
    )
    assert header["python_version"] == "3.12" and header["short_description"] == template["short_description"]
    assert f"| 2-RF | [alice/toy-2rf]({online.url}/alice/toy-2rf) |" in files["README.md"].decode()  # the endpoint's
    assert files["requirements.txt"] == (REPO / "space" / "requirements.txt").read_bytes()
    assert (
        b"lerobot[smolvla,dataset]==0.6.1" in files["requirements.txt"]
        and b"mujoco==3.3.0" in files["requirements.txt"]
    )
    assert set(files["packages.txt"].decode().split()) == EGL_PACKAGES
    assert {"app.py", "figures.py", "chain.json", "hf_reflow/evaluation/compare.py", "hf_reflow/space.py"} <= set(files)
    assert not [p for p in files if "__pycache__" in p or p.endswith("hub.json")]
    assert online.repo("alice/compare", "spaces").meta["sdk"] == "gradio"

    folder = tmp_path / "deployed"  # what the Space's app.py shows: the chain as Hub ids, no local dataset
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    shown = space.read_chain_file(folder / space.CHAIN_FILE)
    assert [(s.name, s.source) for s in shown.stages] == list(zip(["1-RF", "2-RF"], models, strict=True))
    assert (shown.env, shown.tasks, shown.dataset_root, shown.dataset_repo_id) == (
        "metaworld",
        ["reach-v3"],
        None,
        None,
    )

    bundled = run_cli(env, "space", f"--bundle={tmp_path / 'bundle'}", f"--chain={chain}")  # deployable as is
    assert bundled.returncode == 0 and "showing alice/toy-1rf, alice/toy-2rf (metaworld)" in bundled.stdout, bundled.stderr
    assert (tmp_path / "bundle" / "chain.json").read_bytes() == files["chain.json"]
    by_hub_ids = run_cli(env, "space", f"--bundle={tmp_path / 'b2'}", "--chain=alice/toy-1rf,alice/toy-2rf")
    assert by_hub_ids.returncode == 0, by_hub_ids.stderr  # no pipeline.json: the env from the models' own shapes
    assert json.loads((tmp_path / "b2" / "chain.json").read_text())["env"] == "toy"

    commits = len(online.repo("alice/compare", "spaces").history())
    by_id = space.hub_chain("1-RF=alice/toy-1rf,2-RF=alice/toy-2rf", env="metaworld")  # --chain with Hub ids: the same Space
    by_id.tasks = ["reach-v3"]
    assert not space.push("alice/compare", by_id, hub=fast_hub()).created
    assert len(online.repo("alice/compare", "spaces").history()) == commits
    with pytest.raises(HubError, match="alice/missing.*not found"):  # checked before the Space is made
        space.push("alice/other", space.HubChain(stages=[("x", "alice/missing")]), hub=fast_hub())
    assert not online.repo("alice/other", "spaces").path.exists()


def test_pipeline_push_flag_pushes_every_stage_then_the_space(hub_server, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    small = ["--data.tasks=[reach-v3]", "--data.episodes=2", "--data.heldout_episodes=1", "--num_couplings=64",
             "--stages=[flow_matching,reflow,distill,redistill]", "--flow_matching.steps=5", "--reflow.steps=5",
             "--distill.steps=5", "--redistill.steps=5", "--eval.episodes=0", "--eval.num_samples=4", "--eval.num_steps=[1]"]  # fmt: skip
    args = ["pipeline", f"--config={TINY}", f"--output_dir={out}", *small]
    denied = run_cli(cli_env(hub_server, tmp_path, READ), *args, "--push.hub_model_id=bob/mw")
    assert denied.returncode == 2 and "cannot write there" in denied.stderr, denied.stderr[-2000:]
    assert not out.exists()  # refused before anything was written or trained

    push = ["--push.hub_model_id=alice/mw", "--push.space_id=alice/mw-compare"]
    result = run_cli(cli_env(hub_server, tmp_path, WRITE), *args, *push)
    assert result.returncode == 0, result.stderr[-3000:]
    assert WRITE not in result.stdout + result.stderr
    repos = {"1rf": "alice/mw-1rf", "2rf": "alice/mw-2rf", "2rf-distill": "alice/mw-2rf-distilled",
             "2rf-redistill": "alice/mw-2rf-redistilled"}
    for run, repo_id in repos.items():
        files = hub_server.repo(repo_id).files("main")
        assert {"README.md", "config.json", "model.safetensors", "reflow.json"} <= set(files), repo_id
        record = json.loads((out / "seed0" / run / "pretrained_model" / "hub.json").read_text())
        assert (
            record["repo_id"] == repo_id
            and record["commit"] == hub_server.repo(repo_id).read("refs.json")["main"]
        )
    card = ModelCard(
        hub_server.repo("alice/mw-2rf")
        .blob(hub_server.repo("alice/mw-2rf").files("main")["README.md"])
        .decode()
    )
    assert card.data.base_model == "alice/mw-1rf" and "| 1 |" in card.text  # lineage, and its evaluation row
    distilled = hub_server.repo("alice/mw-2rf-distilled")
    assert (
        ModelCard(distilled.blob(distilled.files("main")["README.md"]).decode()).data.base_model
        == "alice/mw-2rf"
    )
    demos = hub_server.repo("alice/mw-demos", "datasets")
    assert {"meta/info.json", "README.md"} <= set(demos.files("main")) and "hub.json" not in demos.files("main")
    assert "LeRobot" in demos.blob(demos.files("main")["README.md"]).decode()  # LeRobot's dataset card
    assert demos.tags == {"v3.0": demos.read("refs.json")["main"]}  # LeRobot's codebase version tag
    code = ("from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata; "
            "m = LeRobotDatasetMetadata('alice/mw-demos'); print(m.revision, m.total_episodes)")  # no revision given
    loaded = conftest.run_stock_python(code, env=cli_env(hub_server, tmp_path, READ))
    assert loaded.returncode == 0 and loaded.stdout.split()[-2:] == ["v3.0", "2"], loaded.stderr[-2000:]
    couplings = hub_server.repo("alice/mw-2rf-couplings", "datasets")
    assert {"couplings.json", "README.md"} <= set(couplings.files("main"))
    couplings_card = couplings.blob(couplings.files("main")["README.md"]).decode()
    assert "[alice/mw-1rf](" in couplings_card and "alice/mw-demos" in couplings_card  # its teacher and frames, pushed
    assert card.data.datasets == ["alice/mw-demos", "alice/mw-2rf-couplings"]
    demos_commit = json.loads((out / "data" / "demos" / "hub.json").read_text())["commit"]
    assert f"--dataset.repo_id=alice/mw-demos --dataset.revision={demos_commit}" in card.text  # pinned
    assert str(out) not in str(card) and str(out) not in couplings_card  # no local path on a card
    distilled_card = ModelCard(distilled.blob(distilled.files("main")["README.md"]).decode())
    assert distilled_card.data.datasets == ["alice/mw-demos", "alice/mw-2rf-distilled-couplings"]
    # redistilled: trained at the distilled student's rollouts, pushed as a LeRobotDataset its card pins
    states = hub_server.repo("alice/mw-2rf-distilled-states", "datasets")
    assert {"meta/info.json", "README.md"} <= set(states.files("main"))
    redistilled = hub_server.repo("alice/mw-2rf-redistilled")
    redistilled_card = ModelCard(redistilled.blob(redistilled.files("main")["README.md"]).decode())
    assert redistilled_card.data.datasets == ["alice/mw-2rf-distilled-states", "alice/mw-2rf-redistilled-couplings"]
    states_commit = json.loads((out / "seed0" / "states" / "2rf-distill" / "hub.json").read_text())["commit"]
    assert f"--dataset.repo_id=alice/mw-2rf-distilled-states --dataset.revision={states_commit}" in redistilled_card.text
    header = space_header(space_files(hub_server, "alice/mw-compare"))
    assert header["models"] == header["preload_from_hub"] == list(repos.values())
    chain = json.loads(space_files(hub_server, "alice/mw-compare")["chain.json"])
    assert [s["name"] for s in chain["stages"]] == ["1-RF", "2-RF", "2-RF distilled", "2-RF redistilled"] and chain["tasks"] == [
        "reach-v3"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["space", "--push"], "--push=true needs --repo_id"),
        (["space", "--repo_id=alice/compare"], "add --push=true"),
        (["space", "--push", "--repo_id=alice/compare", "--bundle=x"], "choose one of --push=true"),
        (
            ["space", "--push", "--repo_id=alice/compare", "--dataset.root=x"],
            "pass a Hub dataset as --dataset.repo_id",
        ),
        (["space", "--push", "--repo_id=alice/bad name!"], "invalid Hub repo id"),
        (["pipeline", "--push.space_id=alice/compare"], "also set push.hub_model_id"),
        (["pipeline", "--push.hub_model_id=no-namespace"], "push.hub_model_id must be namespace/name"),
        (
            ["pipeline", "--push.hub_model_id=alice/mw", "--push.hub_repo_template={hub_model_id}-{x}"],
            "is invalid",
        ),
        (
            ["pipeline", "--push.hub_model_id=alice/mw", "--push.hub_repo_template={hub_model_id}"],
            "same repo for several",
        ),
    ],
)
def test_space_and_pipeline_push_bad_input(args, message, tmp_path, capsys):
    from hf_reflow import cli

    assert cli.main([*args, f"--output_dir={tmp_path / 'run'}"] if args[0] == "pipeline" else args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_card_says_how_many_updates_each_coupling_served():
    from hf_reflow.publish import cards

    info = {"stage": "reflow", "k": 2, "couplings_seen": 1000, "coupling_reuse": 4, "dataset": {"repo_id": "a/d", "root": None}}
    assert cards._template_values("a/b", info, {}, [], [])["couplings_seen"] == "1,000 (made online), each for 4 updates"
    info["coupling_reuse"] = 1
    assert cards._template_values("a/b", info, {}, [], [])["couplings_seen"] == "1,000 (made online)"


def test_card_says_at_which_times_a_distilled_student_was_trained():
    from hf_reflow.publish import cards

    info = {"stage": "distill", "k": 2, "num_steps": 1, "dataset": {"repo_id": "a/d", "root": None}}
    assert cards._template_values("a/b", info, {}, [], [])["what"].startswith(
        "distilled from its teacher's ODE end points at t = 1 only (InstaFlow-style), for 1-step sampling")
    info["num_steps"] = 2
    assert "at the 2 times its 2 Euler steps query, for 2-step sampling" in cards._template_values("a/b", info, {}, [], [])["what"]


def test_card_gives_the_exact_lerobot_eval_command_of_its_closed_loop_rows():
    from hf_reflow.publish import cards

    info = {"stage": "reflow", "k": 2, "dataset": {"repo_id": "a/d", "root": None}}
    row = {"num_steps": 1, "success_rate": 0.9, "env_type": "metaworld_detour", "env_mode": "multimodal",
           "first_episode_seed": 7_000_000, "per_task": {"reach-v3": {"episodes": 50}, "push-v3": {"episodes": 50}}}
    state = {"input_features": {"observation.state": {"type": "STATE", "shape": [41]}}, "type": "flow_mlp", "num_steps": 1}
    card = cards.model_card(repo_id="a/mw-2rf", info=info, policy_config=state, lineage=[], eval_rows=[row])
    assert ("lerobot-eval --policy.path=a/mw-2rf --policy.num_steps=1 --env.type=metaworld_detour --env.task=push-v3 "
            "--seed=7000000 --eval.n_episodes=50 --eval.batch_size=10") in card.text
    assert "--env.type=<env>" not in card.text and card.text.count("lerobot-eval --policy.path") == 2
    vla = {**state, "input_features": {"observation.images.corner": {"type": "VISUAL", "shape": [3, 64, 64]}}}
    assert cards.lerobot_eval_envs([{**row, "env_mode": "scripted"}], vla)[0] == (
        "--env.type=metaworld_detour --env.task=reach-v3 --env.obs_type=pixels_agent_pos --env.image_size=64 "
        "--env.mode=scripted --seed=7000000 --eval.n_episodes=50")  # rendered at the size the policy was trained on
    no_env = cards.model_card(repo_id="a/x", info=info, policy_config=state, lineage=[], eval_rows=[])
    assert "--env.type=<env>" in no_env.text  # measured nowhere: the user names their own env


def test_model_index_files_closed_loop_success_under_its_env_and_never_latency():
    from hf_reflow.publish import cards

    info = {"stage": "reflow", "k": 2, "dataset": {"repo_id": "local/metaworld", "root": "/data"}}  # local demos
    row = {"num_steps": 2, "success_rate": 0.9, "successes": 90, "episodes": 100, "env_type": "metaworld_detour",
           "env_mode": "multimodal", "first_episode_seed": 7_000_000, "straightness": 0.01, "latency_ms": 3.0,
           "latency_device": "CPU Test 9000, 2 threads", "per_task": {"reach-v3": {}, "push-v3": {}}}
    card = cards.model_card(repo_id="a/mw-2rf", info=info, policy_config={"type": "flow_mlp"}, lineage=[], eval_rows=[row])
    (result,) = card.data.eval_results  # offline metrics on a local dataset and latency are left out
    assert (result.dataset_type, result.dataset_config, result.metric_type) == ("metaworld_detour", "push-v3,reach-v3", "success_rate")
    assert result.metric_value == 0.9 and result.metric_config == "num_steps=2"
    low, high = result.metric_args["ci95"]
    assert 0.82 < low < 0.9 < high < 0.96 and result.metric_args["episodes"] == 100
    assert "model-index:" in str(card) and "metaworld_detour" in str(card).split("---")[1]
    assert "on CPU Test 9000, 2 threads" in card.text and "closed loop in metaworld_detour (push-v3, reach-v3), 100 episodes" in card.text


def test_a_pushed_chain_retrains_bit_for_bit_from_the_hub(online, toy_dataset, tmp_path):
    """The reproduce commands on the cards of a pushed toy 1-RF -> 2-RF (stored couplings): Hub ids and commits
    only; the 2-RF's, run as a user runs them (`hf download` + `hf-reflow train` in another directory, its teacher,
    demonstrations and couplings all from the Hub), give the same weights."""
    import shlex
    import sys

    from huggingface_hub import ModelCard

    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.training.couplings import generate
    from hf_reflow.training.trainer import ReflowTrainer

    hub = fast_hub()
    data = Path(shutil.copytree(toy_dataset, tmp_path / "toy"))  # a push records itself in the folder
    first = ReflowTrainer(train_config(steps=20, output_dir=str(tmp_path / "1rf"), dataset__root=str(data))).train()
    couplings = generate(tmp_path / "couplings", TeacherConfig(path=str(first), num_inference_steps=4),
                         DatasetConfig(root=str(data)), num_couplings=256, block_size=128)  # fmt: skip
    second = ReflowTrainer(train_config(stage="reflow", steps=10, output_dir=str(tmp_path / "2rf"), dataset__root=str(data),
                                        teacher__path=str(first), couplings__path=str(couplings))).train()  # fmt: skip
    publish.push_demonstrations(hub, data, "alice/toy-demos")
    publish.push_checkpoint(hub, first, "alice/toy-1rf")
    publish.push_couplings(hub, couplings, "alice/toy-couplings")
    publish.push_checkpoint(hub, second, "alice/toy-2rf")

    work = tmp_path / "elsewhere"
    work.mkdir()
    # the same thread count as this process, so the arithmetic is the same
    env = {**cli_env(online, tmp_path, READ), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    scripts = Path(sys.executable).parent
    blocks = {}
    for repo in ("alice/toy-1rf", "alice/toy-2rf"):
        card = ModelCard(hub.read_text(repo, "README.md"))
        assert card.data.datasets == (["alice/toy-demos"] if repo.endswith("1rf") else ["alice/toy-demos", "alice/toy-couplings"])
        blocks[repo] = card.text.split("## Reproduce")[1].split("```bash\n")[1].split("```")[0]
        assert len(blocks[repo].strip().splitlines()) == 2 and str(tmp_path) not in blocks[repo]  # Hub ids only
    assert "--dataset.repo_id=alice/toy-demos --dataset.root=null --dataset.revision=" in blocks["alice/toy-1rf"]
    # the 2-RF's commands use every kind of source (demonstrations, teacher, couplings): run them
    for line in blocks["alice/toy-2rf"].strip().splitlines():
        argv = shlex.split(line)
        proc = subprocess.run([str(scripts / argv[0]), *argv[1:]], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    retrained = work / "toy-2rf-reproduce" / "run" / "pretrained_model"
    assert (retrained / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
