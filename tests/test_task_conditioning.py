"""flow_mlp reads its task: vocabulary from the dataset, saved in config.json, restored by stock LeRobot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_stock_python, train_config

from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors
from hf_reflow.errors import ConfigError
from hf_reflow.refs import CheckpointRef

TASKS = ("push left", "push right")  # same states, opposite actions: only the task tells them apart


def _two_task_dataset(root: Path) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    dataset = LeRobotDataset.create("local/two_tasks", 10, features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for episode in range(8):
        task = TASKS[episode % 2]
        sign = -1.0 if task == "push left" else 1.0
        for _ in range(20):
            state = rng.normal(size=4).astype(np.float32)
            action = np.array([sign, 0.5 * sign], dtype=np.float32) + 0.01 * rng.normal(size=2).astype(np.float32)
            dataset.add_frame({"observation.state": state, "action": action, "task": task})
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def two_task_policy(tmp_path_factory) -> str:
    from hf_reflow.training.trainer import ReflowTrainer

    root = _two_task_dataset(tmp_path_factory.mktemp("data") / "two_tasks")
    out = tmp_path_factory.mktemp("runs") / "tc"
    cfg = train_config(steps=150, batch_size=64, output_dir=str(out), dataset__root=str(root), optim__warmup_steps=10)
    return str(CheckpointRef.of(ReflowTrainer(cfg).train()).local())


def _chunk(path: str, task: str, num_steps: int = 4) -> torch.Tensor:
    config = load_config(path)
    policy = load_policy(path, config=config)
    pre, post = load_processors(path, config)
    policy.config.num_steps = num_steps
    batch = pre({"observation.state": torch.zeros(4), "task": task})
    noise = torch.zeros(1, config.chunk_size, 2)
    return post(policy.predict_action_chunk(batch, noise=noise))


def test_vocabulary_comes_from_the_dataset_and_the_task_steers_the_chunk(two_task_policy):
    assert load_config(two_task_policy).tasks == list(TASKS)  # task_index order
    left, right = _chunk(two_task_policy, "push left"), _chunk(two_task_policy, "push right")
    assert left[..., 0].mean() < -0.5 and right[..., 0].mean() > 0.5


def test_unknown_or_missing_task_is_a_one_line_error_naming_the_known_ones(two_task_policy):
    with pytest.raises(ConfigError, match=r"unknown task 'open the door'.*push left"):
        _chunk(two_task_policy, "open the door")
    policy = load_policy(two_task_policy)
    with pytest.raises(ConfigError, match="has no 'task'"):
        policy.predict_action_chunk({"observation.state": torch.zeros(1, 4)})


def test_single_task_dataset_or_opt_out_gives_a_task_blind_policy(tmp_path, toy_dataset):
    from hf_reflow.training.trainer import ReflowTrainer

    out = ReflowTrainer(train_config(steps=2, output_dir=str(tmp_path / "a"), dataset__root=str(toy_dataset))).train()
    assert load_config(str(out)).tasks == []
    root = _two_task_dataset(tmp_path / "two")
    cfg = train_config(steps=2, output_dir=str(tmp_path / "b"), dataset__root=str(root), policy__task_conditioning=False)
    assert load_config(str(ReflowTrainer(cfg).train())).tasks == []


STOCK = """
import json, sys, torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins
register_third_party_plugins()  # finds the lerobot_policy_flow_mlp plugin, as lerobot-eval does
path = sys.argv[1]
cfg = PreTrainedConfig.from_pretrained(path)
policy = get_policy_class(cfg.type).from_pretrained(path)
pre, post = make_pre_post_processors(cfg, pretrained_path=path)
policy.config.num_steps = 4
out = {"tasks": cfg.tasks}
for task in cfg.tasks:
    batch = pre({"observation.state": torch.zeros(4), "task": task})
    out[task] = post(policy.predict_action_chunk(batch, noise=torch.zeros(1, cfg.chunk_size, 2))).tolist()
print(json.dumps(out))
"""


def test_stock_lerobot_restores_the_vocabulary_through_the_plugin(two_task_policy):
    proc = run_stock_python(STOCK, two_task_policy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tasks"] == list(TASKS)
    for task in TASKS:
        torch.testing.assert_close(torch.tensor(result[task]), _chunk(two_task_policy, task), atol=1e-5, rtol=0)
