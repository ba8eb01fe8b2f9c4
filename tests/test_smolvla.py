"""The SmolVLA adapter pinned to LeRobot 0.6.1's own SmolVLA, on a tiny offline SmolVLM."""

from __future__ import annotations

import json

import pytest
import torch

from hf_reflow import sampling
from hf_reflow.artifacts.checkpoints import load_policy, load_processors
from hf_reflow.configs import DatasetConfig
from hf_reflow.data import make_dataset
from hf_reflow.policies.base import sample_policy
from hf_reflow.policies.factory import adapter_for
from hf_reflow.policies.smolvla import _lerobot_inputs
from hf_reflow.testing import tiny_smolvla


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    return tiny_smolvla.write_smolvlm_folder(tmp_path_factory.mktemp("vlm") / "tiny_smolvlm")


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory):
    return tiny_smolvla.write_image_dataset(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="session")
def smolvla_teacher(tmp_path_factory, tiny_vlm, image_dataset):
    out = tmp_path_factory.mktemp("ckpt") / "smolvla"
    return tiny_smolvla.write_smolvla_checkpoint(out, vlm_dir=tiny_vlm, dataset_root=image_dataset)


def _batch(checkpoint, dataset_root, size: int = 4) -> dict[str, torch.Tensor]:
    """A preprocessed (normalised, tokenised) training batch with a padded chunk at the episode end."""
    policy_config = load_policy(str(checkpoint)).config
    dataset = make_dataset(DatasetConfig(root=str(dataset_root)), policy_config)
    pre, _ = load_processors(str(checkpoint), policy_config)
    items = [dataset[i] for i in (0, 5, 20, 23)[:size]]  # frames 20 and 23 have padded chunk ends
    batch = torch.utils.data.default_collate(items)
    return pre(batch)


