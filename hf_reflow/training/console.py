"""What a training run prints: a start-up summary and lerobot-train's log line, plus reflow's own figures.

The log line is LeRobot's `MetricsTracker` (`lerobot.utils.logging_utils`), averaged over the log interval,
so it reads as lerobot-train's: `step:200 smpl:51K ep:755 epch:3.77 loss:0.183 grdn:0.912 lr:9.9e-04
updt_s:0.021 data_s:0.001 smp/s:11K`, then the teacher's share of each update (`tchr_s`, seconds spent
solving its ODE for the batch's couplings) and the couplings served so far (`cpl`); a 1-RF has neither.
"""

from __future__ import annotations

from typing import Any

from lerobot.utils.logging_utils import AverageMeter, MetricsTracker
from lerobot.utils.utils import format_big_number

from hf_reflow.configs import TrainConfig


def make_tracker(cfg: TrainConfig, num_frames: int, num_episodes: int, start_step: int, accelerator: Any) -> MetricsTracker:
    """lerobot-train's meters (and reduction across processes) plus the teacher's time per update."""
    meters = {
        "loss": AverageMeter("loss", ":.3f", reduction="mean"),
        "grad_norm": AverageMeter("grdn", ":.3f"),
        "lr": AverageMeter("lr", ":0.1e"),
        "update_s": AverageMeter("updt_s", ":.3f", reduction="max"),
        "dataloading_s": AverageMeter("data_s", ":.3f", reduction="max"),
        "samples_per_s": AverageMeter("smp/s", ":.0f"),
    }
    if cfg.stage != "flow_matching":
        meters["teacher_s"] = AverageMeter("tchr_s", ":.3f", reduction="max")
    samples_per_step = cfg.batch_size * cfg.gradient_accumulation_steps
    return MetricsTracker(samples_per_step, num_frames, num_episodes, meters, initial_step=start_step,
                          accelerator=accelerator)  # fmt: skip


def track(tracker: MetricsTracker, metrics: dict[str, float], seconds: dict[str, float]) -> None:
    """One optimizer step into the meters (averaged until the next log line); `seconds`: data, teacher, update."""
    tracker.step()
    tracker.loss, tracker.lr = metrics["train/loss"], metrics["train/lr"]
    tracker.grad_norm = metrics.get("train/grad_norm", float("nan"))
    tracker.dataloading_s, tracker.update_s = seconds["data"], seconds["update"]
    if "teacher_s" in tracker.metrics:
        tracker.teacher_s = seconds["teacher"]


def log_interval(tracker: MetricsTracker, cfg: TrainConfig, accelerator: Any, progress: Any) -> None:
    """The interval's log line (every process joins the reduction; the main one prints and logs), then reset."""
    tracker.reduce_across_ranks()
    line = log_line(tracker, cfg)
    if accelerator.is_main_process:
        progress.write(line)
        accelerator.log({f"train/{k}": v for k, v in tracker.to_dict().items()
                         if k in ("samples_per_s", "update_s", "dataloading_s", "teacher_s")}, step=tracker.steps)  # fmt: skip
    tracker.reset_averages()


def log_line(tracker: MetricsTracker, cfg: TrainConfig) -> str:
    """The interval's averages as one line; samples/s from the slowest process's step time."""
    processes = tracker.accelerator.num_processes
    step_time = tracker.update_s.avg + tracker.dataloading_s.avg + (tracker.teacher_s.avg if "teacher_s" in tracker.metrics else 0.0)
    if step_time > 0:
        tracker.samples_per_s = cfg.batch_size * cfg.gradient_accumulation_steps * processes / step_time
    if cfg.stage == "flow_matching":
        return str(tracker)
    return f"{tracker} cpl:{format_big_number(cfg.couplings_seen(tracker.steps, processes))}"


def startup_summary(cfg: TrainConfig, *, meta: Any, policy: Any, teacher: Any, num_samples: int, processes: int,
                    output_dir: Any) -> list[str]:  # fmt: skip
    """lerobot-train's start-up block (steps, frames, episodes, batch, parameters, output dir) plus the teacher
    and where the couplings come from."""
    learnable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.parameters())
    batch = cfg.batch_size * cfg.gradient_accumulation_steps
    lines = [
        f"stage {cfg.stage} ({policy.config.type} policy), output dir: {output_dir}",
        f"steps={cfg.steps} ({format_big_number(cfg.steps)}), dataset: {meta.total_frames} frames "
        f"({format_big_number(meta.total_frames)}), {meta.total_episodes} episodes, {num_samples} training samples",
        f"effective batch size: {cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation x {processes} "
        f"process(es) = {batch * processes}",
        f"learnable parameters: {learnable} ({format_big_number(learnable)}) of {total} ({format_big_number(total)})",
    ]
    if teacher is not None:
        source = (f"stored couplings {cfg.couplings.path}" if cfg.couplings.path
                  else f"made online, {cfg.teacher.num_inference_steps} {cfg.teacher.solver} steps per coupling")  # fmt: skip
        lines.append(f"teacher: {cfg.teacher.path} ({teacher.config.type}); couplings: {source}"
                     + (f", each for {cfg.coupling_reuse} updates" if cfg.coupling_reuse > 1 else ""))  # fmt: skip
    return lines
