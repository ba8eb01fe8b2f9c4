"""The built-in flow_mlp policy and its adapter, pinned to LeRobot's own loops and loaders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import run_stock_python

from hf_reflow.artifacts.checkpoints import load_config, load_policy, load_processors
from hf_reflow.errors import CheckpointError, ConfigError
from hf_reflow.policies.base import sample_policy
from hf_reflow.policies.factory import adapter_for, supported_policy_types
from hf_reflow.refs import CheckpointRef, is_repo_id


def _batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.randn(n, 4, generator=g), "action": torch.randn(n, 8, 2, generator=g)}


@pytest.mark.parametrize("num_steps", [1, 2, 10])
def test_our_sampler_equals_lerobot_predict_action_chunk(teacher_1rf, num_steps):
    policy = load_policy(str(teacher_1rf))
    policy.config.num_steps = num_steps
    adapter = adapter_for(policy)
    batch = _batch()
    noise = torch.randn(8, *adapter.action_shape, generator=torch.Generator().manual_seed(1))
    ours = sample_policy(adapter, batch, noise, num_steps=num_steps).action
    theirs = policy.predict_action_chunk(batch, noise=noise)
    assert (ours - theirs).abs().max() <= 1e-5


def test_adapter_loss_equals_policy_forward(teacher_1rf):
    policy = load_policy(str(teacher_1rf))
    adapter = adapter_for(policy)
    batch = _batch()
    batch["action_is_pad"] = torch.zeros(8, 8, dtype=torch.bool)
    batch["action_is_pad"][:, 6:] = True
    noise = torch.randn(8, 8, 2, generator=torch.Generator().manual_seed(2))
    t = torch.rand(8, generator=torch.Generator().manual_seed(3))
    action, mask = adapter.action_target(batch)
    ours = adapter.loss(batch, noise, action, t, mask=mask).mean()
    theirs, _ = policy.forward(batch, noise=noise, time=t)
    assert torch.allclose(ours, theirs, atol=1e-6)


def _fresh_flow_mlp() -> torch.nn.Module:
    """An untrained flow_mlp policy (state (4,), action (2,)) trained for 10 steps: no fixture, no training."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from hf_reflow.policies.flow_mlp import FlowMLPConfig, FlowMLPPolicy

    config = FlowMLPConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (4,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        num_steps=10,
    )
    return FlowMLPPolicy(config)


def test_inference_steps_sets_the_count_for_a_scope_and_restores_it():
    policy = _fresh_flow_mlp()
    adapter = adapter_for(policy)
    with adapter.inference_steps(3) as steps:
        assert steps == adapter.num_steps == policy.config.num_steps == 3  # where LeRobot's loop reads it
        with adapter.inference_steps(None) as kept:  # None: a scope that keeps the count in force
            assert kept == adapter.num_steps == 3
        assert adapter.num_steps == 3
    assert adapter.num_steps == policy.config.num_steps == 10


def test_inference_steps_restores_the_count_on_error():
    adapter = adapter_for(_fresh_flow_mlp())
    with pytest.raises(RuntimeError, match="rollout failed"), adapter.inference_steps(1):
        assert adapter.num_steps == 1
        raise RuntimeError("rollout failed")
    assert adapter.num_steps == 10


STOCK_LOADER = """
import json, sys, torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins
register_third_party_plugins()  # what lerobot-train / lerobot-eval do: finds lerobot_policy_flow_mlp
path = sys.argv[1]
cfg = PreTrainedConfig.from_pretrained(path)
policy = get_policy_class(cfg.type).from_pretrained(path)
pre, post = make_pre_post_processors(cfg, pretrained_path=path)
noise = torch.randn(1, cfg.chunk_size, 2, generator=torch.Generator().manual_seed(0))
batch = pre({"observation.state": torch.tensor([0.1, 0.0, 1.0, 0.02])})
chunk = policy.predict_action_chunk(batch, noise=noise)
action = post(policy.select_action(batch))
print(json.dumps({"type": cfg.type, "num_steps": cfg.num_steps, "chunk": chunk.tolist(), "action_shape": list(action.shape)}))
"""


def test_checkpoint_loads_with_stock_lerobot_in_a_fresh_process(teacher_1rf):
    path = str(CheckpointRef.of(str(teacher_1rf)).local())
    proc = run_stock_python(STOCK_LOADER, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] == "flow_mlp" and result["num_steps"] == 10 and result["action_shape"] == [1, 2]
    # Same noise, same chunk as our own loader + sampler.
    config = load_config(path)
    policy = load_policy(path, config=config)
    pre, _ = load_processors(path, config)
    batch = pre({"observation.state": torch.tensor([0.1, 0.0, 1.0, 0.02])})
    noise = torch.randn(1, config.chunk_size, 2, generator=torch.Generator().manual_seed(0))
    ours = sample_policy(adapter_for(policy), batch, noise, num_steps=config.num_steps).action
    assert (ours - torch.tensor(result["chunk"])).abs().max() <= 1e-5


