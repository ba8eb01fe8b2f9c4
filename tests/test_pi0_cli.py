"""pi0 / pi0.5 end to end, offline: `hf-reflow train` 1-RF -> 2-RF, stock LeRobot loading, eval, the Space.

Every command runs in its own process (forked from the warm test servers, or a fresh `hf-reflow space`) with
`pi0_env`: HF_HOME is a temporary Hub cache holding a small stand-in for the gated `google/paligemma-3b-pt-224`
tokenizer (LeRobot's processors load it by that id, unchanged), and a `sitecustomize.py` on PYTHONPATH builds
LeRobot's pi0 / pi0.5 at tiny sizes (LeRobot 0.6.1 has no config field for them; see
`hf_reflow.testing.tiny_pi0`). The stock-LeRobot check imports
nothing from hf_reflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, run_cli, run_stock_python
from safetensors.torch import load_file

from hf_reflow.testing import tiny_pi0

TYPES = ("pi0", "pi05")
SHRUNK = ["--steps=3", "--batch_size=4", "--log_every=1", "--log_with=[]", "--optim.warmup_steps=1",
          "--dataset.num_workers=0", "--save_every=0"]  # fmt: skip


def run_hf_reflow(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`hf-reflow ARGS` in its own process (a fork of the warm test server) with `env` as its environment."""
    return run_cli(*args, env=env, timeout=timeout)


def run_hf_reflow_sequence(env: dict[str, str], commands: list[list[str]]) -> subprocess.CompletedProcess:
    """Several `hf-reflow` command lines, one after another, each in its own process; stops at the first that
    fails and returns it (else the last)."""
    for args in commands:
        result = run_hf_reflow(env, *args, timeout=600)
        if result.returncode:
            break
    return result


def _data_args(dataset: Path) -> list[str]:
    return [f"--dataset.root={dataset}", "--dataset.repo_id=local/tiny_images"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, image_dataset, paligemma_home) -> dict[str, Path]:
    """Seeded tiny pi0 / pi0.5 checkpoints with LeRobot's processors and the dataset's stats."""
    root = tmp_path_factory.mktemp("pi_teachers")
    return {
        kind: tiny_pi0.write_checkpoint(root / kind, kind, dataset_root=image_dataset, hf_home=paligemma_home)
        for kind in TYPES
    }


@pytest.fixture(scope="module")
def chains(tmp_path_factory, teachers, image_dataset, pi0_env) -> dict[str, dict[str, Path]]:
    """Per type: the fixture's tiny checkpoint, a 1-RF and a 2-RF trained by the CLI with the repo's recipes."""
    root = tmp_path_factory.mktemp("pi_chains")
    commands = []
    for kind in TYPES:
        recipes = REPO / "recipes" / kind
        commands.append(["train", f"--config={recipes / '1rf.yaml'}", f"--policy.path={teachers[kind]}",
                         f"--output_dir={root / kind / '1rf'}", *_data_args(image_dataset), *SHRUNK])  # fmt: skip
        commands.append(["train", f"--config={recipes / 'reflow.yaml'}", f"--teacher.path={root / kind / '1rf'}",
                         "--teacher.num_inference_steps=3", f"--output_dir={root / kind / '2rf'}",
                         *_data_args(image_dataset), *SHRUNK])  # fmt: skip
    result = run_hf_reflow_sequence(pi0_env, commands)
    assert result.returncode == 0, result.stderr[-3000:]
    return {kind: {"teacher": teachers[kind], "1rf": root / kind / "1rf", "2rf": root / kind / "2rf"} for kind in TYPES}


