"""Meta-World multimodal experts, rollouts and LeRobot dataset writing (CPU, no network, ~20 s)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("metaworld")

from hf_reflow.envs import metaworld as mw  # noqa: E402
from hf_reflow.errors import DataError  # noqa: E402

SEEDS = (0, 1, 2, 3)  # episode seeds whose detour sides are right, right, left, left
ONE_PER_SIDE = (0, 2)


# --------------------------------------------------------------------------- geometry


def _segment(a: np.ndarray, b: np.ndarray, n: int = 200) -> np.ndarray:
    return a[None] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None]


def test_straight_path_collides_and_detour_does_not():
    start, target = np.array([0.0, 0.40]), np.array([0.06, 0.66])
    centre = mw.obstacle_centre(start, target)
    np.testing.assert_allclose(centre, (start + target) / 2)

    straight = _segment(start, target)
    assert any(mw.obstacle_collides(p, centre) for p in straight)
    assert mw.obstacle_collides(centre, centre)

    for side in (mw.LEFT, mw.RIGHT):
        via = mw.detour_via_point(start, target, side)
        assert np.linalg.norm(via - centre) == pytest.approx(mw.DETOUR_OFFSET_M)
        assert np.dot(via - centre, target - start) == pytest.approx(0.0, abs=1e-12)  # perpendicular
        assert mw.side_of_line(start, target, via) == side
        path = np.concatenate([_segment(start, via), _segment(via, target)])
        assert not any(mw.obstacle_collides(p, centre) for p in path)

    # Facing +y, left is -x.
    assert (
        mw.detour_via_point([0, 0], [0, 1], mw.LEFT)[0] < 0 < mw.detour_via_point([0, 0], [0, 1], mw.RIGHT)[0]
    )


def test_geometry_rejects_bad_input():
    with pytest.raises(ValueError, match="side must be"):
        mw.detour_via_point([0, 0], [0, 1], 2)
    with pytest.raises(ValueError, match="coincide"):
        mw.detour_via_point([0.1, 0.5], [0.1, 0.5], mw.LEFT)
    with pytest.raises(ValueError, match="radius"):
        mw.obstacle_collides([0, 0], [0, 0], radius=0.0)
    with pytest.raises(ValueError, match="xy"):
        mw.obstacle_collides([0, 0, 0, 0], [0, 0])


# --------------------------------------------------------------------------- experts


@pytest.mark.parametrize("task", ["reach-v3", "push-v3"])  # the other tasks: the next test, on both layout sets
def test_multimodal_expert_succeeds_on_both_sides(task):
    with mw.make_env(task) as env:
        episodes = [mw.rollout_expert(task, seed, env=env) for seed in SEEDS]
    for ep in episodes:
        assert ep.success and not ep.collided, (ep.episode_seed, ep.steps)
        assert ep.states.shape == (ep.steps, mw.STATE_DIM) and ep.states.dtype == np.float32
        assert ep.actions.shape == (ep.steps, mw.ACTION_DIM) and ep.actions.dtype == np.float32
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert ep.side_taken == ep.side
        assert ep.min_obstacle_distance > mw.OBSTACLE_RADIUS_M
        assert ep.steps <= mw.default_max_steps(task)
        assert np.all(ep.states[:, -2:] == ep.states[0, -2:])  # the obstacle stays put in an episode
    assert {ep.side for ep in episodes} == {mw.LEFT, mw.RIGHT}


NEW_DETOUR_TASKS = tuple(t for t in mw.TASKS_MULTIMODAL if t not in ("reach-v3", "push-v3"))
# Per side and layout set, on top of SEEDS (2 per side), which the tests above already run on demo
# (expert) and eval (rollout_policy) layouts. Kept small for CPU time: measured over 100 seeds per
# layout set, every new task's expert succeeds without collision 100 % per side (coffee-push: 56/57
# on the right on eval layouts, a timeout on one layout), so every episode here must succeed.
EPISODES_PER_SIDE = 2


def _seeds_per_side(env: mw.MetaWorldEnv, n: int, start: int) -> list[int]:
    """The first `n` episode seeds >= `start` of each detour side (a reset is cheap next to a rollout)."""
    seeds: dict[int, list[int]] = {mw.LEFT: [], mw.RIGHT: []}
    seed = start
    while min(len(v) for v in seeds.values()) < n:
        env.reset(seed)
        if len(seeds[env.side]) < n:
            seeds[env.side].append(seed)
        seed += 1
    return seeds[mw.LEFT] + seeds[mw.RIGHT]


@pytest.mark.parametrize("task", NEW_DETOUR_TASKS)
def test_new_detour_task_expert_succeeds_on_both_sides_and_layout_sets(task):
    horizon = mw.default_max_steps(task)
    for layout_seed in (mw.DEMO_LAYOUT_SEED, mw.EVAL_LAYOUT_SEED):
        with mw.make_env(task, layout_seed=layout_seed) as env:
            assert env.max_steps == horizon
            seeds = _seeds_per_side(env, EPISODES_PER_SIDE, start=max(SEEDS) + 1)
            for seed in seeds:
                ep = mw.rollout_expert(task, seed, layout_seed=layout_seed, env=env)  # default horizon
                where = (layout_seed, seed, mw.SIDE_NAMES[ep.side], ep.steps)
                assert ep.success and not ep.collided, where
                assert ep.states.shape == (ep.steps, mw.STATE_DIM) and ep.states.dtype == np.float32, where
                assert ep.actions.shape == (ep.steps, mw.ACTION_DIM) and np.all(np.abs(ep.actions) <= 1.0), where
                assert np.all(ep.states[:, -2:] == ep.states[0, -2:]), where  # the obstacle stays put
                assert ep.side_taken == ep.side, where
                assert ep.min_obstacle_distance > mw.OBSTACLE_RADIUS_M, where
                # The first target is far enough from the hand start for the detour to matter.
                assert np.linalg.norm(env.target_xy - env.hand_start_xy) > 0.14, where
                np.testing.assert_allclose(env.target_xy, mw.first_target_xy(task, ep.states[0]), atol=1e-6)


def test_every_detour_task_has_first_target_horizon_and_prompts():
    assert mw.default_max_steps("reach-v3") == mw.default_max_steps("push-v3") == mw.DEFAULT_MAX_STEPS == 120
    assert mw.default_max_steps("pick-place-v3") == mw.DEFAULT_MAX_STEPS  # scripted-only task
    assert len(NEW_DETOUR_TASKS) >= 6
    for task in mw.TASKS_MULTIMODAL:
        source, offset = mw.tasks._FIRST_TARGET[task]
        assert source in ("goal", "object") and len(offset) == 2
        horizon = mw.default_max_steps(task)
        assert horizon == mw.tasks._MAX_STEPS[task] and horizon % 10 == 0 and 1 <= horizon <= mw.MAX_ENV_STEPS
        assert mw.task_prompt(task, "multimodal").endswith("around the obstacle")
        assert not mw.task_prompt(task, "scripted").startswith("solve the")  # a written prompt
    with pytest.raises(ValueError, match="Unknown Meta-World task"):
        mw.default_max_steps("reach-v9")
    # An object-plus-offset target reads obs[4:6] and adds the scripted expert's approach offset.
    obs = np.zeros(mw.OBS_DIM)
    obs[4:6], obs[36:38] = (0.1, 0.7), (0.3, 0.8)
    np.testing.assert_allclose(mw.first_target_xy("window-open-v3", obs), [0.07, 0.67])
    np.testing.assert_allclose(mw.first_target_xy("reach-v3", obs), [0.3, 0.8])
    np.testing.assert_allclose(mw.first_target_xy("push-v3", obs), [0.1, 0.7])


def test_side_and_layout_are_deterministic_per_seed():
    a = mw.rollout_expert("reach-v3", SEEDS[2])
    b = mw.rollout_expert("reach-v3", SEEDS[2])
    assert (a.side, a.layout_index) == (b.side, b.layout_index)
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.actions, b.actions)


@pytest.mark.parametrize("task", mw.TASKS_MULTIMODAL)
def test_scripted_mode_succeeds(task):
    with mw.make_env(task, mode="scripted") as env:
        for seed in SEEDS[:2]:
            ep = mw.rollout_expert(task, seed, mode="scripted", env=env)
            assert ep.success and not ep.collided
            assert ep.states.shape[1] == mw.STATE_DIM


def test_push_hand_starts_at_lower_y_limit():
    with mw.make_env("push-v3") as env:
        state = env.reset(0)
    np.testing.assert_allclose(state[:3], [0.0, 0.40, 0.2], atol=0.01)


def test_eval_layouts_never_overlap_demo_layouts():
    for task in mw.TASKS_MULTIMODAL:
        demo = mw.layout_vectors(task, mw.DEMO_LAYOUT_SEED)
        evaluation = mw.layout_vectors(task, mw.EVAL_LAYOUT_SEED)
        distances = np.linalg.norm(demo[:, None] - evaluation[None], axis=-1)
        assert distances.min() > 1e-6


# --------------------------------------------------------------------------- closed-loop policies


@pytest.mark.parametrize("task", mw.TASKS_MULTIMODAL)
def test_rollout_policy_with_expert_reproduces_expert(task):
    with mw.make_env(task, layout_seed=mw.EVAL_LAYOUT_SEED) as env:
        expert = env.expert()
        results, sides = [], []
        for seed in ONE_PER_SIDE:
            results.append(mw.rollout_policy(env, expert, seed))
            sides.append(env.side)
            assert len(env.hand_goal_distances) == len(env.goal_distances) == env.steps
    with mw.make_env(task, layout_seed=mw.EVAL_LAYOUT_SEED) as other:  # a second env: nothing carried over
        reference = [mw.rollout_expert(task, s, layout_seed=mw.EVAL_LAYOUT_SEED, env=other) for s in ONE_PER_SIDE]
    for result, side, ref in zip(results, sides, reference, strict=True):
        assert result.success and not result.collided
        assert result.side_taken == side == ref.side
        assert result.steps == ref.steps
    assert set(sides) == {mw.LEFT, mw.RIGHT}


def test_straight_line_policy_collides():
    # The stock expert drives straight at its target, through the obstacle's centre.
    with mw.make_env("reach-v3") as env:
        straight = mw.MultimodalExpert("reach-v3", mode="scripted")
        result = mw.rollout_policy(env, straight.scripted_action, SEEDS[0])
    assert result.collided and not result.success
    assert result.min_obstacle_distance < mw.OBSTACLE_RADIUS_M


def test_rollout_policy_rejects_wrong_action_shape():
    with mw.make_env("reach-v3") as env, pytest.raises(ValueError, match="4 values"):
        mw.rollout_policy(env, lambda state: np.zeros(3), SEEDS[0])


def test_unbound_expert_needs_an_episode():
    expert = mw.MultimodalExpert("reach-v3")
    with pytest.raises(RuntimeError, match="start_episode"):
        expert(np.zeros(mw.STATE_DIM))


# --------------------------------------------------------------------------- dataset


def test_write_dataset_round_trips(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "demos"
    summary = mw.write_dataset(root, tasks=["reach-v3"], episodes_per_task=3, repo_id="local/mw_test")
    assert summary["episodes_written"] == 3 and summary["episodes_failed"] == 0
    assert summary["side_counts"]["left"] + summary["side_counts"]["right"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos"]  # no partial folder left behind

    dataset = LeRobotDataset("local/mw_test", root=root)
    assert dataset.num_episodes == 3
    assert len(dataset) == summary["frames"]
    frame = dataset[0]
    assert tuple(frame["observation.state"].shape) == (mw.STATE_DIM,)
    assert tuple(frame["action"].shape) == (mw.ACTION_DIM,)
    assert frame["task"] == "reach the goal around the obstacle"
    assert dataset.features["observation.state"]["names"] == list(mw.STATE_NAMES)
    assert int(frame["detour_side"]) == mw.rollout_expert("reach-v3", 0).side


def test_write_dataset_rolls_out_on_several_layout_sets(tmp_path):
    """layout_sets: set j's episodes on MT1 layout set `layout_seed + j`, their episode seeds going on from set
    j - 1's; a range that reaches the evaluation set is refused before anything is rolled out."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    summary = mw.write_dataset(tmp_path / "two", tasks=["reach-v3"], episodes_per_task=2, layout_sets=2)
    assert (summary["episodes_attempted"], summary["episodes_written"], summary["layout_sets"]) == (4, 4, 2)
    frames = LeRobotDataset(mw.DEFAULT_REPO_ID, root=tmp_path / "two").hf_dataset
    episodes, seeds = [int(e) for e in frames["episode_index"]], [int(s) for s in frames["episode_seed"]]
    assert sorted(set(seeds)) == [0, 1, 2, 3]
    third = episodes.index(2)  # episode seed 2: the first of layout set 1
    first_state = np.asarray(frames[third]["observation.state"])
    np.testing.assert_allclose(first_state, mw.rollout_expert("reach-v3", seeds[third], layout_seed=1).states[0], atol=1e-5)
    assert not np.allclose(first_state, mw.rollout_expert("reach-v3", seeds[third]).states[0], atol=1e-3)
    with pytest.raises(ValueError, match="include the evaluation set"):
        mw.write_dataset(tmp_path / "x", tasks=["reach-v3"], episodes_per_task=1, layout_seed=999, layout_sets=2)
    with pytest.raises(ValueError, match="layout_sets"):
        mw.write_dataset(tmp_path / "y", tasks=["reach-v3"], episodes_per_task=1, layout_sets=0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_write_dataset_with_images(tmp_path):
    with mw.make_env("reach-v3", image_size=64) as env:
        env.reset(0)
        try:
            image = env.render()
        except RuntimeError as exc:
            pytest.skip(f"no offscreen OpenGL here: {exc}")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 0

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "demos"
    mw.write_dataset(root, tasks=["reach-v3"], episodes_per_task=1, images=True, image_size=64)
    frame = LeRobotDataset(mw.DEFAULT_REPO_ID, root=root)[0]
    assert tuple(frame[mw.IMAGE_KEY].shape) == (3, 64, 64)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Valid names:.*reach-v3"):
        mw.make_env("reach-v9")
    with pytest.raises(ValueError, match="mode='scripted'"):
        mw.make_env("pick-place-v3", mode="multimodal")
    with pytest.raises(ValueError, match="Unknown mode"):
        mw.make_env("reach-v3", mode="bimodal")
    with pytest.raises(ValueError, match="Valid names:.*push-v3"):
        mw.write_dataset(tmp_path / "a", tasks=["nope-v3"], episodes_per_task=1)
    with pytest.raises(ValueError, match="episodes_per_task"):
        mw.write_dataset(tmp_path / "b", tasks=["reach-v3"], episodes_per_task=0)
    with pytest.raises(ValueError, match="repeat"):
        mw.write_dataset(tmp_path / "c", tasks=["reach-v3", "reach-v3"], episodes_per_task=1)
    with mw.make_env("reach-v3") as env, pytest.raises(ValueError, match="episode_seed"):
        env.reset(-1)

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        mw.write_dataset(occupied, tasks=["reach-v3"], episodes_per_task=1)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_crash_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mw.dataset, "_add_episode", crash)  # where write_dataset looks it up
    with pytest.raises(KeyboardInterrupt):
        mw.write_dataset(tmp_path / "demos", tasks=["reach-v3"], episodes_per_task=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", ["reach-v3", "push-v3"])
def test_demonstrations_can_hold_past_the_first_success(task):
    """hold_steps: the expert goes on after its first success; success and the first-success step are the
    same as without it, and the hand ends closer to the goal than where it first counted as success."""
    plain = mw.rollout_expert(task, 3)
    with mw.make_env(task, hold_steps=15) as env:
        held = mw.rollout_expert(task, 3, env=env)
        first = env.succeeded_at
        distances = np.asarray(env.goal_distances)
    assert plain.success and held.success and first == plain.steps
    assert held.steps == plain.steps + 15 and np.allclose(held.actions[: plain.steps], plain.actions)
    assert distances[-1] < distances[first - 1] <= 0.05  # the last steps add margin inside the tolerance


def test_expert_aimed_at_the_fingertips_reaches_with_margin_and_leaves_other_tasks_alone():
    """Reach success is measured at the fingertips, 4.5 cm below the observed hand: the stock expert (hand on the
    goal) crosses the 5 cm tolerance almost stopped; aimed at the fingertips it crosses still moving, sooner."""
    from hf_reflow.configs import EXPERT_AIMS

    assert EXPERT_AIMS == mw.EXPERT_AIMS
    with mw.make_env("reach-v3", layout_seed=mw.EVAL_LAYOUT_SEED) as env:
        offset = env.reset(0)[:3] - env._env.tcp_center  # hand minus fingertip centre
        np.testing.assert_allclose(offset[2], mw.HAND_ABOVE_FINGERTIPS_M, atol=1e-3)
    episodes = {}
    for aim in mw.EXPERT_AIMS:
        with mw.make_env("reach-v3", layout_seed=mw.EVAL_LAYOUT_SEED, expert_aim=aim) as env:
            episodes[aim] = [mw.rollout_expert("reach-v3", s, layout_seed=mw.EVAL_LAYOUT_SEED, env=env) for s in SEEDS]
    assert all(ep.success for eps in episodes.values() for ep in eps)
    steps = {aim: np.mean([ep.steps for ep in eps]) for aim, eps in episodes.items()}
    last = {aim: np.mean([np.linalg.norm(ep.actions[-1][:3]) for ep in eps]) for aim, eps in episodes.items()}
    assert steps["fingertips"] < steps["hand"] and last["fingertips"] > last["hand"]  # sooner, still moving
    with mw.make_env("push-v3", expert_aim="fingertips") as tips, mw.make_env("push-v3") as stock:
        a, b = mw.rollout_expert("push-v3", 0, env=tips), mw.rollout_expert("push-v3", 0, env=stock)
    np.testing.assert_array_equal(a.actions, b.actions)  # other tasks: the stock expert
    with pytest.raises(ValueError, match="expert aim must be one of hand, fingertips"):
        mw.MultimodalExpert("reach-v3", aim="nose")


def test_the_space_tells_each_env_by_the_shapes_its_datasets_have(tmp_path):
    from hf_reflow.envs import toy
    from hf_reflow.envs.shapes import ENV_SHAPES

    features = mw.dataset_features()
    with mw.make_env("reach-v3", layout_seed=mw.EVAL_LAYOUT_SEED) as env:
        state = env.reset(0)
    shapes = (tuple(features["observation.state"]["shape"]), tuple(features["action"]["shape"]))
    assert ENV_SHAPES[shapes] == "metaworld" and state.shape == shapes[0]
    meta = json.loads((toy.write_dataset(tmp_path / "toy", episodes=1, seed=0) / "meta" / "info.json").read_text())
    toy_shapes = tuple(tuple(meta["features"][key]["shape"]) for key in ("observation.state", "action"))
    assert ENV_SHAPES[toy_shapes] == "toy"
