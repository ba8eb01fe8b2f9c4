"""Evaluation statistics and the closed-loop harness, on hand-made inputs: intervals, paired
differences, the failure taxonomy, paired noise, and a report that always writes its results."""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch

from hf_reflow import metrics
from hf_reflow.configs.pipeline import TargetsConfig
from hf_reflow.evaluation import closed_loop, report


@pytest.mark.parametrize("trials", [1, 2, 3, 7, 10, 50, 99, 100, 101, 500])
def test_wilson_interval_contains_the_estimate_inside_0_1(trials):
    for successes in range(trials + 1):
        low, high = metrics.wilson_interval(successes, trials)
        p = successes / trials
        assert 0.0 <= low <= p <= high <= 1.0
    assert math.isclose(metrics.wilson_interval(0, trials)[0], 0.0, abs_tol=1e-12)
    assert math.isclose(metrics.wilson_interval(trials, trials)[1], 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("values", [[1.0, 1.0, 1.0], [0.0, 0.0], [0.5, 0.7, 0.9], [0.98, 1.0, 1.0], [0.0, 0.02]])
def test_t_interval_contains_the_estimate_inside_0_1(values):
    low, high = report.t_interval(values)
    assert 0.0 <= low <= float(np.mean(values)) <= high <= 1.0


def _episode(success: bool, seed: int, outcome: str | None = None) -> dict:
    return {"episode_seed": seed, "success": success, "collided": outcome == "collision",
            "outcome": outcome or ("success" if success else "timeout"), "side_taken": seed % 2, "steps": 50,
            "side_switches": 0, "min_obstacle_distance": 0.1}  # fmt: skip


def _row(name: str, num_steps: int, successes: list[int], *, seed: int = 0, stage: str = "reflow", k: int = 2) -> dict:
    per_task = closed_loop.summarise([_episode(bool(s), 7_000_000 + i) for i, s in enumerate(successes)])
    return {"name": name, "num_steps": num_steps, "seed": seed, "stage": stage, "k": k, "checkpoint": f"/x/{name}",
            "straightness": 0.01, "error_vs_10step": 0.0 if num_steps == 10 else 0.02, "error_vs_data": 0.1,
            "latency_ms": 1.0, **closed_loop.summarise([_episode(bool(s), 7_000_000 + i) for i, s in enumerate(successes)]),
            "per_task": {"reach-v3": per_task}}  # fmt: skip


def test_paired_difference_is_exact_for_identical_and_shifted_cells():
    ref = [_row("1-RF", 10, [1, 0, 1, 1, 0, 1, 1, 1], stage="flow_matching", k=1)]
    same = [_row("2-RF", 1, [1, 0, 1, 1, 0, 1, 1, 1])]
    mean, ci = report.paired_difference(same, ref)
    assert math.isclose(mean, 0.0, abs_tol=1e-12) and np.allclose(ci, (0.0, 0.0), atol=1e-12)  # identical episodes
    better = [_row("2-RF", 1, [1, 1, 1, 1, 1, 1, 1, 1])]  # wins exactly the two episodes the reference lost
    mean, (low, high) = report.paired_difference(better, ref)
    assert math.isclose(mean, 0.25) and 0.0 <= low <= mean <= high <= 1.0
    with pytest.raises(ValueError, match="same training seeds"):
        report.paired_difference([_row("2-RF", 1, [1, 1])], ref)


@dataclasses.dataclass
class _Data:  # the fields of a pipeline recipe the report reads
    tasks: list = dataclasses.field(default_factory=lambda: ["reach-v3"])
    mode: str = "multimodal"
    episodes: int = 4


@dataclasses.dataclass
class _Eval:
    episodes: int = 8
    num_samples: int = 4
    targets: TargetsConfig = dataclasses.field(default_factory=TargetsConfig)


@dataclasses.dataclass
class _Recipe:
    data: _Data = dataclasses.field(default_factory=_Data)
    eval: _Eval = dataclasses.field(default_factory=_Eval)


def _write(tmp_path, rows, log=lambda m: None):
    return report.write(tmp_path, _Recipe(), rows, log=log)


@pytest.mark.parametrize("successes", [[1] * 8, [0] * 8])
def test_report_writes_all_three_files_with_a_100_or_0_percent_cell(tmp_path, successes):
    rows = [_row("1-RF", 10, [1, 0, 1, 1, 0, 1, 1, 1], stage="flow_matching", k=1), _row("2-RF", 1, successes)]
    results = _write(tmp_path, rows)
    for name in ("results.json", "report.md", "report.png"):
        assert (tmp_path / name).stat().st_size > 0
    cell = results["summary"][1]
    assert cell["success_ci95"][0] <= cell["success_rate"] <= cell["success_ci95"][1]
    assert "vs ref" in (tmp_path / "report.md").read_text() and results["targets"]


def test_a_plotting_failure_keeps_results_and_says_so_in_one_line(tmp_path, monkeypatch):
    def broken(*_args):
        raise RuntimeError("no backend\nsecond line")

    monkeypatch.setattr(report, "plot", broken)
    said = []
    _write(tmp_path, [_row("1-RF", 10, [1, 0], stage="flow_matching", k=1)], log=said.append)
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
    assert len(said) == 1 and "\n" not in said[0] and "RuntimeError: no backend" in said[0]


def test_failure_classifier_on_hand_made_episodes():
    moving = np.cumsum(np.full((60, 3), 0.002), axis=0)  # 2 mm per step on each axis, to the end
    still = np.concatenate([moving[:30], np.repeat(moving[29:30], 30, axis=0)])  # stops for 30 steps
    jitter = still + np.random.default_rng(0).normal(scale=0.001, size=still.shape)  # within a few mm
    assert closed_loop.classify_episode(moving, success=True, collided=False) == "success"
    assert closed_loop.classify_episode(moving, success=False, collided=True) == "collision"
    assert closed_loop.classify_episode(still, success=False, collided=False) == "stall"
    assert closed_loop.classify_episode(jitter, success=False, collided=False) == "stall"
    assert closed_loop.classify_episode(moving, success=False, collided=False) == "timeout"
    assert closed_loop.classify_episode(still[:10], success=False, collided=False) == "timeout"  # too short to say


def test_side_switches_count_changes_of_side_between_chunks():
    start, target = np.array([0.0, 0.0]), np.array([1.0, 0.0])
    x = np.linspace(0.05, 0.95, 10)
    committed = np.stack([x, np.full(10, 0.1)], axis=1)  # always left (y > 0)
    hopping = np.stack([x, 0.1 * (-1.0) ** np.arange(10)], axis=1)  # left, right, left, ...
    on_line = np.stack([x, np.zeros(10)], axis=1)
    assert closed_loop.side_switches(committed, start, target, stride=1) == 0
    assert closed_loop.side_switches(hopping, start, target, stride=1) == 9
    assert closed_loop.side_switches(hopping, start, target, stride=2) == 0  # sampled at chunk starts only
    assert closed_loop.side_switches(on_line, start, target, stride=1) == 0


class _RecordingPolicy(torch.nn.Module):
    """A stand-in policy with a queue of n_action_steps that records the noise of each chunk it starts."""

    def __init__(self, n_action_steps: int) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(type="flow_mlp", n_action_steps=n_action_steps, chunk_size=8)
        self.model = types.SimpleNamespace(action_dim=4)
        self.chunks: list[torch.Tensor] = []
        self.queue = 0

    def reset(self) -> None:
        self.queue = 0

    def select_action(self, batch, noise=None):
        if self.queue == 0:
            self.chunks.append(noise.clone())
            self.queue = self.config.n_action_steps
        self.queue -= 1
        return torch.zeros(1, 4)


def _run(policy, episode_seed: int, steps: int) -> None:
    controller = closed_loop.PolicyController(policy, lambda b: b, lambda a: a, "reach the goal")
    controller.start(episode_seed)
    controller.reset()
    for _ in range(steps):
        controller(np.zeros(41, dtype=np.float32))


def test_paired_noise_is_the_same_for_every_stage_for_the_same_episode_and_chunk():
    teacher, student = _RecordingPolicy(4), _RecordingPolicy(4)
    _run(teacher, 7_000_003, steps=12)
    _run(student, 7_000_003, steps=12)  # another "stage": same episode, same chunks, same noise
    assert len(teacher.chunks) == 3
    for a, b in zip(teacher.chunks, student.chunks, strict=True):
        assert torch.equal(a, b) and a.shape == (1, 8, 4)
    assert not torch.equal(teacher.chunks[0], teacher.chunks[1])  # chunks differ from each other
    other = _RecordingPolicy(4)
    _run(other, 7_000_004, steps=4)
    assert not torch.equal(other.chunks[0], teacher.chunks[0])  # episodes differ from each other


# ---- diagnostics: slow vs lost vs oscillating, on hand-made episodes ---------------------------------
def _approach(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hand moving along x so that its distance to a goal at x = 0 is `distances` (T,)."""
    hand = np.stack([distances, np.zeros_like(distances), np.zeros_like(distances)], axis=1)
    return distances, hand


def test_diagnostics_tell_slow_from_lost_from_oscillating():
    from hf_reflow.evaluation.diagnostics import episode_diagnostics

    actions = np.zeros((120, 4))
    slow = _approach(np.linspace(0.30, 0.12, 120))  # still closing in when time runs out, never near
    lost = _approach(np.concatenate([np.linspace(0.30, 0.055, 60), np.linspace(0.055, 0.10, 60)]))  # near miss, drifts
    hover = _approach(0.07 + 0.01 * (-1.0) ** np.arange(120))  # back and forth 6-8 cm from the goal
    d_slow, d_lost, d_hover = (episode_diagnostics(g, h, actions, stride=8) for g, h in (slow, lost, hover))
    assert math.isclose(d_slow["closest_goal_m"], 0.12) and math.isclose(d_slow["final_goal_m"], 0.12)
    assert d_slow["near_goal_steps"] == 0 and d_slow["near_goal_reversals"] == 0
    assert math.isclose(d_slow["hand_speed"], 0.18 / 119)
    assert math.isclose(d_lost["closest_goal_m"], 0.055) and math.isclose(d_lost["final_goal_m"], 0.10)
    assert d_lost["near_goal_steps"] > 60 and d_lost["near_goal_reversals"] == 1  # in, then out once
    assert d_hover["near_goal_steps"] == 120 and d_hover["near_goal_reversals"] == 118
    assert math.isnan(d_lost["closest_hand_goal_m"])  # not given


def test_a_hand_on_the_goal_it_sees_can_still_miss_where_success_is_measured():
    """Reach: success is measured at the fingertips, 4.5 cm below the hand. A hand that stops 1.5 cm from the
    observed goal has its fingertips ~5.2 cm away: a miss whose hand closest distance says where it stopped."""
    from hf_reflow.evaluation.diagnostics import episode_diagnostics

    hand_goal = np.concatenate([np.linspace(0.30, 0.015, 60), np.full(60, 0.015)])  # (T,) stops 1.5 cm short
    success_distance = np.hypot(hand_goal, 0.045) + 0.003  # the fingertips, 4.5 cm below, a little off-axis
    hand = np.stack([hand_goal, np.zeros(120), np.zeros(120)], axis=1)
    d = episode_diagnostics(success_distance, hand, np.zeros((120, 4)), stride=8, hand_goal_distance=hand_goal)
    assert math.isclose(d["closest_hand_goal_m"], 0.015) and d["closest_goal_m"] > 0.05


def test_chunk_jump_is_the_change_at_chunk_boundaries():
    from hf_reflow.evaluation.diagnostics import chunk_jump

    # Each chunk of 4 steps holds a constant action; consecutive chunks differ by 1 in the first dimension.
    actions = np.zeros((12, 4))
    actions[:, 0] = np.repeat([0.0, 1.0, 0.0], 4)
    measured = chunk_jump(actions, stride=4)
    assert measured == {"chunk_jump": 1.0, "action_change": 0.0}
    assert math.isnan(chunk_jump(actions[:1], stride=4)["chunk_jump"])


def test_replanning_reaches_the_policy_and_is_restored():
    policy = _RecordingPolicy(4)
    with closed_loop.replanning(policy, 2) as stride:
        assert stride == 2
        _run(policy, 7_000_003, steps=12)
    assert len(policy.chunks) == 6  # a new chunk every 2 steps
    assert policy.config.n_action_steps == 4  # the policy's own again
    with closed_loop.replanning(policy, None) as stride:
        assert stride == 4
    from hf_reflow.errors import ConfigError

    with pytest.raises(ConfigError, match="n_action_steps must be in 1..8"), closed_loop.replanning(policy, 9):
        pass


def _cell(name, num_steps, successes, *, n, own=8, stage="reflow", k=2, latency=1.0):
    row = _row(name, num_steps, successes, stage=stage, k=k)
    episodes = [{**_episode(bool(s), 7_000_000 + i), "n_action_steps": n} for i, s in enumerate(successes)]
    row.update(closed_loop.summarise(episodes))
    row["per_task"] = {"reach-v3": closed_loop.summarise(episodes)}
    row.update({"n_action_steps": n, "policy_n_action_steps": own, "latency_ms": latency})
    row.update(closed_loop.compute_per_env_step(row))
    return row


def test_speed_up_at_equal_success_from_a_hand_made_table():
    """Teacher: 10 steps every 8 actions (1.25 passes per env step). A 1-step student re-planning every 4
    matches it (0.25 passes: 5x); at every 8 it is 3 of 8 episodes worse; the 1-step 1-RF is worse too."""
    teacher = [1, 1, 1, 0, 1, 1, 1, 1] * 5  # 40 episodes: enough for the paired CI to exclude -25 points
    rows = [
        _cell("1-RF", 10, teacher, n=8, stage="flow_matching", k=1, latency=10.0),
        _cell("1-RF", 1, [0, 0, 1, 0, 1, 0, 1, 1] * 5, n=8, stage="flow_matching", k=1),
        _cell("2-RF", 1, [1, 0, 1, 0, 0, 1, 1, 1] * 5, n=8),
        _cell("2-RF", 1, teacher, n=4),
    ]
    summary = report.summarise(rows)
    assert summary[0]["reference"] == "1-RF @ 10, every 8"
    assert math.isclose(summary[0]["passes_per_env_step"], 10 * 7 / 50)  # ceil(50 / 8) = 7 chunks of 10 passes
    speedup = report.speedup_at_equal_success(summary)
    assert speedup["cell"] == "2-RF @ 1, every 4"
    assert math.isclose(speedup["speedup_passes"], (10 * 7 / 50) / (13 / 50))  # 13 chunks of 1 pass
    assert math.isclose(speedup["speedup_ms"], (10.0 * 7) / (1.0 * 13))
    line = report.speedup_line(speedup)
    assert line.startswith("speed-up at equal success: 5.38x fewer denoising passes per env step")
    assert "2-RF @ 1, every 4" in line and "+0.0 points" in line and "1 training seed" in line
    # Targets compare 1-step cells at the teacher's own re-planning: the every-8 student is 2 in 8 episodes short.
    (gap,) = [t for t in report.targets(summary) if t["what"].startswith("best at 1 step")]
    assert gap["measured"].startswith("-25.0 points") and not gap["met"]
    # Two decimals: a ratio just under the 5x target must not print as "5.0x" beside "not met".
    (target,) = [t for t in report.targets(summary) if t["what"].startswith("speed-up at equal success")]
    assert target["measured"] == "5.38x" and target["met"]
    # A recipe's own targets (`eval.targets`) are the ones checked, e.g. a looser 1-step gap, a stricter speed-up.
    own = {t["what"].split(" (")[0]: t for t in report.targets(summary, TargetsConfig(min_gap_1_step=-0.30, min_speedup=6.0))}
    assert own["best at 1 step"]["target"] == ">= -30.0 points" and own["best at 1 step"]["met"]
    assert own["speed-up at equal success"]["target"] == ">= 6x" and not own["speed-up at equal success"]["met"]


def test_speed_up_without_a_closed_loop_reference_says_so():
    assert report.speedup_line(None).startswith("speed-up at equal success: not measured")


def test_detour_progress_says_where_along_the_line_the_hand_is():
    start, target = np.array([0.0, 0.0]), np.array([0.2, 0.0])
    assert math.isclose(closed_loop.detour_progress(np.array([0.0, 0.05]), start, target), 0.0, abs_tol=1e-12)
    assert math.isclose(closed_loop.detour_progress(np.array([0.05, -0.03]), start, target), 0.25)
    assert math.isclose(closed_loop.detour_progress(np.array([0.2, 0.0]), start, target), 1.0)
