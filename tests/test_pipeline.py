"""The k-RF pipeline on Meta-World end to end (tiny), its evaluation, and its bad inputs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli, run_stock_python

from hf_reflow.metrics import COLUMNS

TINY = str(REPO / "recipes" / "metaworld" / "tiny.yaml")
ROW_COLUMNS = {
    "seed", "name", "stage", "k", "num_steps", "checkpoint", "straightness", "error_vs_10step", "error_vs_data", "latency_ms",
    "prefix_ms",
    "episodes", "successes", "success_rate", "collision_rate", "stall_rate", "timeout_rate", "left_share",
    "side_switches", "mean_steps", "per_task", "n_action_steps", "policy_n_action_steps", "passes_per_env_step",
    "ms_per_env_step", "hand_speed", "chunk_jump", "action_change", "miss_closest_goal_m", "miss_final_goal_m",
    "miss_near_goal_steps", "miss_near_goal_reversals", "env_type", "env_mode", "first_episode_seed",
}  # fmt: skip
SUMMARY_COLUMNS = {
    "name", "k", "stage", "num_steps", "seeds", "success_rate", "success_ci95", "ci_method", "collision_rate", "stall_rate",
    "timeout_rate", "left_share", "side_switches", "diff_vs_reference", "diff_ci95", "mean_steps", "straightness", "error_vs_10step", "error_vs_data", "latency_ms", "prefix_ms", "episodes",
    "n_action_steps", "passes_per_env_step", "ms_per_env_step", "hand_speed_vs_reference", "chunk_jump",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={out}", "--rollout_layout_sets=2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_tiny_pipeline_writes_every_stage_and_column(tiny_run):
    out, stdout = tiny_run
    results = json.loads((out / "results.json").read_text())
    names = [row["name"] for row in results["rows"]]
    # distilled and redistilled: their own step count only; the shortcut and meanflow students at every step count
    assert names == ["1-RF", "1-RF", "2-RF", "2-RF", "2-RF distilled", "2-RF redistilled", "2-RF shortcut",
                     "2-RF shortcut", "2-RF meanflow", "2-RF meanflow"]
    for row in results["rows"]:
        assert set(row) >= ROW_COLUMNS, ROW_COLUMNS - set(row)
        assert set(row) <= set(COLUMNS), set(row) - set(COLUMNS)  # every column is named in hf_reflow.metrics
        assert all(set(task) <= set(COLUMNS) for task in row["per_task"].values())
        assert row["episodes"] == 2 and set(row["per_task"]) == {"reach-v3", "push-v3"}
        assert sum(row[f"{o}_rate"] for o in ("success", "collision", "stall", "timeout")) == pytest.approx(1.0)
    for entry in results["summary"]:
        assert set(entry) >= SUMMARY_COLUMNS, SUMMARY_COLUMNS - set(entry)
        low, high = entry["success_ci95"]
        assert 0.0 <= low <= entry["success_rate"] <= high <= 1.0
    assert "2-RF distilled" in stdout and "report:" in stdout  # the table and the report path are printed
    report_md = (out / "report.md").read_text()
    assert report_md.count("| 2-RF |") == 8  # summary + per-task + diagnostics tables, 2 step counts
    assert "speed-up at equal success:" in report_md and "speed-up at equal success:" in stdout
    config = json.loads((out / "seed0" / "1rf" / "pretrained_model" / "config.json").read_text())
    assert len(config["tasks"]) == 2  # two tasks in the demos: the policy reads its instruction
    assert (out / "report.png").stat().st_size > 1000


def test_each_stage_is_a_stock_checkpoint_with_lineage(tiny_run):
    out, _ = tiny_run
    index = json.loads((out / "pipeline.json").read_text())
    assert [s["name"] for s in index["stages"]] == ["1-RF", "2-RF", "2-RF distilled", "2-RF redistilled", "2-RF shortcut",
                                                    "2-RF meanflow"]  # fmt: skip
    expected = {"1-RF": ("flow_matching", 10), "2-RF": ("reflow", 2), "2-RF distilled": ("distill", 1),
                "2-RF redistilled": ("redistill", 1), "2-RF shortcut": ("shortcut", 1), "2-RF meanflow": ("meanflow", 1)}
    for stage in index["stages"]:
        checkpoint = out / stage["path"]
        config = json.loads((checkpoint / "config.json").read_text())
        info = json.loads((checkpoint / "reflow.json").read_text())
        assert (info["stage"], config["num_steps"]) == expected[stage["name"]]
    reflow_info = json.loads((out / index["stages"][1]["path"] / "reflow.json").read_text())
    assert Path(reflow_info["teacher"]).resolve() == (out / index["stages"][0]["path"]).resolve()
    stored = json.loads((out / "seed0" / "couplings" / "2rf" / "couplings.json").read_text())
    assert stored["num_couplings"] == 1000 and Path(stored["teacher"]).resolve() == Path(reflow_info["teacher"]).resolve()
    assert (out / index["dataset"]["root"] / "meta" / "info.json").is_file()


def test_redistill_learns_at_the_distilled_students_closed_loop_states(tiny_run):
    """`redistill`: the 2-RF distilled student acts on the demonstrations' layouts and, with `rollout_layout_sets=2`,
    as often on the next training layout set (every episode kept); the 2-RF's couplings are made at those states,
    and a one-step student of the 2-RF is trained there at t = 1."""
    out, stdout = tiny_run
    states, student = out / "seed0" / "states" / "2rf-distill", out / "seed0" / "2rf-distill" / "pretrained_model"
    assert f"episodes per task on each of 2 layout sets of {student} -> {states}" in stdout  # the student acted
    assert json.loads((states / "meta" / "info.json").read_text())["total_episodes"] == 24  # 6 per task and set, all kept
    record = json.loads((states.parent / "2rf-distill.json").read_text())
    assert (record["layout_seed"], record["layout_sets"], record["episodes_attempted"]) == (0, 2, 24)
    assert record["weights_sha256"] == hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest()
    train = json.loads((out / "seed0" / "2rf-redistill" / "train_config.json").read_text())
    assert (train["stage"], train["dataset"]["root"]) == ("redistill", str(states))
    couplings = json.loads((out / "seed0" / "couplings" / "2rf-redistill" / "couplings.json").read_text())
    assert couplings["dataset_root"] == str(states)
    assert Path(couplings["teacher"]).resolve() == (out / "seed0" / "2rf" / "pretrained_model").resolve()
    info = json.loads((out / "seed0" / "2rf-redistill" / "pretrained_model" / "reflow.json").read_text())
    assert (info["k"], info["distilled"], info["time_sampler"]) == (2, True, "fixed_t1")


def test_closed_loop_states_are_made_again_for_other_weights(tiny_run, tmp_path):
    """States are made once per policy weights: the same weights reuse them, a retrained policy's are made again."""
    from hf_reflow.parsing import parse_pipeline_config
    from hf_reflow.pipeline import chain, write_closed_loop_states

    out, _ = tiny_run
    cfg = parse_pipeline_config([f"--config={TINY}", "--data.tasks=[reach-v3]", "--data.episodes=1"])
    stage, root = chain(cfg.stages)[3], tmp_path / "states" / "x"
    first, second = (str(out / "seed0" / name / "pretrained_model") for name in ("2rf-distill", "2rf"))
    assert write_closed_loop_states(cfg, first, root, 0, stage)
    assert not write_closed_loop_states(cfg, first, root, 0, stage)  # the same weights: reused
    assert write_closed_loop_states(cfg, second, root, 0, stage)  # other weights: made again
    assert json.loads((tmp_path / "states" / "x.json").read_text())["policy"] == second


