"""The Accelerate training loop shared by every stage.

- `flow_matching` (1-RF): the student regresses noise - action on the dataset's action chunks.
- `reflow` (k+1-RF): targets are couplings (noise, teacher ODE end point) made online per batch.
- `distill`: like reflow but at t = 1 only, so one Euler step reproduces the teacher.
- `shortcut`: like reflow, plus the step size as an input and a self-consistency term
  (`shortcut.py`), so one student serves 1 and 2 steps.

`coupling_reuse` r: each batch's lines (noise -> target, i.e. one teacher solve online) serve r
consecutive optimizer steps, each at freshly drawn t; r = 1 is one batch per step. Checkpoints fall on
batch boundaries (`steps`, `save_every` are multiples of r), so a resumed run needs no saved couplings.

The run directory's layout (lerobot-train's) is `artifacts/run_dir.py`; the student is built in
`student.py`, the optimizer in `optim.py`, the teacher's couplings in `teacher.py`. Pushing to the Hub is
the caller's: `hf-reflow train` and the pipeline call `publish.push_stage` around `ReflowTrainer.train()`.

Optimizer and scheduler: the policy's LeRobot presets (`get_optimizer_preset()`, `get_scheduler_preset()`),
with any `optim.*` field given winning (`build_optimizer`); `train_config.json` records them (`optim_used`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.common.wandb_utils import get_wandb_run_id_from_filesystem
from torch import Tensor, nn

from hf_reflow import flow
from hf_reflow.artifacts import couplings_store
from hf_reflow.artifacts.checkpoints import PRETRAINED_DIR, save_checkpoint, stage_lineage
from hf_reflow.artifacts.run_dir import (
    CHECKPOINTS,
    LAST,
    TRAIN_CONFIG,
    TRAINING_STATE,
    check_run_dir,
    check_writable,
    checkpoint_dir,
    find_resumable_checkpoint,
    link_tree,
    point_last_at,
    remove_temporary,
)
from hf_reflow.artifacts.run_lock import run_lock
from hf_reflow.artifacts.training_state import load_training_state, save_training_state
from hf_reflow.configs import TrainConfig, save_config
from hf_reflow.data import StepBatchSampler, load_metadata, make_dataset
from hf_reflow.errors import ConfigError, TrainingError
from hf_reflow.policies.base import PolicyAdapter
from hf_reflow.policies.factory import adapter_for
from hf_reflow.training.console import log_interval, make_tracker, startup_summary, track
from hf_reflow.training.losses import StudentLoss, Targets
from hf_reflow.training.optim import build_optimizer, make_ema, trainable
from hf_reflow.training.shortcut import ShortcutLoss
from hf_reflow.training.student import Student, build_student
from hf_reflow.training.teacher import OnlineTeacher, check_compatible


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

    # ---- setup -------------------------------------------------------------------------
    def _make_accelerator(self):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        cfg = self.config
        if "trackio" in cfg.log_with:  # trackio is local-first: keep its SQLite store in the run
            os.environ.setdefault("TRACKIO_DIR", str(self.output_dir / "logs" / "trackio"))
        trackers: list[Any] = list(cfg.log_with)
        if cfg.wandb.enable:
            trackers.append(self._wandb_tracker())
        return Accelerator(
            cpu=cfg.policy.device == "cpu",  # lerobot-train's --policy.device=cpu
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )

    def _wandb_tracker(self):
        """Accelerate's W&B tracker, set up like lerobot-train's `--wandb.*`; it starts on the main process only."""
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--wandb.enable=true needs wandb: pip install 'hf-reflow[tracking]' (or pip install wandb)."
            ) from None
        from accelerate.tracking import WandBTracker

        w = self.config.wandb
        # wandb writes under output_dir/wandb, where lerobot-train's runs keep theirs.
        kwargs = {"dir": str(self.output_dir), "name": self.config.job_name or self.output_dir.name, "notes": w.notes}
        kwargs.update({k: v for k, v in (("entity", w.entity), ("mode", w.mode)) if v is not None})
        if w.add_tags:  # lerobot-train's `cfg_to_group` tags, plus the stage
            cfg = self.config
            kwargs["tags"] = [f"policy:{cfg.policy.type}", f"seed:{cfg.seed}", f"dataset:{cfg.dataset.repo_id}",
                              f"stage:{cfg.stage}"] + ([f"env:{cfg.env['type']}"] if cfg.env else [])  # fmt: skip
        run_id = w.run_id
        if run_id is None and self.config.resume and (self.output_dir / "wandb" / "latest-run").exists():
            run_id = get_wandb_run_id_from_filesystem(self.output_dir)  # --resume=true continues the same W&B run
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        return WandBTracker(w.project, **kwargs)

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
                accelerator = self._make_accelerator()
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

    def _fit(self, accelerator) -> Path:
        """Build the student, its data and optimizer; train from the resumed step; save the final model."""
        cfg = self.config
        meta = load_metadata(cfg.dataset)
        student = build_student(cfg, self.teacher, meta, accelerator.device)
        adapter = adapter_for(student.policy)
        if self.teacher is not None:
            check_compatible(self.teacher.config, student.policy.config)
            self.shared_backbone = self._share_backbone(adapter)
        dataset = make_dataset(cfg.dataset, student.policy.config)
        if cfg.couplings.path:  # stored couplings instead of online generation
            dataset = couplings_store.training_dataset(
                cfg.couplings, dataset, teacher=str(cfg.teacher.path), action_shape=adapter.action_shape,
                teacher_revision=cfg.teacher.revision, dataset_cfg=cfg.dataset,
            )  # fmt: skip
        student.policy.train()
        loss_module = (
            ShortcutLoss(adapter, cfg.flow, cfg.shortcut) if cfg.stage == "shortcut" else StudentLoss(adapter, cfg.flow)
        )
        optimizer, scheduler, self.optim_used = build_optimizer(
            cfg.optim, student.policy.config, trainable(student.policy), total_steps=cfg.steps
        )
        ema = make_ema(student.policy, cfg.ema_decay)
        loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
        # The scheduler and EMA are saved by `save_training_state` (JSON + safetensors), not registered with
        # Accelerate, whose `save_state` pickles them (`custom_checkpoint_*.pkl`, unpickled on resume).
        start_step = self._resume(accelerator, loss_module, optimizer, scheduler, ema)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / TRAIN_CONFIG, {"optim_used": self.optim_used})
            (self.output_dir / "logs").mkdir(exist_ok=True)
        accelerator.init_trackers("hf-reflow", config=_scalar_config(cfg))
        loader = self._loader(dataset, start_step, accelerator)
        state = _LoopState(accelerator, loss_module, optimizer, scheduler, ema, student, adapter,
                           make_tracker(cfg, meta.total_frames, meta.total_episodes, start_step, accelerator))  # fmt: skip
        if accelerator.is_main_process:
            for line in startup_summary(cfg, meta=meta, policy=student.policy, teacher=self.teacher,
                                        num_samples=len(dataset), processes=accelerator.num_processes,
                                        output_dir=self.output_dir):  # fmt: skip
                print(line, flush=True)
        self._run_steps(state, loader, start_step)
        final = self._save_final(state)
        if self.config.wandb.enable and not self.config.wandb.disable_artifact and accelerator.is_main_process:
            self._log_model_artifact(accelerator, final)
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
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.dataset.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + start_step),
        )

    def _run_steps(self, state: _LoopState, loader, start_step: int) -> None:
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
                    targets = self.make_targets(state.adapter, batch)
                    lines.append((batch, targets))
                    seconds["teacher"] += time.perf_counter() - clock
                else:  # the same noise -> end point lines, new times
                    batch, targets = lines[micro]
                    targets = self.retime(targets)
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
                self._save_training_checkpoint(state, step + 1)
            if self.evaluate is not None and ((step + 1) % cfg.env_eval_freq == 0 or step + 1 == cfg.steps):
                self._evaluate(state, step + 1, progress)

    def _log_model_artifact(self, accelerator: Any, final: Path) -> None:
        """The final weights as a W&B model artifact named as lerobot-train names its checkpoints' (tags joined)."""
        import wandb

        run = accelerator.get_tracker("wandb", unwrap=True)
        name = f"{self.config.job_name or self.output_dir.name}-{self.config.steps:06d}".replace("/", "_").replace(":", "_")
        artifact = wandb.Artifact(name, type="model")
        artifact.add_file(str(final / "model.safetensors"))
        run.log_artifact(artifact)

    def _evaluate(self, state: _LoopState, step: int, progress: Any) -> None:
        """The student as it is now, saved to a temporary folder and evaluated by `self.evaluate` (main process);
        every random generator is restored after, so training goes on as if no evaluation had run."""
        accelerator, folder = state.accelerator, self.output_dir / f".eval-{step}.tmp"
        self._save_pretrained(state, folder, self.config.final_num_steps)  # collective under FSDP
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

    def train_step(self, state: _LoopState, batch: dict[str, Tensor], targets: Targets, step: int) -> dict[str, float]:
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

    def make_targets(self, adapter: PolicyAdapter, batch: dict[str, Tensor]) -> Targets:
        """The stage's line for this batch: the dataset's chunk (1-RF), stored couplings, or the teacher's
        ODE end point from fresh noise; t from the time sampler, or t = 1 (distill)."""
        cfg = self.config
        data_action, mask = adapter.action_target(batch)  # (B, chunk, action_dim), (B, chunk)
        batch_size = data_action.shape[0]
        # Drawn for every batch, also when stored couplings replace it, so that the time draws below (and
        # the README's figures) are the same random stream whichever way the couplings come.
        noise = torch.randn(batch_size, *adapter.action_shape, device=data_action.device, dtype=data_action.dtype)
        # The shared backbone is the student's own frozen module: no teacher load needed (e.g. stored couplings).
        context = adapter.backbone_context(batch) if self.shared_backbone else None
        if cfg.stage == "flow_matching":
            action = data_action
        elif couplings_store.NOISE_KEY in batch:  # stored couplings
            noise = batch[couplings_store.NOISE_KEY].to(noise)
            action, mask = batch[couplings_store.ACTION_KEY].to(noise), None
        else:
            action, mask = self.teacher.end_points(batch, noise, context), None  # teacher chunks have no padding
        return Targets(noise, action, self._sample_time(noise), mask, context)

    def retime(self, targets: Targets) -> Targets:
        """The same lines at fresh times (`coupling_reuse` > 1): no new data, noise or teacher solve."""
        return dataclasses.replace(targets, t=self._sample_time(targets.noise))

    def _sample_time(self, noise: Tensor) -> Tensor:
        """(B,) training times for lines starting at `noise` (B, chunk, action_dim); t = 1 for distill."""
        if self.config.stage == "distill":
            return flow.distillation_inputs(noise, noise)[1]
        f = self.config.flow
        return flow.sample_time(noise.shape[0], f.time_sampler, device=noise.device, logit_mean=f.logit_mean,
                                logit_std=f.logit_std, u_shaped_a=f.u_shaped_a)  # fmt: skip

    def _share_backbone(self, adapter: PolicyAdapter) -> bool:
        """Whether the teacher uses the student's frozen backbone (`teacher.shared_backbone`: null = when possible)."""
        wanted, cfg = self.config.teacher.shared_backbone, self.config
        if wanted is False:
            return False
        if not cfg.init_from_teacher or not adapter.backbone_frozen():
            if wanted:
                raise ConfigError(
                    "teacher.shared_backbone=true needs a student initialised from the teacher "
                    f"(init_from_teacher={cfg.init_from_teacher}) with a frozen backbone (e.g. SmolVLA with "
                    f"policy.train_expert_only=true; this {adapter.policy_type} student has none frozen); "
                    "set teacher.shared_backbone=false or leave it null."
                )
            return False
        self.teacher.share_backbone_with(adapter)
        return True

    # ---- checkpoints ---------------------------------------------------------------------
    def _resume(self, accelerator, loss_module, optimizer, scheduler, ema) -> int:
        """Load the newest training checkpoint that loads when resuming; return its step (0 if none).

        Only JSON and safetensors are read (`load_training_state`): no pickle in a checkpoint is ever opened.
        """
        if not self.config.resume:
            return 0
        def load(directory: Path) -> None:
            load_training_state(directory, accelerator, model=loss_module, optimizer=optimizer, scheduler=scheduler, ema=ema)

        step = find_resumable_checkpoint(self.output_dir, load)  # a damaged newest one: the one before
        return 0 if step is None else step

    def _save_training_checkpoint(self, state: _LoopState, step: int, *, final: bool = False) -> Path:
        """Write `checkpoints/<step>/{pretrained_model,training_state}` via a temporary name, then point
        `checkpoints/last` at it. The final one's model holds the EMA weights and the stage's `num_steps`;
        its training state holds the trained weights (as every training state does)."""
        accelerator = state.accelerator
        checkpoint = checkpoint_dir(self.output_dir, step)
        tmp = checkpoint.with_name(f".{checkpoint.name}.tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        save_training_state(
            tmp / TRAINING_STATE,
            accelerator,
            model=state.loss_module,
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            ema=state.ema,
        )
        if final and state.ema is not None:
            state.ema.copy_to(trainable(state.student.policy))  # the final model holds the EMA weights
        self._save_pretrained(state, tmp / PRETRAINED_DIR, num_steps=self.config.final_num_steps if final else None)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_config(self.config, tmp / PRETRAINED_DIR / TRAIN_CONFIG, {"optim_used": self.optim_used})
            shutil.rmtree(checkpoint, ignore_errors=True)
            tmp.rename(checkpoint)
            point_last_at(checkpoint)
        accelerator.wait_for_everyone()
        return checkpoint

    def _save_final(self, state: _LoopState) -> Path:
        """The last step's checkpoint (`checkpoints/last`), then the same model as the run's `pretrained_model/`."""
        checkpoint = self._save_training_checkpoint(state, self.config.steps, final=True)
        final = self.output_dir / PRETRAINED_DIR
        if state.accelerator.is_main_process:
            link_tree(checkpoint / PRETRAINED_DIR, final)
        state.accelerator.wait_for_everyone()
        return final

    def _save_pretrained(self, state: _LoopState, directory: Path, num_steps: int | None) -> None:
        accelerator, student = state.accelerator, state.student
        state_dict = accelerator.get_state_dict(state.loss_module)  # collective under FSDP
        if not accelerator.is_main_process:
            return
        state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        trained_steps = state.adapter.num_steps
        if num_steps is not None:
            state.adapter.num_steps = num_steps
        save_checkpoint(directory, student.policy, student.preprocessor, student.postprocessor, self._lineage(state), state_dict)
        if num_steps is not None:
            state.adapter.num_steps = trained_steps

    def _lineage(self, state: _LoopState) -> dict[str, Any]:
        """`reflow.json` of the checkpoints this run writes."""
        lr = self.optim_used["optimizer"]["lr"]
        return stage_lineage(self.config, num_processes=state.accelerator.num_processes, lr=lr)


@dataclass
class _LoopState:
    accelerator: Any
    loss_module: nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any
    student: Student
    adapter: PolicyAdapter
    tracker: Any  # lerobot's MetricsTracker: the console's log line


def _frames_of(batch: dict[str, Any]) -> str:
    """` (dataset frames i, j, ...)` of a batch, from LeRobot's `index` key, or "" without one."""
    index = batch.get("index")
    if not torch.is_tensor(index):
        return ""
    frames = index.flatten().tolist()
    return f" (dataset frames {', '.join(map(str, frames[:8]))}{', ...' if len(frames) > 8 else ''})"


def _scalar_config(cfg: TrainConfig) -> dict[str, Any]:
    """Flat scalar hyper-parameters for the trackers (TensorBoard rejects lists and dicts)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix.rstrip(".")] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", cfg.to_dict())
    return flat
