"""The Accelerate training loop shared by every stage.

- `flow_matching` (1-RF): the student regresses noise - action on the dataset's action chunks.
- `reflow` (k+1-RF): targets are couplings (noise, teacher ODE end point) made online per batch.
- `distill`: like reflow but at t = 1 only, so one Euler step reproduces the teacher (a `num_steps: k` student:
  at its k-step Euler grid).
- `shortcut`: like reflow, plus the step size as an input and a self-consistency term
  (`shortcut.py`), so one student serves 1 and 2 steps.
- `meanflow`: like reflow, with the step size as the interval of an average velocity trained through the
  MeanFlow identity (`meanflow.py`), for one step.

`coupling_reuse` r: each batch's lines (noise -> target, i.e. one teacher solve online) serve r
consecutive optimizer steps, each at freshly drawn t; r = 1 is one batch per step. Checkpoints fall on
batch boundaries (`steps`, `save_every` are multiples of r), so a resumed run needs no saved couplings.

The run directory's layout (lerobot-train's) is `artifacts/run_dir.py`; the student is built in
`student.py`, the optimizer in `optim.py`, each batch's lines (data, stored or online couplings, times) in
`targets.py`, checkpoints are written and resumed by `checkpointing.py`, the Accelerator and its trackers
come from `tracking.py`, the console line from `console.py`. Pushing to the Hub is
the caller's: `hf-reflow train` and the pipeline call `publish.push_stage` around `ReflowTrainer.train()`.

Optimizer and scheduler: the policy's LeRobot presets (`get_optimizer_preset()`, `get_scheduler_preset()`),
with any `optim.*` field given winning (`build_optimizer`); `train_config.json` records them (`optim_used`).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hf_reflow.artifacts import couplings_store
from hf_reflow.artifacts.run_dir import (
    CHECKPOINTS,
    LAST,
    TRAIN_CONFIG,
    check_run_dir,
    check_writable,
    remove_temporary,
)
from hf_reflow.artifacts.run_lock import run_lock
from hf_reflow.configs import TrainConfig, save_config
from hf_reflow.data import StepBatchSampler, batch_loader, load_metadata, make_dataset
from hf_reflow.errors import TrainingError
from hf_reflow.policies.factory import adapter_for
from hf_reflow.refs import PRETRAINED_DIR
from hf_reflow.training.checkpointing import CheckpointWriter, LoopState
from hf_reflow.training.console import log_interval, make_tracker, startup_summary, track
from hf_reflow.training.losses import StudentLoss, Targets
from hf_reflow.training.meanflow import MeanFlowLoss
from hf_reflow.training.optim import build_optimizer, make_ema, trainable
from hf_reflow.training.shortcut import ShortcutLoss
from hf_reflow.training.student import build_student
from hf_reflow.training.targets import TargetMaker, share_backbone
from hf_reflow.training.teacher import OnlineTeacher, check_compatible
from hf_reflow.training.tracking import log_model_artifact, make_accelerator, scalar_config


class ReflowTrainer:
    """Trains one stage described by a `TrainConfig`; `train()` returns the final checkpoint dir."""

    def __init__(self, config: TrainConfig, evaluate: Callable[[Path, int], dict[str, float]] | None = None) -> None:
        """`evaluate(checkpoint_dir, step) -> metrics`: the closed-loop evaluation during training (lerobot-train's
        `--env.*` + `--env_eval_freq`), given by the caller (training does not import evaluation)."""
        self.config = config
        self.evaluate = evaluate
        self.output_dir = Path(config.output_dir)
        self.teacher: OnlineTeacher | None = None
        self.shared_backbone = False  # the teacher uses the student's frozen backbone (see `_share_backbone`)
        self.history: list[dict[str, float]] = []  # logged metrics, with their step
        self.optim_used: dict[str, Any] = {}  # the optimizer and schedule used (`build_optimizer`)
        self.targets: TargetMaker | None = None  # each batch's lines and times, set up by `_fit`
        self.checkpoints: CheckpointWriter | None = None  # this run's checkpoint writer, set up by `_fit`

    # ---- the stage -----------------------------------------------------------------------
    def train(self) -> Path:
        """Run the stage to `config.steps` (resuming when asked) and return the final checkpoint dir.

        A finished run with the same settings is returned untouched; a new run that fails before its first
        checkpoint leaves no output dir behind. Pushing is the caller's (`publish.push_stage`).
        """
        from accelerate.utils import set_seed

        cfg = self.config
        check_writable(self.output_dir)
        created = not self.output_dir.exists()
        with run_lock(self.output_dir):  # one run per output dir
            if check_run_dir(cfg):
                return self.output_dir / PRETRAINED_DIR
            try:
                accelerator = make_accelerator(cfg, self.output_dir)
                set_seed(cfg.seed)
                if cfg.cudnn_deterministic:  # as lerobot-train (GPU only); unlike it, benchmark mode is never
                    # switched on otherwise: its kernel choice varies from run to run, and resumes are bitwise
                    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
                if cfg.stage != "flow_matching":
                    self.teacher = OnlineTeacher(cfg.teacher, device=accelerator.device)
                return self._fit(accelerator)
            except BaseException as e:  # any failure or Ctrl-C: leave nothing half-written
                resumable = any((self.output_dir / CHECKPOINTS).glob("[0-9]*"))
                if created and not resumable:  # nothing to resume from: as if it never started
                    shutil.rmtree(self.output_dir, ignore_errors=True)
                else:
                    remove_temporary(self.output_dir)
                if isinstance(e, KeyboardInterrupt):
                    raise self._interrupted(resumable) from None
                raise

    def _interrupted(self, resumable: bool) -> TrainingError:
        """Ctrl-C: one line saying where the last checkpoint is and how to resume."""
        if not resumable:
            return TrainingError(f"interrupted before the first checkpoint; nothing was kept in {str(self.output_dir)!r}.")
        last = self.output_dir / CHECKPOINTS / LAST
        return TrainingError(
            f"interrupted; the last checkpoint is {str(last.resolve())!r}: rerun the same command with --resume=true "
            "to continue from it."
        )

    def _loss(self, adapter) -> nn.Module:
        """The stage's loss module: shortcut and meanflow have their own, every other stage the flow loss."""
        cfg = self.config
        if cfg.stage == "shortcut":
            return ShortcutLoss(adapter, cfg.flow, cfg.shortcut)
        if cfg.stage == "meanflow":
            return MeanFlowLoss(adapter, cfg.flow, cfg.meanflow)
        return StudentLoss(adapter, cfg.flow)

    def _fit(self, accelerator) -> Path:
        """Build the student, its data and optimizer; train from the resumed step; save the final model."""
        cfg = self.config
        meta = load_metadata(cfg.dataset)
        student = build_student(cfg, self.teacher, meta, accelerator.device)
        adapter = adapter_for(student.policy)
        if self.teacher is not None:
            check_compatible(self.teacher.config, student.policy.config)
            self.shared_backbone = share_backbone(cfg, self.teacher, adapter)
        self.targets = TargetMaker(cfg, self.teacher, shared_backbone=self.shared_backbone)
        dataset = make_dataset(cfg.dataset, student.policy.config)
        if cfg.couplings.path:  # stored couplings (reflow / distill stages only: a teacher is loaded)
            dataset = couplings_store.training_dataset(
                cfg.couplings, dataset, teacher=self.teacher.ref, action_shape=adapter.action_shape, dataset_cfg=cfg.dataset
            )
        student.policy.train()
        loss_module = self._loss(adapter)
        optimizer, scheduler, self.optim_used = build_optimizer(
            cfg.optim, student.policy.config, trainable(student.policy), total_steps=cfg.steps
        )
        ema = make_ema(student.policy, cfg.ema_decay)
        loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
        # The scheduler and EMA are saved by `save_training_state` (JSON + safetensors), not registered with
        # Accelerate, whose `save_state` pickles them (`custom_checkpoint_*.pkl`, unpickled on resume).
        self.checkpoints = CheckpointWriter(cfg, self.output_dir, self.optim_used,
                                            teacher=self.teacher.ref if self.teacher is not None else None)
        start_step = self.checkpoints.resume(accelerator, loss_module, optimizer, scheduler, ema)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / TRAIN_CONFIG, self.checkpoints.record())
            (self.output_dir / "logs").mkdir(exist_ok=True)
        accelerator.init_trackers("hf-reflow", config=scalar_config(cfg))
        loader = self._loader(dataset, start_step, accelerator)
        state = LoopState(accelerator, loss_module, optimizer, scheduler, ema, student, adapter,
                           make_tracker(cfg, meta.total_frames, meta.total_episodes, start_step, accelerator))  # fmt: skip
        if accelerator.is_main_process:
            for line in startup_summary(cfg, meta=meta, policy=student.policy, teacher=self.teacher,
                                        num_samples=len(dataset), processes=accelerator.num_processes,
                                        output_dir=self.output_dir):  # fmt: skip
                print(line, flush=True)
        self._run_steps(state, loader, start_step)
        final = self.checkpoints.save_final(state)
        if cfg.wandb.enable and not cfg.wandb.disable_artifact and accelerator.is_main_process:
            log_model_artifact(cfg, self.output_dir, accelerator, final)
        accelerator.end_training()
        return final

    def _loader(self, dataset, start_step: int, accelerator):
        cfg = self.config
        sampler = StepBatchSampler(
            len(dataset),
            cfg.batch_size,
            seed=cfg.seed,
            start_step=start_step // cfg.coupling_reuse * cfg.gradient_accumulation_steps,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
        # A private generator: DataLoader draws its workers' base seed when iterated, which would otherwise
        # shift the global RNG (noise, times) between an uninterrupted and a resumed run.
        return batch_loader(
            dataset, sampler, num_workers=cfg.dataset.num_workers, generator=torch.Generator().manual_seed(cfg.seed + start_step)
        )

    def _run_steps(self, state: LoopState, loader, start_step: int) -> None:
        """Optimizer steps from `start_step` to `config.steps`: EMA, logging, periodic checkpoints."""
        from tqdm.auto import tqdm

        cfg, accelerator = self.config, state.accelerator
        batches = iter(loader)
        progress = tqdm(
            range(start_step, cfg.steps),
            initial=start_step,
            total=cfg.steps,
            desc=f"{cfg.stage}",
            mininterval=2.0,
            disable=not accelerator.is_main_process,
        )
        lines: list[tuple[dict[str, Tensor], Targets]] = []  # this batch's micro-batches and their lines
        for step in progress:
            fresh = step % cfg.coupling_reuse == 0  # resumed runs start here too (checkpoints fall on it)
            lines = [] if fresh else lines
            seconds = dict.fromkeys(("data", "teacher", "update"), 0.0)  # this optimizer step, for the log line
            for micro in range(cfg.gradient_accumulation_steps):
                clock = time.perf_counter()
                if fresh:  # new data, couplings (the teacher's solve) and times
                    batch, stored = couplings_store.split_stored(next(batches))  # processors never see them
                    batch = {**state.student.preprocessor(batch), **stored}
                    seconds["data"] += time.perf_counter() - clock
                    clock = time.perf_counter()
                    targets = self.targets(state.adapter, batch)
                    lines.append((batch, targets))
                    seconds["teacher"] += time.perf_counter() - clock
                else:  # the same noise -> end point lines, new times
                    batch, targets = lines[micro]
                    targets = self.targets.retime(targets)
                clock = time.perf_counter()
                metrics = self.train_step(state, batch, targets, step)
                seconds["update"] += time.perf_counter() - clock
            if state.ema is not None:
                state.ema.step(trainable(state.student.policy))
            track(state.tracker, metrics, seconds)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                accelerator.log(metrics, step=step + 1)
                self.history.append({"step": step + 1, **metrics})
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
                log_interval(state.tracker, cfg, accelerator, progress)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                self.checkpoints.save(state, step + 1)
            if self.evaluate is not None and ((step + 1) % cfg.env_eval_freq == 0 or step + 1 == cfg.steps):
                self._evaluate(state, step + 1, progress)

    def _evaluate(self, state: LoopState, step: int, progress: Any) -> None:
        """The student as it is now, saved to a temporary folder and evaluated by `self.evaluate` (main process);
        every random generator is restored after, so training goes on as if no evaluation had run."""
        accelerator, folder = state.accelerator, self.output_dir / f".eval-{step}.tmp"
        self.checkpoints.save_pretrained(state, folder, self.config.final_num_steps)  # collective under FSDP
        if accelerator.is_main_process:
            generators = (random.getstate(), np.random.get_state(), torch.get_rng_state())
            try:
                metrics = self.evaluate(folder, step)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                random.setstate(generators[0]), np.random.set_state(generators[1]), torch.set_rng_state(generators[2])
            accelerator.log(metrics, step=step)
            self.history.append({"step": step, **metrics})
            progress.write(f"eval step:{step} " + " ".join(f"{k.removeprefix('eval/')}:{v:.3g}" for k, v in metrics.items()))
        accelerator.wait_for_everyone()

    def train_step(self, state: LoopState, batch: dict[str, Tensor], targets: Targets, step: int) -> dict[str, float]:
        """One micro-batch: loss on `targets`, backward; optimizer step when gradients sync."""
        accelerator = state.accelerator
        with accelerator.accumulate(state.loss_module):
            loss = state.loss_module(batch, targets)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss.item()} at step {step}{_frames_of(batch)}; check those frames "
                    "for extreme values and the dataset stats for a zero-std feature, then lower --optim.lr and keep "
                    "gradient clipping on (--optim.grad_clip_norm > 0)."
                )
            accelerator.backward(loss)
            grad_norm, clip = None, self.optim_used["optimizer"].get("grad_clip_norm")
            if accelerator.sync_gradients:  # clip 0 / None = off: an infinite bound only measures the norm
                grad_norm = accelerator.clip_grad_norm_(state.loss_module.parameters(), clip or float("inf"))
            state.optimizer.step()
            if accelerator.sync_gradients:
                state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
        metrics = {"train/loss": loss.item(), "train/lr": state.scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        return metrics

def _frames_of(batch: dict[str, Any]) -> str:
    """` (dataset frames i, j, ...)` of a batch, from LeRobot's `index` key, or "" without one."""
    index = batch.get("index")
    if not torch.is_tensor(index):
        return ""
    frames = index.flatten().tolist()
    return f" (dataset frames {', '.join(map(str, frames[:8]))}{', ...' if len(frames) > 8 else ''})"