def test_each_stage_knows_its_teacher_and_the_policy_whose_states_it_trains_at():
    from hf_reflow.parsing import parse_pipeline_config
    from hf_reflow.pipeline import chain, states_actor, states_repos

    kinds = ["flow_matching", "reflow", "distill", "redistill", "reflow", "distill"]
    stages = chain(kinds)
    assert [(s.name, s.teacher) for s in stages] == [("1rf", None), ("2rf", "1rf"), ("2rf-distill", "2rf"),
                                                     ("2rf-redistill", "2rf"), ("3rf", "2rf"), ("3rf-distill", "3rf")]  # fmt: skip
    for states, expected in (("demonstrations", [None, None, None, "2rf-distill", None, None]),
                             ("closed_loop", [None, "1rf", "2rf", "2rf-distill", "2rf", "3rf"])):  # fmt: skip
        cfg = parse_pipeline_config([f"--config={TINY}", f"--stages=[{','.join(kinds)}]", f"--coupling_states={states}"])
        assert [states_actor(cfg, s) for s in stages] == expected
        repos = [f"you/mw-{s.name}" for s in stages]
        assert states_repos(cfg, repos) == {a: f"you/mw-{a}-states" for a in sorted(set(expected) - {None})}


def test_rerun_skips_finished_stages(tiny_run):
    out, _ = tiny_run
    weights = sorted(out.glob("seed0/*/pretrained_model/model.safetensors"))
    before = [p.stat().st_mtime_ns for p in weights]
    result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={out}", "--rollout_layout_sets=2", "--eval.workers=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("finished, skipping") == 6  # every stage of the tiny chain
    assert "reusing it" in result.stdout and "closed loop" not in result.stdout  # eval cached too
    assert [p.stat().st_mtime_ns for p in weights] == before