@pytest.mark.parametrize("kind", TYPES)
def test_recipes_train_1rf_then_2rf(chains, kind):
    chain = chains[kind]
    first, second = chain["1rf"] / "pretrained_model", chain["2rf"] / "pretrained_model"
    assert json.loads((first / "config.json").read_text())["num_inference_steps"] == 10
    assert json.loads((second / "config.json").read_text())["num_inference_steps"] == 2
    assert json.loads((second / "config.json").read_text())["type"] == kind
    info1, info2 = (json.loads((d / "reflow.json").read_text()) for d in (first, second))
    assert (info1["stage"], info1["k"]) == ("flow_matching", 1)
    assert (info2["stage"], info2["k"], info2["teacher_num_inference_steps"]) == ("reflow", 2, 3)
    assert info2["teacher"] == str(chain["1rf"])
    weights = {name: load_file(path / "model.safetensors") for name, path in
               (("teacher", chain["teacher"]), ("1rf", first), ("2rf", second))}  # fmt: skip
    for before, after in (("teacher", "1rf"), ("1rf", "2rf")):
        moved = {k for k in weights[before] if not torch.equal(weights[before][k], weights[after][k])}
        assert "model.action_out_proj.weight" in moved and any("gemma_expert" in k for k in moved)
        assert not any(".paligemma." in k for k in moved)  # the recipes freeze the whole PaliGemma
    stats = sorted(p.name for p in chain["teacher"].glob("policy_*processor*.safetensors"))
    for directory in (first, second):  # each stage keeps the fixture's processors and stats
        assert stats == sorted(p.name for p in directory.glob("policy_*processor*.safetensors"))
        for name in stats:
            theirs, ours = load_file(chain["teacher"] / name), load_file(directory / name)
            assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    preprocessor = json.loads((second / "policy_preprocessor.json").read_text())
    tokenizer = next(s for s in preprocessor["steps"] if s["registry_name"] == "tokenizer_processor")
    assert tokenizer["config"]["tokenizer_name"] == tiny_pi0.PALIGEMMA_TOKENIZER


STOCK_PI0 = """
import sys, torch
from safetensors.torch import load_file
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.pi0.modeling_pi0 import PI0Policy
from lerobot.policies.pi05.modeling_pi05 import PI05Policy

root = sys.argv[1]
frame = LeRobotDataset("local/tiny_images", root=root)[0]
for kind, path in zip(sys.argv[2::2], sys.argv[3::2]):
    policy = {"pi0": PI0Policy, "pi05": PI05Policy}[kind].from_pretrained(path)
    saved, loaded = load_file(f"{path}/model.safetensors"), policy.state_dict()
    assert saved.keys() == loaded.keys()  # LeRobot returns a random model when loading fails: check the weights
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    calls = []
    denoise_step = policy.model.denoise_step
    policy.model.denoise_step = lambda *a, **k: calls.append(1) or denoise_step(*a, **k)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
    obs = {k: v for k, v in frame.items() if k.startswith("observation.")}
    obs["task"] = frame["task"]
    policy.reset()
    action = post(policy.select_action(pre(obs)))
    assert action.shape == (1, 4) and torch.isfinite(action).all(), action
    print("OK", kind, policy.config.num_inference_steps, len(calls))
assert not any(name.startswith("hf_reflow") for name in sys.modules)
assert "tiny_pi0_sizes" in sys.modules  # the size hook (LeRobot has no config field for tiny sizes)
"""


def test_2rf_loads_and_acts_in_stock_lerobot(chains, image_dataset, pi0_env):
    """`PI0Policy` / `PI05Policy.from_pretrained` + LeRobot's processors; `select_action` runs the saved 2 steps."""
    args = [str(image_dataset)]
    for kind in TYPES:
        args += [kind, str(chains[kind]["2rf"] / "pretrained_model")]
    result = run_stock_python(STOCK_PI0, *args, env=pi0_env)
    assert result.returncode == 0, result.stderr[-3000:]
    for kind in TYPES:
        assert f"OK {kind} 2 2" in result.stdout  # num_inference_steps 2, two denoise_step calls per chunk


