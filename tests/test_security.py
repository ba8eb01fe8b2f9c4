"""No code runs from a checkpoint hf-reflow loads.

(a) A processor JSON naming a callable (`"class": "os.system"` / `"subprocess.Popen"`) whose arguments
    would write a marker file: every hf-reflow entry point that loads processors refuses it with one
    line (`CheckpointError`; the CLI exits 2) and the marker is never written.
(b) A training state holding a pickle whose `__reduce__` would write a marker (Accelerate's
    `custom_checkpoint_0.pkl`, `random_states_0.pkl`, `optimizer.bin`): `--resume` never unpickles it.

Controls show that both payloads do run when loaded the unchecked way, so the marker tests mean something.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, train_config
from safetensors.torch import load_file

from hf_reflow.artifacts.checkpoints import load_config, load_processors
from hf_reflow.artifacts.processor_safety import check_processor_steps
from hf_reflow.artifacts.training_state import TRAINING_STATE_FILE
from hf_reflow.errors import CheckpointError

PAYLOADS = ("os.system", "subprocess.Popen")
# Registered LeRobot steps that load code or models named in their arguments.
REGISTERED_PAYLOADS = ("action_tokenizer_processor", "reward_classifier_processor")
RUN_SETTINGS = dict(steps=4, save_every=2, batch_size=16, ema_decay=0.9, optim__warmup_steps=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, toy_dataset) -> Path:
    """A tiny finished 1-RF run with a training checkpoint at step 2 (EMA on)."""
    from hf_reflow.training.trainer import ReflowTrainer

    out = tmp_path_factory.mktemp("security") / "run"
    ReflowTrainer(train_config(output_dir=str(out), dataset__root=str(toy_dataset), **RUN_SETTINGS)).train()
    return out


def _payload_step(kind: str, marker: Path) -> dict:
    if kind == "os.system":
        return {"class": "os.system", "config": {"command": f"touch {shlex.quote(str(marker))}"}}
    code = f"open({str(marker)!r}, 'w').close()"
    return {"class": "subprocess.Popen", "config": {"args": [sys.executable, "-c", code]}}


def _code_repo(tmp_path: Path, marker: Path) -> Path:
    """A local "repo" whose custom processor code writes `marker` when transformers imports it."""
    repo = tmp_path / "code_repo"
    repo.mkdir(exist_ok=True)
    (repo / "evil_processor.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import ProcessorMixin\nclass EvilProcessor(ProcessorMixin):\n    attributes = []\n"
    )
    auto_map = {"AutoProcessor": "evil_processor.EvilProcessor", "AutoModel": "evil_processor.EvilProcessor"}
    (repo / "processor_config.json").write_text(json.dumps({"processor_class": "EvilProcessor", "auto_map": auto_map}))
    (repo / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    return repo


def _registered_payload_step(kind: str, tmp_path: Path, marker: Path) -> dict:
    repo = str(_code_repo(tmp_path, marker))
    if kind == "action_tokenizer_processor":
        return {"registry_name": kind, "config": {"action_tokenizer_name": repo, "trust_remote_code": True}}
    return {"registry_name": kind, "config": {"pretrained_path": repo, "device": "cpu"}}


def _evil_checkpoint(run_dir: Path, tmp_path: Path, step: dict, filename: str = "policy_preprocessor.json") -> Path:
    """A copy of the run's final checkpoint whose processor JSON starts with `step`."""
    checkpoint = tmp_path / "evil" / "pretrained_model"
    shutil.copytree(run_dir / "pretrained_model", checkpoint)
    file = checkpoint / filename
    pipeline = json.loads(file.read_text())
    pipeline["steps"].insert(0, step)
    file.write_text(json.dumps(pipeline, indent=2))
    return checkpoint


def _assert_never_written(marker: Path, kind: str) -> None:
    if kind == "subprocess.Popen":  # a started child would write it a moment later
        time.sleep(1.0)
    assert not marker.exists(), "the checkpoint's payload ran"