def test_a_moved_run_reruns_without_training_or_evaluating_again(tiny_run, tmp_path):
    """A finished run moved elsewhere (its old paths gone) reruns as itself: each stage finds its teacher, frames
    and couplings by the content hashes its `train_config.json` recorded, and the evaluation cache holds."""
    out, _ = tiny_run
    moved, away = tmp_path / "moved", out.with_name(out.name + "-away")
    shutil.copytree(out, moved, symlinks=True)
    out.rename(away)
    try:
        result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={moved}", "--rollout_layout_sets=2", "--eval.workers=1")
    finally:
        away.rename(out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("finished, skipping") == 6 and "closed loop" not in result.stdout
    rows, before = (json.loads((run / "results.json").read_text())["rows"] for run in (moved, out))
    assert [{**r, "checkpoint": None} for r in rows] == [{**r, "checkpoint": None} for r in before]
    assert all(Path(r["checkpoint"]).is_relative_to(moved) for r in rows)  # the rows name where the stages are now


def test_from_run_links_what_a_lever_leaves_unchanged_and_retrains_the_rest(tiny_run, tmp_path):
    """A paired lever on the distilled student (`--distill.steps`) from a finished run: its datasets, the 1-RF,
    2-RF, shortcut and meanflow students and the couplings they were made from are hard-linked (evaluations
    reused); the distilled student and the redistilled one (trained at its states) are trained again; the
    finished run is left as it was."""
    out, _ = tiny_run
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink())
    before = {p: p.stat().st_mtime_ns for p in files}
    lever = tmp_path / "lever"
    result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={lever}", "--rollout_layout_sets=2", "--eval.workers=1",
                     f"--from_run={out}", "--distill.steps=21")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    linked = re.findall(r"seed 0 (.+?): linked from", result.stdout)
    assert linked == ["1-RF", "2-RF", "2-RF shortcut", "2-RF meanflow"]
    assert re.findall(r"seed 0 (.+?) \(\w+\): training", result.stdout) == ["2-RF distilled", "2-RF redistilled"]
    assert result.stdout.count("couplings linked from") == 4  # 2-RF, distilled, shortcut, meanflow (redistill's: new states)
    assert result.stdout.count("linked from") == 4 + 4 + 2  # stages, couplings, the two datasets
    weights = "seed0/2rf/pretrained_model/model.safetensors"
    assert (lever / weights).stat().st_ino == (out / weights).stat().st_ino  # a hard link, no second copy
    assert (lever / "data" / "demos.json").read_text() == (out / "data" / "demos.json").read_text()  # its summary too
    ours, theirs = (json.loads((run / "results.json").read_text())["rows"] for run in (lever, out))
    by_name = lambda rows, name: [{**r, "checkpoint": None} for r in rows if r["name"] == name]  # noqa: E731
    assert by_name(ours, "2-RF shortcut") == by_name(theirs, "2-RF shortcut")  # its evaluation reused
    assert json.loads((lever / "seed0/2rf-distill/train_config.json").read_text())["steps"] == 21
    assert {p: p.stat().st_mtime_ns for p in files} == before  # nothing of the finished run was written


def test_from_run_must_be_another_pipeline_run(tiny_run, tmp_path):
    out, _ = tiny_run
    for source, expected in ((tmp_path, "holds no pipeline run"), (out, "is this run's output_dir")):
        result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={out}", "--rollout_layout_sets=2", f"--from_run={source}")
        assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_different_recipe_in_the_same_dir_is_refused(tiny_run):
    out, _ = tiny_run
    result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={out}", "--rollout_layout_sets=2", "--flow_matching.steps=41")
    assert result.returncode == 2
    assert (
        "different recipe" in result.stderr
        and "differs in flow_matching)" in result.stderr
        and "--force" in result.stderr
    )
    assert "Traceback" not in result.stderr
    other_states = run_cli("pipeline", f"--config={TINY}", f"--output_dir={out}")  # rollout_layout_sets 1, not 2
    assert other_states.returncode == 2 and "differs in rollout_layout_sets)" in other_states.stderr