def _noise(adapter, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *adapter.action_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_steps", [1, 2, 5, 10])
def test_sampler_equals_lerobot_sample_actions(smolvla_teacher, image_dataset, num_steps):
    policy = load_policy(str(smolvla_teacher))
    policy.config.num_steps = num_steps
    adapter = adapter_for(policy)
    batch = _batch(smolvla_teacher, image_dataset)
    noise = _noise(adapter, 4, seed=num_steps)
    assert noise.shape == (4, 8, 32)  # padded action space
    ours = sample_policy(adapter, batch, noise, num_steps=num_steps).action
    with torch.no_grad():
        theirs = policy.model.sample_actions(*_lerobot_inputs(policy, batch), noise=noise)
    assert ours.shape == theirs.shape == (4, 8, 32)
    assert (ours - theirs).abs().max() <= 1e-5


def test_loss_equals_lerobot_forward(smolvla_teacher, image_dataset):
    policy = load_policy(str(smolvla_teacher))
    adapter = adapter_for(policy)
    batch = _batch(smolvla_teacher, image_dataset)
    assert batch["action_is_pad"].any()  # the masking path is exercised
    noise = _noise(adapter, 4, seed=1)
    t = torch.rand(4, generator=torch.Generator().manual_seed(2))
    action, mask = adapter.action_target(batch)
    assert action.shape == (4, 8, 32)
    ours = adapter.loss(batch, noise, action, t, mask=mask)
    theirs, _ = policy.forward(dict(batch), noise=noise, time=t, reduction="none")
    assert ours.shape == (4,)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


def test_shared_backbone_equals_unshared(smolvla_teacher, image_dataset):
    """Couplings, student loss and its gradients are the same when the VLM prefix is computed once and shared."""
    teacher = adapter_for(load_policy(str(smolvla_teacher)).requires_grad_(False))
    student_policy = load_policy(str(smolvla_teacher))
    student_policy.train()
    student = adapter_for(student_policy)
    batch = _batch(smolvla_teacher, image_dataset)
    noise = _noise(student, 4, seed=3)
    t = torch.rand(4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the student has moved away from the teacher: its state_proj differs
        student_policy.model.state_proj.weight.add_(
            0.1 * torch.randn_like(student_policy.model.state_proj.weight)
        )

    unshared_action = sample_policy(teacher, batch, noise, num_steps=10).action
    unshared_loss = student.loss(batch, noise, unshared_action, t)
    unshared_loss.mean().backward()
    unshared_grads = {n: p.grad.clone() for n, p in student_policy.named_parameters() if p.grad is not None}
    student_policy.zero_grad(set_to_none=True)

    teacher.share_backbone(student)
    assert teacher.model.vlm_with_expert.vlm is student.model.vlm_with_expert.vlm  # no second copy
    context = student.backbone_context(batch)
    with torch.no_grad():
        condition = teacher.encode(batch, context)
        shared_action = sampling.integrate(
            lambda x_t, tt: teacher.velocity(x_t, tt, condition), noise, num_steps=10
        ).action
    shared_loss = student.loss(batch, noise, shared_action, t, condition=student.encode(batch, context))
    shared_loss.mean().backward()
    shared_grads = {n: p.grad for n, p in student_policy.named_parameters() if p.grad is not None}

    assert (shared_action - unshared_action).abs().max() <= 1e-5
    assert torch.allclose(shared_loss, unshared_loss, atol=1e-6, rtol=1e-5)
    assert shared_grads.keys() == unshared_grads.keys()
    assert (
        "model.state_proj.weight" in shared_grads
    )  # the state token's gradient flows through the shared path
    for name, grad in shared_grads.items():
        assert torch.allclose(grad, unshared_grads[name], atol=1e-5, rtol=1e-4), name


def test_share_backbone_refuses_different_vlm(smolvla_teacher, image_dataset, tiny_vlm, tmp_path):
    from hf_reflow.errors import CheckpointError

    other = tiny_smolvla.write_smolvla_checkpoint(
        tmp_path / "other", vlm_dir=tiny_vlm, dataset_root=image_dataset, seed=1
    )
    teacher = adapter_for(load_policy(str(smolvla_teacher)))
    with pytest.raises(CheckpointError, match="VLM weights differ"):
        teacher.share_backbone(adapter_for(load_policy(str(other))))
    unfrozen = tiny_smolvla.write_smolvla_checkpoint(
        tmp_path / "unfrozen", vlm_dir=tiny_vlm, dataset_root=image_dataset, train_expert_only=False
    )
    with pytest.raises(CheckpointError, match="frozen"):
        teacher.share_backbone(adapter_for(load_policy(str(unfrozen))))


def _reflow_args(teacher, dataset_root, out, *extra: str) -> list[str]:
    return [
        "train", "--stage=reflow", f"--teacher.path={teacher}", "--teacher.num_inference_steps=3",
        f"--dataset.root={dataset_root}", "--dataset.repo_id=local/tiny_images", f"--output_dir={out}",
        "--steps=2", "--batch_size=4", "--log_every=1", "--log_with=[]", "--optim.warmup_steps=1", *extra,
    ]  # fmt: skip


STOCK_SMOLVLA = """
import sys, torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
path, root = sys.argv[1], sys.argv[2]
policy = SmolVLAPolicy.from_pretrained(path)
assert policy.config.num_steps == 2, policy.config.num_steps
pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
frame = LeRobotDataset("local/tiny_images", root=root)[0]
obs = {k: v for k, v in frame.items() if k.startswith("observation.")}
obs["task"] = frame["task"]
action = post(policy.select_action(pre(obs)))
assert action.shape == (1, 4) and torch.isfinite(action).all(), action
assert not any(name.startswith("hf_reflow") for name in sys.modules)
print("OK", policy.config.num_steps)
"""


def test_reflow_cli_checkpoint_loads_in_stock_lerobot(smolvla_teacher, image_dataset, tmp_path):

    from conftest import REPO, run_cli, run_stock_python

    out = tmp_path / "2rf"
    recipe = REPO / "recipes" / "smolvla" / "reflow.yaml"  # its policy keys must be SmolVLA fields
    args = _reflow_args(
        smolvla_teacher, image_dataset, out, "--teacher.shared_backbone=true", "--dataset.num_workers=0"
    )
    result = run_cli(args[0], f"--config={recipe}", *args[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    final = out / "pretrained_model"
    assert json.loads((final / "config.json").read_text())["num_steps"] == 2
    assert json.loads((final / "reflow.json").read_text())["k"] == 2
    stock = run_stock_python(STOCK_SMOLVLA, str(final), str(image_dataset))
    assert stock.returncode == 0, stock.stderr[-3000:]
    assert "OK 2" in stock.stdout
    from safetensors.torch import load_file

    stats = sorted(p.name for p in smolvla_teacher.glob("policy_*processor*.safetensors"))
    assert stats and stats == sorted(p.name for p in final.glob("policy_*processor*.safetensors"))
    for name in stats:  # the student re-saves the teacher's normalisation stats
        theirs, ours = load_file(smolvla_teacher / name), load_file(final / name)
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    evaluation = run_cli("eval", f"--policy.path={final}", f"--dataset.root={image_dataset}",
                         "--dataset.repo_id=local/tiny_images", "--num_steps=2,1", "--num_samples=4")  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "straightness" in evaluation.stdout


def test_trainer_shared_backbone_matches_unshared(smolvla_teacher, image_dataset, tmp_path):
    """Two reflow steps give the same student weights with and without the shared VLM prefix."""
    from safetensors.torch import load_file

    from hf_reflow.parsing import parse_train_config
    from hf_reflow.training.trainer import ReflowTrainer

    weights = {}
    for shared in (True, False):
        out = tmp_path / f"shared_{shared}"
        args = _reflow_args(
            smolvla_teacher, image_dataset, out, f"--teacher.shared_backbone={str(shared).lower()}"
        )
        trainer = ReflowTrainer(parse_train_config(args[1:]))
        final = trainer.train()
        assert trainer.shared_backbone is shared
        weights[shared] = load_file(final / "model.safetensors")
    teacher = load_file(smolvla_teacher / "model.safetensors")
    moved = [k for k in teacher if not torch.equal(teacher[k], weights[True][k])]
    assert "model.state_proj.weight" in moved and any("lm_expert" in k for k in moved)
    assert not any(".vlm." in k for k in moved)  # the VLM stays frozen
    for key, value in weights[False].items():
        assert torch.allclose(weights[True][key], value, atol=1e-5), key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--policy.type=flow_mlp", "--policy.hidden_dim=64"],
            "is a smolvla policy, but policy.type is 'flow_mlp'",
        ),
        (["--init_from_teacher=false", "--policy.type=flow_mlp"], "max_action_dim"),
        (
            ["--policy.train_expert_only=false", "--teacher.shared_backbone=true"],
            "teacher.shared_backbone=true needs",
        ),
    ],
)
def test_bad_teacher_fails_before_training(smolvla_teacher, image_dataset, tmp_path, extra, message):
    from conftest import run_cli

    out = tmp_path / "bad"
    result = run_cli(*_reflow_args(smolvla_teacher, image_dataset, out, *extra))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "recipe",
    [
        "smolvla/1rf",
        "smolvla/reflow",
        "smolvla/reflow_3rf",
        "smolvla/distill",
        "pi0/reflow",
        "pi0/distill",
        "pi05/reflow",
        "pi05/distill",
    ],
)
def test_recipes_parse_with_the_guides_defaults(recipe, tmp_path):
    import yaml
    from conftest import REPO, fake_checkpoint

    from hf_reflow.parsing import parse_train_config

    path = REPO / "recipes" / f"{recipe}.yaml"
    policy = yaml.safe_load(path.read_text())["policy"]
    checkpoint = fake_checkpoint(tmp_path / "ckpt", policy["type"])  # the teacher, or the 1-RF's policy.path
    start = [f"--policy.path={checkpoint}"] if "path" in policy else []
    cfg = parse_train_config([f"--config={path}", f"--teacher_model_path={checkpoint}", *start])
    assert cfg.policy.type == policy["type"]
    assert cfg.batch_size == 32 and cfg.policy.train_expert_only is True
    assert cfg.policy.freeze_vision_encoder is True
    if cfg.stage != "flow_matching":
        assert cfg.teacher.path == checkpoint and cfg.teacher.num_inference_steps == 10
        assert cfg.steps == 50_000 and 5e-5 <= cfg.optim.lr <= 1e-4