def _wait_for(marker: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        time.sleep(0.05)
    return False


def _assert_one_line_refusal(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ---- (a) processor steps ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PAYLOADS)
def test_control_the_payload_runs_when_lerobot_loads_it_unchecked(run_dir, tmp_path, kind):
    """What hf-reflow did before: LeRobot imports the `class` path and calls it with the JSON's config."""
    from lerobot.processor import PolicyProcessorPipeline

    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _payload_step(kind, marker))
    with contextlib.suppress(Exception):  # the callable is no processor step; it ran before that was noticed
        PolicyProcessorPipeline.from_pretrained(str(evil), config_filename="policy_preprocessor.json")
    assert _wait_for(marker)


def _load_processors(evil: Path, toy_dataset: Path, out: Path) -> None:
    load_processors(str(evil), load_config(str(evil)))


def _load_processors_other_file(evil: Path, toy_dataset: Path, out: Path) -> None:
    load_processors(str(evil.parent), load_config(str(evil)))  # a run dir resolves to its pretrained_model/


def _space_compare(evil: Path, toy_dataset: Path, out: Path) -> None:
    from hf_reflow.artifacts.checkpoints import CheckpointCache

    CheckpointCache().get(str(evil))  # what the Space loads with


def _offline_evaluation(evil: Path, toy_dataset: Path, out: Path) -> None:
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.evaluation.offline import evaluate_checkpoint

    evaluate_checkpoint(str(evil), DatasetConfig(root=str(toy_dataset)), step_counts=[1], num_samples=4)


def _closed_loop_worker(evil: Path, toy_dataset: Path, out: Path) -> None:
    from hf_reflow.artifacts.checkpoints import CheckpointCache
    from hf_reflow.evaluation import closed_loop

    closed_loop.run_job(closed_loop.RolloutJob(str(evil), 1, "reach-v3", (7_000_000,)), CheckpointCache())


def _reflow_teacher(evil: Path, toy_dataset: Path, out: Path) -> None:
    from hf_reflow.training.trainer import ReflowTrainer

    config = train_config(
        stage="reflow", steps=2, output_dir=str(out), dataset__root=str(toy_dataset), teacher__path=str(evil)
    )
    ReflowTrainer(config).train()


def _fresh_student_with_teacher_processors(evil: Path, toy_dataset: Path, out: Path) -> None:
    from hf_reflow.training.trainer import ReflowTrainer

    config = train_config(
        stage="reflow", steps=2, output_dir=str(out), dataset__root=str(toy_dataset), teacher__path=str(evil),
        init_from_teacher=False,
    )  # fmt: skip
    ReflowTrainer(config).train()


def _couplings_teacher(evil: Path, toy_dataset: Path, out: Path) -> None:
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.training.couplings import generate

    teacher = TeacherConfig(path=str(evil), num_inference_steps=2)
    generate(out, teacher, DatasetConfig(root=str(toy_dataset)), num_couplings=8, block_size=8, batch_size=8)


ENTRY_POINTS = {
    "load_processors": _load_processors,
    "load_processors_run_dir": _load_processors_other_file,
    "space_compare": _space_compare,
    "evaluate_checkpoint": _offline_evaluation,
    "closed_loop_worker": _closed_loop_worker,
    "reflow_teacher": _reflow_teacher,
    "reflow_fresh_student": _fresh_student_with_teacher_processors,
    "couplings_teacher": _couplings_teacher,
}


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_a_processor_step_naming_a_callable(run_dir, toy_dataset, tmp_path, entry, kind):
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _payload_step(kind, marker))
    with pytest.raises(CheckpointError) as info:
        ENTRY_POINTS[entry](evil, toy_dataset, tmp_path / "out")
    _assert_one_line_refusal(info.value, "refusing processor step 0", repr(kind), "policy_preprocessor.json")
    _assert_never_written(marker, kind)


def test_control_a_registered_step_runs_repo_code_when_lerobot_loads_it_unchecked(run_dir, tmp_path):
    """LeRobot's own `action_tokenizer_processor` imports a repo's custom code (trust_remote_code=True)."""
    from lerobot.processor import PolicyProcessorPipeline

    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _registered_payload_step("action_tokenizer_processor", tmp_path, marker))
    with contextlib.suppress(Exception):  # it fails later (no PaliGemma tokenizer offline), after the code ran
        PolicyProcessorPipeline.from_pretrained(str(evil), config_filename="policy_preprocessor.json")
    assert _wait_for(marker)