def test_eval_cli_runs_metaworld_closed_loop(tiny_run, tmp_path):
    out, _ = tiny_run
    output = tmp_path / "eval.json"
    result = run_cli(
        "eval", f"--policy.path={out / 'seed0' / '2rf'}", f"--dataset.root={out / 'data' / 'heldout'}",
        "--num_steps=1", "--env=metaworld", "--tasks=reach-v3", "--episodes=2", "--workers=1", f"--output={output}",
        "--n_action_steps=4,2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(output.read_text())
    assert [row["n_action_steps"] for row in rows] == [4, 2] and all(r["policy_n_action_steps"] == 4 for r in rows)
    for row, n in zip(rows, (4, 2), strict=True):
        assert row["episodes"] == 2 and "success_rate" in row and "left_share" in row
        steps = row["env_steps"]
        assert row["chunks"] >= steps / n and row["passes_per_env_step"] == row["chunks"] / steps  # 1 pass a chunk
        assert row["hand_speed"] > 0 and row["chunk_jump"] >= 0
    assert rows[1]["chunks"] > rows[0]["chunks"]  # re-planning every 2 actions makes more chunks


def test_eval_in_a_lerobot_env_pairs_with_our_own_closed_loop(tiny_run, tmp_path):
    """`hf-reflow eval --env.type=metaworld_detour` (LeRobot's make_env, preprocess_observation and env
    processors) plays the same episodes with the same noise as `--env=metaworld`: the same outcome per episode."""
    out, _ = tiny_run
    common = ["eval", f"--policy.path={out / 'seed0' / '2rf'}", f"--dataset.root={out / 'data' / 'heldout'}",
              "--num_steps=1", "--episodes=3", "--num_samples=8"]  # fmt: skip
    ours = run_cli(*common, "--env=metaworld", "--tasks=[push-v3]", "--workers=1", f"--output={tmp_path / 'a.json'}")
    theirs = run_cli(*common, "--env.type=metaworld_detour", "--env.task=push-v3", f"--output={tmp_path / 'b.json'}")
    assert ours.returncode == 0 and theirs.returncode == 0, (ours.stderr + theirs.stderr)[-3000:]
    (a,), (b,) = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert b["env_type"] == "metaworld_detour" and list(b["per_task"]) == ["metaworld_detour"]
    mine, lerobots = a["per_task"]["push-v3"], b["per_task"]["metaworld_detour"]
    assert lerobots["episode_seeds"] == mine["episode_seeds"] == [7_000_000, 7_000_001, 7_000_002]
    assert lerobots["episode_success"] == mine["episode_success"] and b["env_steps"] == a["env_steps"]
    assert b["chunks"] == a["chunks"] and b["passes_per_env_step"] == a["passes_per_env_step"]


def test_train_evaluates_in_a_lerobot_env_during_training_without_changing_the_weights(tiny_run, tmp_path):
    """lerobot-train's --env.* + --env_eval_freq + --eval.n_episodes: an evaluation line (and tracker metrics)
    every N steps and at the end; training's random generators are restored, so the weights equal a run without."""
    from safetensors.torch import load_file

    out, _ = tiny_run
    args = ["train", f"--dataset.root={out / 'data' / 'demos'}", "--steps=4", "--batch_size=8", "--log_with=[]",
            "--policy.hidden_dim=16", "--policy.num_blocks=1", "--policy.chunk_size=4", "--policy.n_action_steps=2"]  # fmt: skip
    evaluated = run_cli(*args, f"--output_dir={tmp_path / 'a'}", "--env.type=metaworld_detour", "--env.task=reach-v3",
                        "--env_eval_freq=2", "--eval.n_episodes=1")  # fmt: skip
    plain = run_cli(*args, f"--output_dir={tmp_path / 'b'}")
    assert evaluated.returncode == 0 and plain.returncode == 0, (evaluated.stderr + plain.stderr)[-3000:]
    lines = [line for line in evaluated.stdout.splitlines() if line.startswith("eval step:")]
    assert [line.split()[1] for line in lines] == ["step:2", "step:4"], evaluated.stdout
    assert all(re.search(r"pc_success:[\d.]+ n_episodes:1 ", line) for line in lines)
    a, b = (load_file(str(tmp_path / run / "pretrained_model" / "model.safetensors")) for run in ("a", "b"))
    assert all(a[k].equal(b[k]) for k in a) and not list(tmp_path.joinpath("a").glob(".eval-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--env.task=push-v3"], "--env.* settings need --env.type"),
     (["--env.type=nowhere"], "nowhere"),
     (["--env.type=metaworld_detour", "--env=metaworld"], "both name an env; keep one"),
     (["--env.type=metaworld_detour", "--env.task=fly-v3"], "env.task 'fly-v3' is not a task of mode")],
)  # fmt: skip
def test_eval_lerobot_env_bad_input(tiny_run, args, message):
    out, _ = tiny_run
    result = run_cli("eval", f"--policy.path={out / 'seed0' / '2rf'}", f"--dataset.root={out / 'data' / 'heldout'}", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_eval_on_a_task_the_policy_never_saw_is_one_line_naming_the_known_ones(tiny_run, tmp_path):
    out, _ = tiny_run
    result = run_cli(
        "eval", f"--policy.path={out / 'seed0' / '2rf'}", f"--dataset.root={out / 'data' / 'heldout'}",
        "--num_steps=1", "--env=metaworld", "--tasks=sweep-v3", "--episodes=1", "--workers=1",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("hf-reflow: error:")]
    assert len(lines) == 1 and "unknown task" in lines[0] and "it knows" in lines[0]
    assert "reach the goal around the obstacle" in lines[0]


def test_parallel_rollouts_match_serial(tiny_run):
    """Episodes are seeded per episode, so spreading them over processes changes nothing."""
    from hf_reflow.evaluation import closed_loop

    out, _ = tiny_run
    checkpoint = str(out / "seed0" / "1rf" / "pretrained_model")
    jobs = [
        closed_loop.RolloutJob(checkpoint, num_steps, "reach-v3", closed_loop.episode_seeds(2), max_steps=40) for num_steps in (1, 2)
    ]
    assert closed_loop.run_jobs(jobs, workers=2) == closed_loop.run_jobs(jobs, workers=1)


def test_space_rollout_is_the_evaluations_episode(tiny_run):
    """The Space's closed-loop rollout and `hf-reflow eval` run one episode runner: the same checkpoint, step
    count and episode seed give the same episode (outcome, length and hand path)."""
    from hf_reflow.artifacts.checkpoints import CheckpointCache
    from hf_reflow.evaluation import closed_loop, compare

    out, _ = tiny_run
    checkpoint, seed = str(out / "seed0" / "2rf" / "pretrained_model"), closed_loop.episode_seeds(1)[0]
    cache = CheckpointCache()
    (record,) = closed_loop.run_job(closed_loop.RolloutJob(checkpoint, 1, "push-v3", (seed,), max_steps=30), cache)
    shown = compare.rollout(cache.get(checkpoint), "metaworld", "push-v3", num_steps=1, seed=seed, max_steps=30, frames=False)
    assert (shown.success, shown.collided, shown.steps) == (record["success"], record["collided"], record["steps"])
    with cache.get(checkpoint).adapter.inference_steps(1), closed_loop.metaworld_episodes(
        cache.get(checkpoint), "push-v3", max_steps=30
    ) as episodes:
        episodes.play(seed)
        np.testing.assert_allclose(shown.hand_xy, np.stack(episodes.controller.hand)[:, :2], atol=1e-6)


def test_lerobot_eval_evaluates_a_stage_in_the_detour_env(tiny_run, tmp_path):
    """Stock `lerobot-eval` (a LeRobot process that finds both plugins) runs a 2-RF at its step count on the
    `metaworld_detour` env with the flags the pipeline's rows record for the model card."""
    out, _ = tiny_run
    row = next(r for r in json.loads((out / "results.json").read_text())["rows"] if r["name"] == "2-RF")
    assert (row["env_type"], row["env_mode"], row["first_episode_seed"]) == ("metaworld_detour", "multimodal", 7_000_000)
    args = [f"--policy.path={out / 'seed0' / '2rf' / 'pretrained_model'}", "--policy.num_steps=2",
            "--env.type=metaworld_detour", "--env.task=push-v3", f"--seed={row['first_episode_seed']}",
            "--eval.n_episodes=2", "--eval.batch_size=1", f"--output_dir={tmp_path / 'eval'}", "--policy.device=cpu"]
    result = run_stock_python("from lerobot.scripts.lerobot_eval import main; main()", *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2 and 0.0 <= info["overall"]["pc_success"] <= 100.0


def test_expert_through_the_eval_path_reproduces_its_success():
    """The closed-loop harness scores the multimodal expert at 100 %, both sides used, no collision (the default
    recipe's tasks; every task's expert on evaluation layouts: tests/test_metaworld_env.py)."""
    from hf_reflow.envs import metaworld
    from hf_reflow.evaluation import closed_loop

    for task in ("reach-v3", "push-v3"):
        episodes = []
        with metaworld.make_env(task, layout_seed=metaworld.EVAL_LAYOUT_SEED) as env:
            for seed in closed_loop.episode_seeds(10):
                result = metaworld.rollout_policy(env, env.expert(), seed)
                outcome = closed_loop.classify_episode(np.zeros((1, 3)), success=result.success, collided=result.collided)
                episodes.append({"episode_seed": seed, "success": result.success, "collided": result.collided,
                                 "outcome": outcome, "side_taken": result.side_taken, "steps": result.steps,
                                 "side_switches": 0})  # fmt: skip
        summary = closed_loop.summarise(episodes)
        assert summary["successes"] == summary["episodes"] and not any(e["collided"] for e in episodes)
        assert 0.0 < summary["left_share"] < 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.tasks=[reach-v3,fly-v3]"], "Valid names: reach-v3, push-v3"),
        (["--data.episodes=0"], "data.episodes"),
        (["--stages=[reflow]"], "start with flow_matching"),
        (["--stages=[flow_matching,reflow,redistill]"], "put a distill stage before it"),
        (["--reflow.no_such_key=1"], "stage reflow: unknown config key(s) no_such_key"),
        (["--eval.num_steps=[0]"], "eval.num_steps"),
        (["--rollout_layout_sets=0"], "rollout_layout_sets must be >= 1"),
        (["--rollout_layout_sets=65"], "rollout_layout_sets"),
    ],
)
def test_pipeline_bad_input(tmp_path, args, message):
    out = tmp_path / "run"
    result = run_cli("pipeline", f"--config={TINY}", f"--output_dir={out}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()  # nothing half-written


def test_eval_refuses_a_checkpoint_with_the_wrong_shapes(tmp_path, teacher_1rf, toy_dataset):
    result = run_cli(
        "eval", f"--policy.path={teacher_1rf}", f"--dataset.root={toy_dataset}", "--num_steps=1", "--env=metaworld",
        "--episodes=1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "Meta-World env gives a (41,) state" in result.stderr and "Traceback" not in result.stderr


def test_dataset_metaworld_cli(tmp_path):
    root = tmp_path / "demos"
    result = run_cli("dataset", "metaworld", "--tasks=push-v3", "--episodes=2", f"--root={root}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2/2 episodes" in result.stdout
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/metaworld", root=root)
    assert dataset.num_episodes == 2 and dataset[0]["observation.state"].shape == (41,)
    bad = run_cli("dataset", "metaworld", "--tasks=fly-v3", f"--root={tmp_path / 'x'}")
    assert bad.returncode == 2 and "Valid names" in bad.stderr
    two = run_cli("dataset", "metaworld", "--tasks=reach-v3", "--episodes=1", "--layout_sets=2", f"--root={tmp_path / 'two'}")
    assert two.returncode == 0 and "2/2 episodes" in two.stdout, two.stderr[-2000:]  # one per layout set
    for args, message in [(["--layout=eval", "--layout_sets=2"], "layout=eval is one layout set"),
                          (["--layout_sets=0"], "layout_sets must be >= 1")]:  # fmt: skip
        bad = run_cli("dataset", "metaworld", *args, f"--root={tmp_path / 'y'}")
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "metaworld").glob("*.yaml")), ids=lambda p: p.name)
def test_metaworld_recipes_parse(recipe):
    from hf_reflow.parsing import parse_pipeline_config

    cfg = parse_pipeline_config([f"--config={recipe}"])
    assert cfg.stages[0] == "flow_matching" and cfg.eval.num_steps