def test_shared_backbone_with_bf16_vlm(smolvla_teacher, image_dataset):
    """LeRobot loads pretrained SmolVLM weights in bf16 (the rest float32): the shared path handles it."""
    teacher_policy = load_policy(str(smolvla_teacher)).requires_grad_(False)
    student_policy = load_policy(str(smolvla_teacher)).train()
    for policy in (teacher_policy, student_policy):
        policy.model.vlm_with_expert.vlm.to(torch.bfloat16)
    teacher, student = adapter_for(teacher_policy), adapter_for(student_policy)
    batch = _batch(smolvla_teacher, image_dataset)
    noise, t = _noise(student, 4, seed=10), torch.rand(4, generator=torch.Generator().manual_seed(11))
    unshared_action = sample_policy(teacher, batch, noise, num_steps=10).action
    unshared_loss = student.loss(batch, noise, unshared_action, t)
    teacher.share_backbone(student)
    context = student.backbone_context(batch)
    with torch.no_grad():
        condition = teacher.encode(batch, context)
        shared_action = sampling.integrate(
            lambda x_t, s: teacher.velocity(x_t, s, condition), noise, num_steps=10
        ).action
    shared_loss = student.loss(batch, noise, shared_action, t, condition=student.encode(batch, context))
    assert (shared_action - unshared_action).abs().max() <= 1e-2  # bf16 rounding, joint vs cached attention
    assert torch.allclose(shared_loss, unshared_loss, rtol=1e-2, atol=1e-4)