# The code-running step at every entry point; the model-loading one where every entry point checks (the same
# check_processor_steps call), to keep the suite short.
@pytest.mark.parametrize(
    ("entry", "kind"),
    [(entry, "action_tokenizer_processor") for entry in ENTRY_POINTS] + [("load_processors", "reward_classifier_processor"),
                                                                           ("space_compare", "reward_classifier_processor")],
)
def test_every_entry_point_refuses_a_registered_step_that_loads_code(run_dir, toy_dataset, tmp_path, entry, kind):
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _registered_payload_step(kind, tmp_path, marker))
    with pytest.raises(CheckpointError) as info:
        ENTRY_POINTS[entry](evil, toy_dataset, tmp_path / "out")
    _assert_one_line_refusal(info.value, "refusing processor step 0", repr(kind), "not a step LeRobot builds for")
    _assert_never_written(marker, kind)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda step: step["config"].update(trust_remote_code=True), "takes no argument 'trust_remote_code'"),
        (lambda step: step.update(state_file="../outside/stats.safetensors"), "is not a file name inside"),
        (lambda step: step.update(state_file="/etc/passwd"), "is not a file name inside"),
        (lambda step: step.update(state_file="stats.pt"), "is not a .safetensors file"),
        (lambda step: step.update(code="x"), "unknown key 'code'"),
        (lambda step: step.update(config=["a"]), "its config is a list"),
    ],
)
def test_an_allowed_step_with_foreign_arguments_is_refused(run_dir, tmp_path, change, fragment):
    checkpoint = tmp_path / "args" / "pretrained_model"
    shutil.copytree(run_dir / "pretrained_model", checkpoint)
    file = checkpoint / "policy_preprocessor.json"
    pipeline = json.loads(file.read_text())
    index = next(i for i, s in enumerate(pipeline["steps"]) if s["registry_name"] == "normalizer_processor")
    change(pipeline["steps"][index])
    file.write_text(json.dumps(pipeline))
    with pytest.raises(CheckpointError) as info:
        load_processors(str(checkpoint), load_config(str(checkpoint)))
    _assert_one_line_refusal(info.value, f"refusing processor step {index}", fragment)


def test_a_tokenizer_other_than_lerobots_is_refused(tmp_path):
    from types import SimpleNamespace

    config = SimpleNamespace(type="smolvla", vlm_model_name="HuggingFaceTB/SmolVLM2-500M-Video-Instruct")
    step = {"registry_name": "tokenizer_processor", "config": {"tokenizer_name": "someone/evil-tokenizer"}}
    (tmp_path / "policy_preprocessor.json").write_text(json.dumps({"steps": [step]}))
    with pytest.raises(CheckpointError) as info:
        check_processor_steps(tmp_path, config)
    _assert_one_line_refusal(info.value, "'someone/evil-tokenizer' is not the tokenizer LeRobot uses for smolvla")
    step["config"]["tokenizer_name"] = config.vlm_model_name
    (tmp_path / "policy_preprocessor.json").write_text(json.dumps({"steps": [step]}))
    check_processor_steps(tmp_path, config)
    with pytest.raises(CheckpointError, match="policy type 'act' has no processor allow-list"):
        check_processor_steps(tmp_path, SimpleNamespace(type="act"))