def test_load_config_equals_lerobot_and_leaves_no_temporary_file(tmp_path, monkeypatch, teacher_1rf):
    import tempfile

    from lerobot.configs.policies import PreTrainedConfig

    path = str(CheckpointRef.of(str(teacher_1rf)).local())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # LeRobot's and ours: temp files land here
    ours = load_config(path)
    assert list(tmp_path.iterdir()) == []  # LeRobot 0.6.1 leaves one tmp*.json per load; we leave none
    theirs = PreTrainedConfig.from_pretrained(path)
    assert type(ours) is type(theirs) and ours == theirs


@pytest.mark.parametrize("saved", [b'{"n_obs_steps": 1}', b"not json", b'["flow_mlp"]', b"\xff\xfe{\x00"])
def test_load_config_of_a_config_without_a_type_says_so(tmp_path, teacher_1rf, saved):
    folder = tmp_path / "ckpt"
    shutil.copytree(CheckpointRef.of(str(teacher_1rf)).local(), folder)
    (folder / "config.json").write_bytes(saved)
    with pytest.raises(CheckpointError, match=r"config.json is missing or not a LeRobot policy config \(no \"type\"\)"):
        load_config(str(folder))


def test_select_action_runs_a_chunk_then_replans(teacher_1rf):
    policy = load_policy(str(teacher_1rf))
    batch = {"observation.state": torch.randn(1, 4)}
    calls = []
    original = policy.predict_action_chunk
    policy.predict_action_chunk = lambda b, noise=None: calls.append(1) or original(b, noise=noise)
    for _ in range(policy.config.n_action_steps + 1):
        assert policy.select_action(batch).shape == (1, 2)
    assert len(calls) == 2  # one chunk per n_action_steps actions


def test_config_and_adapter_errors():
    from lerobot.configs.types import FeatureType, PolicyFeature

    from hf_reflow.policies.flow_mlp import FlowMLPConfig

    with pytest.raises(ValueError, match="n_action_steps must be in 1..chunk_size"):
        FlowMLPConfig(chunk_size=4, n_action_steps=8)
    with pytest.raises(ValueError, match="needs an 'observation.state' input feature"):
        FlowMLPConfig(output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))}).validate_features()
    assert "flow_mlp" in supported_policy_types()

    class Foreign(torch.nn.Module):
        config = type("C", (), {"type": "act"})()

    with pytest.raises(ConfigError, match="'act' has no hf-reflow adapter; supported types: flow_mlp, pi0, pi05, smolvla"):
        adapter_for(Foreign())


def test_registered_adapter_is_found_by_type():
    """`register_adapter` (the name the error points to) adds a policy type without touching the factory."""
    from hf_reflow.policies import factory
    from hf_reflow.policies.flow_mlp.adapter import FlowMLPAdapter

    class ActAdapter(FlowMLPAdapter):
        policy_type = "act"

    factory.register_adapter(ActAdapter)
    try:
        assert "act" in factory.supported_policy_types() and factory.adapter_class("act") is ActAdapter
    finally:
        factory._REGISTERED.pop("act")


def test_checkpoint_resolution(tmp_path, teacher_1rf):
    ref = CheckpointRef.of(str(teacher_1rf))  # a run dir names its final pretrained_model/
    assert ref.is_local and ref.local().name == "pretrained_model" and ref.repo_id is None
    assert ref.config()["type"] == "flow_mlp"
    hub = CheckpointRef.of("user/model-2rf", revision="v1")  # no request until the folder is needed
    assert not hub.is_local and hub.repo_id == "user/model-2rf" and hub.revision == "v1"
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):  # a Hub id, offline, not cached
        hub.local()
    with pytest.raises(CheckpointError, match="teacher.path '.*' holds no checkpoint"):
        CheckpointRef.of(str(tmp_path), flag="teacher.path")
    for not_a_ref in ("not a path/or/repo", "local/dataset", "a/b/c", ""):
        with pytest.raises(CheckpointError, match="no checkpoint at|is empty"):
            CheckpointRef.of(not_a_ref)


def test_one_repo_id_rule():
    assert is_repo_id("alice/mw-2rf") and is_repo_id("org.x/name_1.v2")
    for value in ("alice", "a/b/c", "local/data", "alice/bad name", "-a/b", None, 3):
        assert not is_repo_id(value), value


def test_a_pushed_folder_remembers_its_repo(tmp_path, teacher_1rf):
    import shutil

    folder = shutil.copytree(CheckpointRef.of(str(teacher_1rf)).local(), tmp_path / "ckpt")
    (folder / "hub.json").write_text('{"repo_id": "alice/mw-1rf", "commit": "' + "a" * 40 + '"}')
    ref = CheckpointRef.of(str(folder))
    assert (ref.repo_id, ref.commit, ref.folder) == ("alice/mw-1rf", "a" * 40, folder)