def test_a_new_stage_section_extends_a_finished_chain_but_a_trained_one_may_not_change(tmp_path):
    from hf_reflow.errors import ConfigError
    from hf_reflow.parsing import parse_pipeline_config
    from hf_reflow.pipeline import check_output_dir

    out = tmp_path / "run"
    base = [f"--config={TINY}", f"--output_dir={out}", "--stages=[flow_matching,reflow]"]
    check_output_dir(parse_pipeline_config(base), out)
    extended = parse_pipeline_config([*base[:2], "--stages=[flow_matching,reflow,shortcut]", "--shortcut.steps=7"])
    check_output_dir(extended, out)  # accepted: no shortcut stage was trained before
    with pytest.raises(ConfigError, match="differs in shortcut"):
        check_output_dir(parse_pipeline_config([*base[:2], "--stages=[flow_matching,reflow,shortcut]"]), out)
    with pytest.raises(ConfigError, match="differs in reflow"):
        check_output_dir(parse_pipeline_config([*base, "--reflow.steps=7"]), out)


def test_the_chain_index_names_a_linked_stage_by_its_place_in_the_run(tmp_path):
    """A stage dir may be a link to another run's (a lever that reuses finished stages): `pipeline.json` gives
    the path inside this run, not where the link points."""
    from hf_reflow.parsing import parse_pipeline_config
    from hf_reflow.pipeline import chain, write_chain_index

    other, out = tmp_path / "other", tmp_path / "run"
    (other / "seed0" / "1rf" / "pretrained_model").mkdir(parents=True)
    (out / "seed0").mkdir(parents=True)
    (out / "seed0" / "1rf").symlink_to(other / "seed0" / "1rf")
    stages = chain(["flow_matching", "reflow"])
    linked = [(s, out / "seed0" / s.name / "pretrained_model") for s in stages]
    write_chain_index(out, parse_pipeline_config([f"--config={TINY}"]), linked, out / "data" / "demos")
    index = json.loads((out / "pipeline.json").read_text())
    assert [s["path"] for s in index["stages"]] == ["seed0/1rf/pretrained_model", "seed0/2rf/pretrained_model"]