def test_the_allow_list_is_what_lerobot_builds_for_each_type(tmp_path, monkeypatch):
    """ALLOWED_STEPS / the keys per step equal what `make_pre_post_processors` saves for every supported type."""
    import lerobot.processor.tokenizer_processor as tokenizer_processor
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from hf_reflow.artifacts import processor_safety
    from hf_reflow.policies.factory import supported_policy_types

    monkeypatch.setattr(tokenizer_processor.AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    assert set(processor_safety.ALLOWED_STEPS) == set(supported_policy_types())
    for policy_type, allowed in processor_safety.ALLOWED_STEPS.items():
        pre, post = make_pre_post_processors(PreTrainedConfig.get_choice_class(policy_type)())
        folder = tmp_path / policy_type
        pre.save_pretrained(folder)
        post.save_pretrained(folder)
        for filename, names in zip(processor_safety.PROCESSOR_FILES, allowed, strict=True):
            steps = json.loads((folder / filename).read_text())["steps"]
            assert {s["registry_name"] for s in steps} == names, (policy_type, filename)
            for s in steps:
                assert set(s.get("config", {})) == processor_safety._STEP_KEYS[s["registry_name"]], s


@pytest.mark.parametrize("name", ["model.safetensors", "policy_preprocessor.json", "config.json", "STATS"])
def test_a_file_linked_from_outside_the_checkpoint_is_refused(run_dir, tmp_path, name):
    checkpoint = tmp_path / "linked" / "pretrained_model"
    shutil.copytree(run_dir / "pretrained_model", checkpoint)
    if name == "STATS":
        name = next(p.name for p in checkpoint.glob("policy_preprocessor*.safetensors"))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(checkpoint / name, outside / name)
    (checkpoint / name).symlink_to(outside / name)
    with pytest.raises(CheckpointError) as info:
        from hf_reflow.artifacts.checkpoints import load_checkpoint

        load_checkpoint(str(checkpoint))
    _assert_one_line_refusal(info.value, f"{name!r} points outside the checkpoint")


def test_a_hub_snapshot_may_link_into_its_own_blobs(tmp_path):
    from hf_reflow.artifacts.processor_safety import check_contained

    repo = tmp_path / "models--a--b"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    (snapshot / "config.json").symlink_to("../../blobs/abc")
    check_contained(snapshot, ("config.json",))
    (tmp_path / "elsewhere").write_text("{}")
    (snapshot / "model.safetensors").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="points outside the checkpoint"):
        check_contained(snapshot, ("model.safetensors",))


@pytest.mark.parametrize("revision", ["../../main", "main/../x", "a b", "/main", "x.lock", "-rf", "a~1", ""])
def test_a_revision_that_is_no_ref_name_is_refused(revision):
    from hf_reflow.configs import TeacherConfig
    from hf_reflow.errors import ConfigError, HubError
    from hf_reflow.hub import Hub

    with pytest.raises(ConfigError, match="is not a valid Hub revision"):
        TeacherConfig(path="a/b", revision=revision)
    with pytest.raises(HubError, match="invalid Hub revision"):
        Hub(api=object()).download("a/b", revision=revision)  # refused before any request


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "0" * 40, "feature/x-2"])
def test_valid_revisions_pass(revision):
    from hf_reflow.hub import revision_problem

    assert revision_problem(revision) is None


def test_push_refuses_a_link_leaving_the_folder(run_dir, tmp_path):
    from hf_reflow.errors import HubError
    from hf_reflow.hub import Hub

    checkpoint = tmp_path / "push" / "pretrained_model"
    shutil.copytree(run_dir / "pretrained_model", checkpoint)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (checkpoint / "notes.txt").symlink_to(secret)
    with pytest.raises(HubError) as info:
        Hub(api=object()).push_folder(checkpoint, "a/b", commit_message="x")  # refused before any request
    _assert_one_line_refusal(info.value, "'notes.txt' is a link to a file outside the folder")


def test_a_postprocessor_step_is_checked_too(run_dir, tmp_path):
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _payload_step("os.system", marker), "policy_postprocessor.json")
    with pytest.raises(CheckpointError) as info:
        load_processors(str(evil), load_config(str(evil)))
    _assert_one_line_refusal(info.value, "policy_postprocessor.json", "'os.system'")
    _assert_never_written(marker, "os.system")


