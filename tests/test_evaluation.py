"""Evaluation statistics and the closed-loop harness, on hand-made inputs: intervals, paired
differences, the failure taxonomy, paired noise, and a report that always writes its results."""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch

from hf_reflow.evaluation import closed_loop, report


@pytest.mark.parametrize("trials", [1, 2, 3, 7, 10, 50, 99, 100, 101, 500])
def test_wilson_interval_contains_the_estimate_inside_0_1(trials):
    for successes in range(trials + 1):
        low, high = report.wilson_interval(successes, trials)
        p = successes / trials
        assert 0.0 <= low <= p <= high <= 1.0
    assert report.wilson_interval(0, trials)[0] == 0.0 and report.wilson_interval(trials, trials)[1] == 1.0


@pytest.mark.parametrize("values", [[1.0, 1.0, 1.0], [0.0, 0.0], [0.5, 0.7, 0.9], [0.98, 1.0, 1.0], [0.0, 0.02]])
def test_t_interval_contains_the_estimate_inside_0_1(values):
    low, high = report.t_interval(values)
    assert 0.0 <= low <= float(np.mean(values)) <= high <= 1.0


def _episode(success: bool, seed: int, outcome: str | None = None) -> dict:
    return {"episode_seed": seed, "success": success, "collided": outcome == "collision",
            "outcome": outcome or ("success" if success else "timeout"), "side_taken": seed % 2, "steps": 50,
            "side_switches": 0, "min_obstacle_distance": 0.1}  # fmt: skip


def _row(name: str, nfe: int, successes: list[int], *, seed: int = 0, stage: str = "reflow", k: int = 2) -> dict:
    per_task = closed_loop.summarise([_episode(bool(s), 7_000_000 + i) for i, s in enumerate(successes)])
    return {"name": name, "nfe": nfe, "seed": seed, "stage": stage, "k": k, "checkpoint": f"/x/{name}",
            "straightness": 0.01, "error_vs_10step": 0.0 if nfe == 10 else 0.02, "error_vs_data": 0.1,
            "latency_ms": 1.0, **closed_loop.summarise([_episode(bool(s), 7_000_000 + i) for i, s in enumerate(successes)]),
            "per_task": {"reach-v3": per_task}}  # fmt: skip


def test_paired_difference_is_exact_for_identical_and_shifted_cells():
    ref = [_row("1-RF", 10, [1, 0, 1, 1, 0, 1, 1, 1], stage="flow_matching", k=1)]
    same = [_row("2-RF", 1, [1, 0, 1, 1, 0, 1, 1, 1])]
    mean, ci = report.paired_difference(same, ref)
    assert mean == 0.0 and ci == (0.0, 0.0)  # identical episodes: no difference, no spread
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