def test_couplings_at_the_teachers_closed_loop_states(tmp_path):
    """`coupling_states: closed_loop`: the 1-RF acts on the demonstrations' layouts, every episode is kept, and
    the 2-RF's couplings and training frames are those states (`hf-reflow dataset metaworld --policy_path` too)."""
    out = tmp_path / "run"
    args = ["pipeline", f"--config={TINY}", f"--output_dir={out}", "--stages=[flow_matching,reflow]",
            "--coupling_states=closed_loop", "--data.tasks=[reach-v3]", "--data.episodes=3", "--eval.episodes=1",
            "--eval.n_action_steps=[4,2]"]  # fmt: skip
    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    states = out / "seed0" / "states" / "1rf"
    summary = json.loads((states / "meta" / "info.json").read_text())
    assert summary["total_episodes"] == 3  # all three rollouts, failed ones included
    train = json.loads((out / "seed0" / "2rf" / "train_config.json").read_text())
    assert train["dataset"]["root"] == str(states)
    couplings = json.loads((out / "seed0" / "couplings" / "2rf" / "couplings.json").read_text())
    assert couplings["dataset_root"] == str(states)
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(row["name"], row["num_steps"], row["n_action_steps"]) for row in rows] == [
        (name, num_steps, n) for name in ("1-RF", "2-RF") for num_steps in (1, 2) for n in (4, 2)
    ]
    assert "speed-up at equal success:" in result.stdout and "One training seed" in result.stdout
    assert results["speedup_at_equal_success"]["reference"] == "1-RF @ 2, every 4"
    # The same rollouts from the command line: the teacher's states as a dataset.
    cli = run_cli("dataset", "metaworld", f"--policy_path={out / 'seed0' / '1rf'}", "--tasks=reach-v3", "--episodes=2",
                  f"--root={tmp_path / 'states'}")  # fmt: skip
    assert cli.returncode == 0 and "2/2 episodes" in cli.stdout and "all kept" in cli.stdout, cli.stderr[-2000:]