@pytest.mark.parametrize("kind", PAYLOADS)
def test_cli_eval_exits_2_with_one_line(run_dir, toy_dataset, tmp_path, kind):
    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _payload_step(kind, marker))
    proc = run_cli("eval", f"--policy.path={evil}", f"--dataset.root={toy_dataset}", "--num_steps=1", "--num_samples=4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(lines) == 1 and "refusing processor step 0" in lines[0] and repr(kind) in lines[0], proc.stderr[-2000:]
    _assert_never_written(marker, kind)


@pytest.mark.parametrize(
    "step, fragment",
    [
        ({"registry_name": "not_a_registered_step", "config": {}}, "'not_a_registered_step' is not a step LeRobot builds"),
        ({"config": {}}, "no registry_name"),
        ("os.system", "not a step object"),
        # LeRobot would take the registry name, but a `class` path is refused whatever else the entry says.
        ({"registry_name": "device_processor", "class": "os.system", "config": {}}, "'os.system'"),
    ],
)
def test_unregistered_or_malformed_steps_are_refused(run_dir, tmp_path, step, fragment):
    evil = _evil_checkpoint(run_dir, tmp_path, step)
    with pytest.raises(CheckpointError) as info:
        load_processors(str(evil), load_config(str(evil)))
    _assert_one_line_refusal(info.value, "refusing processor step 0", fragment)


def test_a_trusted_local_checkpoint_may_name_a_class_path(run_dir, tmp_path):
    """allow_unregistered_processor_steps=True (like trust_remote_code) is the explicit way out, local only."""
    checkpoint = tmp_path / "classpath" / "pretrained_model"
    shutil.copytree(run_dir / "pretrained_model", checkpoint)
    file = checkpoint / "policy_preprocessor.json"
    pipeline = json.loads(file.read_text())
    renames = [s for s in pipeline["steps"] if s.get("registry_name") == "rename_observations_processor"]
    assert renames
    for step in renames:  # the way LeRobot saves an unregistered step: its import path
        del step["registry_name"]
        step["class"] = "lerobot.processor.rename_processor.RenameObservationsProcessorStep"
    file.write_text(json.dumps(pipeline))
    config = load_config(str(checkpoint))
    with pytest.raises(CheckpointError, match="allow_unregistered_processor_steps=True"):
        load_processors(str(checkpoint), config)
    pre, post = load_processors(str(checkpoint), config, allow_unregistered_processor_steps=True)
    assert any(type(s).__name__ == "RenameObservationsProcessorStep" for s in pre.steps)


def test_a_hub_checkpoint_is_never_trusted(run_dir, tmp_path, monkeypatch):
    """The trust flag covers a local folder only: a Hub id (here resolved to a local snapshot) is checked."""
    from hf_reflow.refs import CheckpointRef

    marker = tmp_path / "marker"
    evil = _evil_checkpoint(run_dir, tmp_path, _payload_step("os.system", marker))
    config = load_config(str(evil))
    monkeypatch.setattr(CheckpointRef, "_snapshot", property(lambda self: evil))  # the Hub id's snapshot
    with pytest.raises(CheckpointError) as info:
        load_processors("someone/evil-policy", config, allow_unregistered_processor_steps=True)
    _assert_one_line_refusal(info.value, "refusing processor step 0", "'os.system'")
    assert "allow_unregistered_processor_steps" not in str(info.value)  # no trust to offer for a Hub id
    _assert_never_written(marker, "os.system")


def test_the_space_has_no_way_to_trust():
    from hf_reflow.artifacts.checkpoints import CheckpointCache

    assert list(inspect.signature(CheckpointCache.get).parameters) == ["self", "source"]  # no trust flag to pass
    space_sources = [REPO / "space" / "app.py", REPO / "hf_reflow" / "evaluation" / "compare.py",
                     REPO / "hf_reflow" / "artifacts" / "checkpoints.py"]  # fmt: skip
    for file in space_sources:
        assert "allow_unregistered_processor_steps=True" not in file.read_text(), file


def test_stock_checkpoints_pass_the_check(run_dir):
    for checkpoint in (run_dir / "pretrained_model", run_dir / "checkpoints" / "000002" / "pretrained_model"):
        check_processor_steps(checkpoint, load_config(str(checkpoint)))


# ---- (b) training state ----------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls `open(marker, "w")`: it writes the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickles(directory: Path, marker: Path) -> None:
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin"):
        torch.save(_Payload(marker), directory / name)


def test_control_the_pickle_payload_runs_when_unpickled(tmp_path):
    """What Accelerate's `load_custom_state` did with `custom_checkpoint_*.pkl` (weights_only=False)."""
    marker = tmp_path / "marker"
    torch.save(_Payload(marker), tmp_path / "custom_checkpoint_0.pkl")
    assert not marker.exists()
    torch.load(tmp_path / "custom_checkpoint_0.pkl", weights_only=False)
    assert marker.exists()


def _resumed_copy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run "killed" after its step-2 checkpoint."""
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "pretrained_model")
    for checkpoint in (resumed / "checkpoints").iterdir():
        if checkpoint.name != "000002":
            shutil.rmtree(checkpoint)
    return resumed


def test_training_state_holds_no_pickle(run_dir):
    state = run_dir / "checkpoints" / "000002" / "training_state"
    names = sorted(p.name for p in state.iterdir())
    assert TRAINING_STATE_FILE in names
    assert all(name.endswith((".json", ".safetensors")) for name in names), names
    for file in state.iterdir():  # each file is what its name says: JSON text, or safetensors (a JSON header)
        data = file.read_bytes()
        if file.suffix == ".json":
            json.loads(data)
        else:  # 8-byte little-endian header length, then the JSON header: never a pickle stream or zip archive
            header = int.from_bytes(data[:8], "little")
            assert 8 + header <= len(data) and data[8:9] == b"{", file
            json.loads(data[8 : 8 + header])


def test_resume_refuses_an_old_pickled_training_state(run_dir, toy_dataset, tmp_path):
    from hf_reflow.training.trainer import ReflowTrainer

    marker = tmp_path / "marker"
    resumed = _resumed_copy(run_dir, tmp_path)
    state = resumed / "checkpoints" / "000002" / "training_state"
    shutil.rmtree(state)
    state.mkdir()
    _plant_pickles(state, marker)
    config = train_config(output_dir=str(resumed), dataset__root=str(toy_dataset), resume=True, **RUN_SETTINGS)
    with pytest.raises(CheckpointError) as info:
        ReflowTrainer(config).train()
    _assert_one_line_refusal(info.value, "holds no hf-reflow training state", "custom_checkpoint_0.pkl")
    assert not marker.exists()
    # The CLI: one line, exit 2, the marker still not written.
    proc = run_cli("train", f"--config={resumed / 'train_config.json'}", f"--output_dir={resumed}", "--resume=true")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(lines) == 1 and "holds no hf-reflow training state" in lines[0], proc.stderr[-2000:]
    assert not marker.exists()


def test_resume_ignores_pickles_beside_the_safe_state_and_stays_exact(run_dir, toy_dataset, tmp_path):
    from hf_reflow.training.trainer import ReflowTrainer

    marker = tmp_path / "marker"
    resumed = _resumed_copy(run_dir, tmp_path)
    _plant_pickles(resumed / "checkpoints" / "000002" / "training_state", marker)
    config = train_config(output_dir=str(resumed), dataset__root=str(toy_dataset), resume=True, **RUN_SETTINGS)
    final = ReflowTrainer(config).train()
    assert not marker.exists()
    a, b = load_file(run_dir / "pretrained_model" / "model.safetensors"), load_file(final / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # EMA weights, bitwise


def test_a_damaged_training_state_is_refused_with_one_line(run_dir, toy_dataset, tmp_path):
    from hf_reflow.training.trainer import ReflowTrainer

    resumed = _resumed_copy(run_dir, tmp_path)
    file = resumed / "checkpoints" / "000002" / "training_state" / TRAINING_STATE_FILE
    state = json.loads(file.read_text())
    state["ema"] = {"__tensor__": "no.such.tensor"}  # EMA is on in this run
    file.write_text(json.dumps(state))
    config = train_config(output_dir=str(resumed), dataset__root=str(toy_dataset), resume=True, **RUN_SETTINGS)
    with pytest.raises(CheckpointError) as info:
        ReflowTrainer(config).train()
    _assert_one_line_refusal(info.value, "training state is damaged")