def test_eval_cli_on_every_checkpoint(chains, image_dataset, pi0_env, tmp_path):
    paths = [str(chains[kind][stage]) for kind in TYPES for stage in ("1rf", "2rf")]
    out = tmp_path / "eval.json"
    result = run_hf_reflow(
        pi0_env, "eval", f"--policy.path={','.join(paths)}", *_data_args(image_dataset), "--num_steps=1,2",
        "--num_samples=4", f"--output={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "straightness" in result.stdout
    rows = json.loads(out.read_text())
    assert [(r["checkpoint"], r["num_steps"]) for r in rows] == [(p, n) for p in paths for n in (1, 2)]
    assert [r["k"] for r in rows] == [1, 1, 2, 2] * 2
    for row in rows:
        assert row["latency_ms"] > 0 and row["error_vs_10step"] > 0
        assert (row["straightness"] == 0) == (row["num_steps"] == 1)


def test_space_compares_pi0_checkpoints(chains, image_dataset, pi0_env):
    """`hf-reflow space` in a subprocess on the pi0 1-RF / 2-RF, queried through gradio_client (+ the pi0.5 2-RF)."""
    from gradio_client import Client

    port = free_port()
    policies = f"1-RF={chains['pi0']['1rf']},2-RF={chains['pi0']['2rf']}"
    server = subprocess.Popen(
        [sys.executable, "-m", "hf_reflow", "space", f"--policies={policies}", *_data_args(image_dataset),
         f"--port={port}", "--allow_any_policy=true"],  # the operator lets the page load another checkpoint
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=pi0_env, cwd=REPO,
    )  # fmt: skip
    try:
        deadline, client = time.monotonic() + 180, None
        while client is None:
            assert server.poll() is None, server.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the Space did not start within 180 s"
            try:
                client = Client(f"http://127.0.0.1:{port}", verbose=False)
            except Exception:
                time.sleep(1)
        extra = f"pi0.5 2-RF={chains['pi05']['2rf']}"
        camera, _, _, table, status = client.predict(
            ["1-RF", "2-RF"], extra, "dataset", 1, 3, "reach-v3", 0, "1,2,10", 0, api_name="/compare"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert Path(camera).is_file() and "episode 1, frame 3" in status
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert [(r["policy"], r["num_steps"]) for r in rows] == [
        (p, s) for p in ("1-RF", "2-RF", "pi0.5 2-RF") for s in (1, 2, 10)
    ]
    assert [r["k"] for r in rows] == [1] * 3 + [2] * 6
    for row in rows:
        assert row["nfe"] == row["num_steps"] and row["latency_ms"] > 0
        assert (row["error_vs_10step"] == 0) == (row["num_steps"] == 10)
        assert (row["straightness"] == 0) == (row["num_steps"] == 1)
        assert row["error_vs_expert"] > 0  # in action units: the 4 real dims, unnormalised


def _reflow_args(teacher: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--stage=reflow", f"--teacher.path={teacher}", f"--output_dir={out}", *_data_args(dataset),
            *SHRUNK, *extra]  # fmt: skip


NEW_STUDENT_OF_TEACHER_TYPE = "must be a pi0 policy; set --policy.type=pi0"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--policy.type=smolvla"],
            "is a pi0 policy, but policy.type is 'smolvla' and the student is initialised",
        ),
        (["--policy.type=flow_mlp", "--init_from_teacher=false"], NEW_STUDENT_OF_TEACHER_TYPE),
        (["--policy.type=smolvla", "--init_from_teacher=false"], NEW_STUDENT_OF_TEACHER_TYPE),
    ],
)
def test_student_of_another_type_is_refused(teachers, image_dataset, tmp_path, capsys, extra, message):
    """A student of another type than its pi0 teacher (a copy of it, or a new one that would keep pi0's
    processors): one line, exit 2, refused at parse time (`hf_reflow.cli.main` in this process)."""
    from hf_reflow import cli

    out = tmp_path / "run"
    assert cli.main(_reflow_args(teachers["pi0"], image_dataset, out, *extra)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-reflow: error: ") and message in lines[0]
    assert not out.exists()