def test_near_goal_actions_script_compares_every_stage_with_the_expert(tiny_run, tmp_path):
    """scripts/near_goal_actions.py (docs/results.md's near-miss table) on the tiny chain, one episode."""
    import runpy

    script = runpy.run_path(str(REPO / "scripts" / "near_goal_actions.py"))
    out, _ = tiny_run
    script["main"]([str(out / "seed0"), "1", "reach-v3", str(tmp_path / "near.json")])
    report = json.loads((tmp_path / "near.json").read_text())
    assert list(report) == ["1rf@1", "1rf@10", "2rf@1", "2rf@10", "2rf-distill@1"]
    for cell in report.values():
        assert 0.0 <= cell["success"] <= 1.0 and len(cell["failures_closest_hand_goal_m"]) == round(1 - cell["success"])
        for part in ("near_goal_successes", "near_goal_failures"):
            assert cell[part] is None or (cell[part]["states"] > 0 and len(cell[part]["bias_xyz"]) == 3)


def test_compare_runs_script_pairs_two_runs_cell_by_cell(tiny_run):
    """scripts/compare_runs.py (docs/results.md's expert-aim table): a run against itself differs by 0 in every
    cell; a changed episode outcome moves exactly that cell."""
    import copy
    import runpy

    compare = runpy.run_path(str(REPO / "scripts" / "compare_runs.py"))["compare"]
    out, _ = tiny_run
    base = json.loads((out / "results.json").read_text())
    lines = compare(base, base, "a", "b")
    cells = {(r["name"], r["num_steps"]) for r in base["rows"] if r["n_action_steps"] == r["policy_n_action_steps"]}
    assert lines[0].startswith("| stage | steps | a | b | b - a, points (paired 95% CI) |") and len(lines) == 2 + len(cells)
    assert all("| +0.0 (+0.0, +0.0) |" in line for line in lines[2:])
    changed = copy.deepcopy(base)
    row = next(r for r in changed["rows"] if r["name"] == "2-RF" and r["num_steps"] == 1)
    flags = row["per_task"]["reach-v3"]["episode_success"]
    flags[0] = not flags[0]  # one of the 2 episodes (1 per task) flips: +-50 points
    moved = [line for line in compare(base, changed) if "| +0.0 (+0.0, +0.0) |" not in line][2:]
    assert len(moved) == 1 and moved[0].startswith("| 2-RF | 1 |") and ("+50.0" in moved[0] or "-50.0" in moved[0])
    # A base with more training seeds is compared on the seeds both runs hold (here seed 0 of a base with 0 and 7).
    wider = copy.deepcopy(base)
    wider["rows"] += [{**copy.deepcopy(r), "seed": 7} for r in base["rows"]]
    assert compare(wider, changed) == compare(base, changed) and compare(base, changed)[2].endswith("| 0 |")


