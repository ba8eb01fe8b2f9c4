"""The detour benchmark as LeRobot's `metaworld_detour` env type: made by LeRobot's `make_env`, the same
episodes as `hf-reflow eval`'s env (`lerobot-eval` itself on a trained stage: tests/test_pipeline.py)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("metaworld")

from lerobot.envs.configs import EnvConfig  # noqa: E402
from lerobot.envs.factory import make_env, make_env_config  # noqa: E402
from lerobot.envs.utils import env_to_policy_features  # noqa: E402

from hf_reflow.envs import metaworld as mw  # noqa: E402
from hf_reflow.envs.lerobot_env import ENV_TYPE, MetaWorldDetourEnvConfig  # noqa: E402
from hf_reflow.errors import ConfigError  # noqa: E402


def _vector_env(**fields):
    return make_env(make_env_config(ENV_TYPE, **fields), n_envs=1)[ENV_TYPE][0]


def test_registered_with_lerobot_with_the_recipes_features():
    assert EnvConfig.get_choice_class(ENV_TYPE) is MetaWorldDetourEnvConfig
    state = env_to_policy_features(make_env_config(ENV_TYPE))
    assert {k: tuple(f.shape) for k, f in state.items()} == {"action": (4,), "observation.state": (41,)}
    vla = env_to_policy_features(make_env_config(ENV_TYPE, obs_type="pixels_agent_pos", image_size=64))
    assert tuple(vla[mw.IMAGE_KEY].shape) == (3, 64, 64)  # the VLA demonstrations' camera key, channel first


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"obs_type": "pixels"}, "env.obs_type must be one of state, pixels_agent_pos, got 'pixels'"),
     ({"task": "fly-v3"}, "env.task 'fly-v3' is not a task of mode 'multimodal'; choose one of reach-v3")],
)  # fmt: skip
def test_bad_fields_are_explained(fields, message):
    with pytest.raises(ConfigError, match=message):
        make_env_config(ENV_TYPE, **fields)


def test_an_episode_is_hf_reflow_evals_episode():
    """Same seed -> same layout and first state as `hf-reflow eval`'s env; the expert's actions end it with
    success at the same step; touching the obstacle terminates without success."""
    seed = 7_000_001
    vec = _vector_env(task="reach-v3")
    with mw.make_env("reach-v3", layout_seed=mw.EVAL_LAYOUT_SEED) as ours:
        first = ours.reset(seed)
        obs, _ = vec.reset(seed=[seed])
        np.testing.assert_allclose(obs["agent_pos"][0], first, atol=1e-6)
        assert vec.call("task_description")[0] == mw.task_prompt("reach-v3")
        assert vec.call("_max_episode_steps")[0] == mw.default_max_steps("reach-v3")
        expert, state, done, steps = ours.expert(), first, False, 0
        while not done:
            action = expert(state)
            state, _, _, done = ours.step(action)
            obs, reward, terminated, truncated, info = vec.step(action[None])
            steps += 1
        assert ours.success and terminated[0] and not truncated[0] and reward[0] == 1.0
        assert info["final_info"]["is_success"][0] and steps == ours.steps
    obs, _ = vec.reset(seed=[seed])
    centre = obs["agent_pos"][0][39:41]
    for _ in range(mw.default_max_steps("reach-v3")):  # straight at the obstacle centre
        hand = obs["agent_pos"][0][:2]
        action = np.zeros((1, 4), np.float32)
        action[0, :2] = np.clip(10 * (centre - hand), -1, 1)
        obs, reward, terminated, truncated, info = vec.step(action)
        if terminated[0]:
            break
    assert terminated[0] and not info["final_info"]["is_success"][0] and info["final_info"]["collided"][0]
    vec.close()


def test_pixels_are_the_demonstrations_camera():
    vec = _vector_env(task="push-v3", obs_type="pixels_agent_pos", image_size=48)
    obs, _ = vec.reset(seed=[3])
    image = obs["pixels"]["corner"]
    assert image.shape == (1, 48, 48, 3) and image.dtype == np.uint8 and image.std() > 0
    vec.close()


def test_hf_reflow_eval_in_lerobots_own_metaworld_env(tmp_path, monkeypatch):
    """A smoke episode in LeRobot's own `metaworld` env (480-px camera + 4-d agent_pos) of a policy trained on
    4-d states: LeRobot's make_env, observation conversion and processors, our paired noise and rows. The env's
    500-step horizon is cut to 12 steps here (rendering 480 px every step is the slow part)."""
    from conftest import train_config, write_random_dataset
    from lerobot.envs import metaworld as lerobot_metaworld

    from hf_reflow.evaluation.lerobot_envs import attach_env_closed_loop
    from hf_reflow.training.trainer import ReflowTrainer

    data = write_random_dataset(tmp_path / "data", state_key="observation.state", action_dim=4)
    final = ReflowTrainer(train_config(output_dir=str(tmp_path / "run"), dataset__root=str(data), steps=2)).train()
    init = lerobot_metaworld.MetaworldEnv.__init__

    def short(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._max_episode_steps = 12

    monkeypatch.setattr(lerobot_metaworld.MetaworldEnv, "__init__", short)
    env_cfg = make_env_config("metaworld", task="metaworld-reach-v3")
    (row,) = attach_env_closed_loop([{"checkpoint": str(final), "num_steps": 2}], env_cfg, episodes=1)
    ((name, task),) = row["per_task"].items()  # LeRobot's suite name for the task
    assert "reach" in name
    assert task["episode_seeds"] == [7_000_000] and row["episodes"] == 1 and row["env_type"] == "metaworld"
    assert row["timeout_rate"] + row["success_rate"] + row["collision_rate"] == pytest.approx(1.0)
    assert 1 <= row["env_steps"] <= 12 and row["passes_per_env_step"] == pytest.approx(2 * row["chunks"] / row["env_steps"])


def test_a_policy_whose_observations_the_env_lacks_is_refused_in_one_line(tmp_path):
    from conftest import fake_checkpoint
    from lerobot.configs.types import FeatureType, PolicyFeature

    from hf_reflow.artifacts.checkpoints import load_config
    from hf_reflow.evaluation.lerobot_envs import check_policy_fits_env

    path = fake_checkpoint(tmp_path / "ckpt", input_features={"observation.state": PolicyFeature(FeatureType.STATE, (7,))})
    with pytest.raises(ConfigError, match=r"reads \{'observation.state': \(7,\)\} but the metaworld_detour env gives"):
        check_policy_fits_env(load_config(path), make_env_config(ENV_TYPE), path)
