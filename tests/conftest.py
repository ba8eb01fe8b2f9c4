"""Shared fixtures: offline environment, tiny LeRobotDatasets and a trained tiny 1-RF teacher."""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_forkserver import ForkServer, free_port  # noqa: F401  (free_port: for the tests)

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# LeRobot logs a long torchcodec traceback when FFmpeg is missing; datasets here have no videos.
logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)

REPO = Path(__file__).resolve().parents[1]
# A small flow_mlp, fast enough that a few hundred steps take seconds on 2 cores.
TINY_POLICY = {"type": "flow_mlp", "chunk_size": 8, "n_action_steps": 4, "hidden_dim": 64, "num_blocks": 2}


def fake_checkpoint(folder: Path, policy_type: str = "flow_mlp", **fields) -> str:
    """A folder holding only a policy's config.json: enough to parse a config that starts from it."""
    import json

    import draccus
    from lerobot.configs.policies import PreTrainedConfig

    import hf_reflow.policies.flow_mlp  # noqa: F401  (registers flow_mlp)

    config = PreTrainedConfig.get_choice_class(policy_type)(**fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(draccus.encode(config, PreTrainedConfig)))
    return str(folder)


def train_config(**overrides):
    """A TrainConfig for tests: tiny policy, tensorboard off, small batches."""
    from hf_reflow.parsing import train_config_from_dict

    data = {"steps": 20, "batch_size": 32, "log_every": 1, "log_with": [], "policy": dict(TINY_POLICY)}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return train_config_from_dict(data)


_CLI = ForkServer(REPO, {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
atexit.register(_CLI.close)
_STOCK = ForkServer(REPO, {**os.environ, "HF_HUB_OFFLINE": "1"}, stock=True)
atexit.register(_STOCK.close)


def assert_same_batch(got: dict, expected: dict) -> None:
    """Two collated batches hold the same keys, dtypes and values (bitwise: both are copies, no arithmetic)."""
    import torch

    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def run_cli(
    *args: str, timeout: int = 300, fsize: int | None = None, env: dict[str, str] | None = None,
    interrupt_when: Path | None = None, nprocs: int = 1,
) -> subprocess.CompletedProcess:
    """Run `hf-reflow ARGS` in its own process: a fork of `cli_forkserver.py` (torch and LeRobot imported once),
    through `hf_reflow.cli.main` as `python -m hf_reflow` runs it; exit code, stdout and stderr as subprocess.run's.
    `fsize`: the process's file-size limit in bytes (a full disk). `env`: the process's whole environment
    (default: this one, offline). `interrupt_when`: Ctrl-C (SIGINT) the process once this path exists.
    `nprocs`: that many processes of one distributed run, started as torchrun starts its workers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} if env is None else env
    return _CLI.run(list(args), env=env, timeout=timeout, fsize=fsize, interrupt_when=interrupt_when, nprocs=nprocs)


def train_tiny_stage(stage: str, output_dir: Path, dataset: Path, teacher: Path) -> tuple[str, dict, dict]:
    """A 5-step `stage` student of `teacher`: (its local checkpoint folder, config.json, reflow.json)."""
    from hf_reflow.refs import CheckpointRef
    from hf_reflow.training.trainer import ReflowTrainer

    cfg = train_config(stage=stage, steps=5, output_dir=str(output_dir), dataset__root=str(dataset),
                       teacher__path=str(teacher), teacher__num_inference_steps=4)  # fmt: skip
    folder = CheckpointRef.of(ReflowTrainer(cfg).train()).local()
    return str(folder), json.loads((folder / "config.json").read_text()), json.loads((folder / "reflow.json").read_text())


def run_stock_python(
    code: str, *argv: str, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -c CODE ARGV...` in a stock LeRobot process that has never imported hf_reflow (a fork of a server
    that imported only torch and LeRobot): what a LeRobot user's own script sees. `env`: its whole environment."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} if env is None else env
    return _STOCK.run([code, *argv], env=env, timeout=timeout)


def run_console_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m hf_reflow ARGS` as a fresh interpreter (for what only a real start exercises)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_reflow", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def write_random_dataset(root: Path, *, state_key: str, action_dim: int, episodes: int = 4, length: int = 20) -> Path:
    """A LeRobotDataset of random frames with a chosen state key and action width (for bad-input tests)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        state_key: {"dtype": "float32", "shape": (4,), "names": None},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": None},
    }
    dataset = LeRobotDataset.create("local/random", 10, features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        for _ in range(length):
            frame = {state_key: rng.normal(size=4).astype(np.float32), "action": rng.normal(size=action_dim).astype(np.float32)}
            dataset.add_frame({**frame, "task": "random"})
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    from hf_reflow.envs import toy

    return toy.write_dataset(tmp_path_factory.mktemp("data") / "toy", episodes=60, seed=0)


@pytest.fixture(scope="session")
def teacher_1rf(tmp_path_factory, toy_dataset) -> Path:
    """A tiny 1-RF trained on the toy data: good enough that its 10-step flow is curved (bimodal)."""
    from hf_reflow.training.trainer import ReflowTrainer

    out = tmp_path_factory.mktemp("runs") / "1rf"
    config = train_config(steps=400, batch_size=64, output_dir=str(out), dataset__root=str(toy_dataset), optim__warmup_steps=20)
    ReflowTrainer(config).train()
    return out


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory) -> Path:
    """A tiny LeRobotDataset with one 64-px camera, a 4-d state, 4-d actions and task strings (VLA policies)."""
    from hf_reflow.testing import tiny_smolvla

    return tiny_smolvla.write_image_dataset(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="session")
def paligemma_home(tmp_path_factory) -> Path:
    """An HF_HOME whose Hub cache holds a small stand-in for the gated `google/paligemma-3b-pt-224` tokenizer."""
    from hf_reflow.testing import tiny_pi0

    return tiny_pi0.write_paligemma_tokenizer(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture(scope="session")
def pi0_env(tmp_path_factory, paligemma_home) -> dict[str, str]:
    """Environment for subprocesses that run pi0 / pi0.5: offline, `paligemma_home` as HF_HOME, tiny sizes."""
    from hf_reflow.testing import tiny_pi0

    hook = tiny_pi0.write_size_hook(tmp_path_factory.mktemp("pi0_size_hook"))
    return tiny_pi0.subprocess_env(paligemma_home, hook)


# `make test` gives whole files to two workers (`--dist loadfile`) in collection order: the longest files go
# first (longest-processing-time-first), so no long file starts last while the other worker idles.
LONGEST_FILES = ("test_hub.py", "test_pi0_cli.py", "test_pipeline.py", "test_trainer.py", "test_vla_metaworld.py",
                 "test_metaworld_env.py", "test_benchmarks.py", "test_space.py")  # fmt: skip


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: tests keep their order within a file