def test_student_gap_script_compares_students_with_their_teacher_on_each_set(tiny_run):
    """scripts/student_gap.py (docs/results.md's generalisation diagnostic): one row per set of observations (the
    demonstrations, each closed-loop states folder, the held-out frames); the teacher taken as its own student at
    its saved 2 steps is exactly the teacher @ 2 column."""
    import runpy

    gap_table = runpy.run_path(str(REPO / "scripts" / "student_gap.py"))["gap_table"]
    out, _ = tiny_run
    lines = gap_table(out, "2rf", ["2rf-distill", "2rf"], [0], num_samples=16, draws=2)
    assert lines[0] == "| seed | observations | teacher @ 1 | teacher @ 2 | 2rf-distill | 2rf |"
    assert [line.split(" | ")[1] for line in lines[2:]] == ["demonstrations", "states of 2rf-distill",
                                                             "held-out (evaluation layouts)"]  # fmt: skip
    for line in lines[2:]:
        one, two, student, itself = (float(v) for v in line.strip("| ").split(" | ")[2:])
        assert itself == pytest.approx(two, rel=1e-5) and min(one, two, student) >= 0.0


def test_student_gap_spread_is_the_chunks_std_over_noise_draws(tiny_run):
    """`--spread`: the teacher taken as its own 2-step student spreads exactly as the teacher @ 2 column; every
    policy's chunk varies with the noise (a flow from Gaussian noise is not constant)."""
    import runpy

    spread_table = runpy.run_path(str(REPO / "scripts" / "student_gap.py"))["spread_table"]
    out, _ = tiny_run
    lines = spread_table(out, "2rf", ["2rf-distill", "2rf"], [0], num_samples=8, draws=3)
    assert lines[0] == "| seed | teacher @ 10 | teacher @ 2 | teacher @ 1 | 2rf-distill | 2rf |"
    ten, two, one, student, itself = (float(v) for v in lines[2].strip("| ").split(" | ")[1:])
    assert itself == pytest.approx(two, rel=1e-5) and min(ten, two, one, student) > 0.0


def test_merge_runs_script_reports_the_seeds_of_several_runs_as_one(tiny_run, tmp_path, capsys):
    """scripts/merge_runs.py (docs/results.md's six-seed multi-task table): runs of one recipe on other seeds give
    one report over all of them; the same seed twice, or another recipe, is refused with one line."""
    import runpy

    main = runpy.run_path(str(REPO / "scripts" / "merge_runs.py"))["main"]
    out, _ = tiny_run
    other = tmp_path / "seed5"
    other.mkdir()
    results = json.loads((out / "results.json").read_text())
    results["rows"] = [{**r, "seed": 5} for r in results["rows"]]
    (other / "results.json").write_text(json.dumps(results))
    shutil.copy(out / "recipe.json", other / "recipe.json")
    assert main([str(out), str(other), f"--output_dir={tmp_path / 'merged'}"]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert sorted({r["seed"] for r in merged["rows"]}) == [0, 5] and merged["recipe"]["seeds"] == [0, 5]
    assert all(s["seeds"] == 2 for s in merged["summary"]) and "training seeds: [0, 5]" in (tmp_path / "merged" / "report.md").read_text()
    assert "speed-up at equal success" in capsys.readouterr().out
    assert main([str(out), str(out), f"--output_dir={tmp_path / 'twice'}"]) == 2
    recipe = json.loads((other / "recipe.json").read_text())
    (other / "recipe.json").write_text(json.dumps({**recipe, "num_couplings": 7}))
    assert main([str(out), str(other), f"--output_dir={tmp_path / 'other'}"]) == 2
    err = capsys.readouterr().err
    assert "seed 0 is in both" in err and "differs in num_couplings" in err and len(err.strip().splitlines()) == 2
