"""The Accelerate training loop shared by every stage.

- `flow_matching` (1-RF): the student regresses noise - action on the dataset's action chunks.
- `reflow` (k+1-RF): targets are couplings (noise, teacher ODE end point) made online per batch.
- `distill`: like reflow but at t = 1 only, so one Euler step reproduces the teacher.
- `shortcut`: like reflow, plus the step size as an input and a self-consistency term
  (`hf_reflow/shortcut.py`), so one student serves 1 and 2 steps.

Run layout (`output_dir/`), lerobot-train's:
- `checkpoints/<step>/pretrained_model/`: a stock LeRobot checkpoint + `train_config.json` (the run's config,
  which reproduces it through `--config_path`); `checkpoints/<step>/training_state/`: JSON + safetensors, no
  pickle (`checkpoints.save_training_state`), for exact `--resume`. The last step's checkpoint holds the final
  model (EMA weights when on, `num_steps` set to the stage's recommended count).
- `checkpoints/last`: a symlink to the newest complete checkpoint, so the final model is
  `checkpoints/last/pretrained_model/`.
- `pretrained_model/`: the same final model, where the rest of hf-reflow looks (files hard-linked to the last
  checkpoint's where the file system allows, else copied); written last, so it marks a finished run.
- `train_config.json`: the run's config, written when training starts (identifies the run for `--resume`).
- `logs/`: trackers (tensorboard, trackio, wandb).

Optimizer and scheduler: the policy's LeRobot presets (`get_optimizer_preset()`, `get_scheduler_preset()`),
with any `optim.*` field given winning (`build_optimizer`); `train_config.json` records them (`optim_used`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hf_reflow import __version__, flow, offline_couplings
from hf_reflow.checkpoints import (
    PRETRAINED_DIR,
    load_config,
    load_policy,
    load_processors,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from hf_reflow.configs import RECORD_KEYS, OptimConfig, TrainConfig, save_config, stage_k
from hf_reflow.couplings import OnlineTeacher, check_compatible, load_teacher_lineage
from hf_reflow.data import StepBatchSampler, load_metadata, make_dataset, policy_features
from hf_reflow.errors import CheckpointError, ConfigError, DataError, ReflowError, TrainingError
from hf_reflow.hub import checkpoint_commit
from hf_reflow.policies.base import PolicyAdapter, adapter_for
from hf_reflow.shortcut import ShortcutLoss

CHECKPOINTS = "checkpoints"
TRAINING_STATE = "training_state"
LAST = "last"  # checkpoints/last -> the newest complete checkpoint (lerobot-train's name)
TRAIN_CONFIG = "train_config.json"
# A run dir may be moved, then resumed; Hub and tracker settings may change too (e.g. to push a finished run).
_IGNORED_ON_RESUME = (
    "resume", "output_dir", "push_to_hub", "hub_model_id", "hub_repo_template", "hub_private", "hub_revision",
    "hub_set_new_version",
    "wandb", "job_name", *RECORD_KEYS,
)  # fmt: skip


class StudentLoss(nn.Module):
    """Wraps the student so that Accelerate (DDP / FSDP) sees the loss computed in a `forward`."""

    def __init__(self, adapter: PolicyAdapter, flow_cfg: Any) -> None:
        super().__init__()
        self.policy = adapter.policy
        self.adapter, self.flow_cfg = adapter, flow_cfg

    def forward(
        self, batch: dict[str, Tensor], noise: Tensor, action: Tensor, t: Tensor, mask: Tensor | None, context=None
    ):
        # `context`: the frozen backbone's output shared with the teacher (None: the student encodes the batch).
        condition = None if context is None else self.adapter.encode(batch, context)
        losses = self.adapter.loss(batch, noise, action, t, kind=self.flow_cfg.loss, mask=mask, condition=condition)
        return losses.mean()  # losses: (B,)


@dataclass
class Student:
    policy: nn.Module
    preprocessor: Any
    postprocessor: Any


class ReflowTrainer:
    """Trains one stage described by a `TrainConfig`; `train()` returns the final checkpoint dir."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.teacher: OnlineTeacher | None = None
        self.shared_backbone = False  # the teacher uses the student's frozen backbone (see `_share_backbone`)
        self.history: list[dict[str, float]] = []  # logged metrics, with their step
        self.optim_used: dict[str, Any] = {}  # the optimizer and schedule used (`build_optimizer`)

    # ---- setup -------------------------------------------------------------------------
    def _check_output_dir(self) -> bool:
        """Return True when the run is already finished; raise when the dir holds another run."""
        saved = self.output_dir / TRAIN_CONFIG
        if not self.output_dir.exists() or not any(self.output_dir.iterdir()):
            return False
        if not self.config.resume or not saved.is_file():
            raise CheckpointError(
                f"output dir {str(self.output_dir)!r} already holds a run; pass --resume=true to continue it "
                "or choose another --output_dir."
            )
        mine = {k: v for k, v in self.config.to_dict().items() if k not in _IGNORED_ON_RESUME}
        theirs = {k: v for k, v in json.loads(saved.read_text()).items() if k not in _IGNORED_ON_RESUME}
        for key, default in TrainConfig().to_dict().items():  # a section added since that run: its default
            if key in mine and key not in theirs:
                theirs[key] = default
        if mine != theirs:
            changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise CheckpointError(
                f"output dir {str(self.output_dir)!r} holds a different run (differs in {', '.join(changed)}); "
                "resume with the same settings or choose another --output_dir."
            )
        return (self.output_dir / PRETRAINED_DIR / "config.json").is_file()

    def _build_student(self, meta: Any, device: torch.device) -> Student:
        cfg = self.config
        # `device` picks the accelerator (`_make_accelerator`); the policy goes where Accelerate puts it.
        overrides = {k: v for k, v in cfg.policy.items() if k not in ("type", "path", "device")}
        if cfg.stage == "shortcut":  # the student also reads its step size, from a zero-initialised input
            overrides.update(step_size_conditioning=True, shortcut_min_step=cfg.shortcut.min_step)
        if cfg.stage == "flow_matching":
            source = cfg.policy.get("path")
            if source is None:
                return self._new_student(cfg.policy.get("type", "flow_mlp"), overrides, meta, device)
        else:
            teacher_cfg = self.teacher.config
            if not cfg.init_from_teacher:
                _check_new_student_type(cfg, teacher_cfg)
                student = self._new_student(cfg.policy.get("type", teacher_cfg.type), overrides, meta, device)
                check_compatible(teacher_cfg, student.policy.config)
                student.preprocessor, student.postprocessor = load_processors(cfg.teacher.path, teacher_cfg, device=device)
                return student
            _check_teacher_type(cfg, teacher_cfg)
            source = cfg.teacher.path
        policy_cfg = load_config(source)
        _apply_overrides(policy_cfg, overrides)
        policy = load_policy(source, device=device, config=policy_cfg)
        pre, post = load_processors(source, policy_cfg, device=device)
        return Student(policy, pre, post)

    def _new_student(self, policy_type: str, overrides: dict, meta: Any, device: torch.device) -> Student:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        from hf_reflow.policies.base import supported_policy_types

        if policy_type not in supported_policy_types():
            raise ConfigError(
                f"policy.type {policy_type!r} is not supported; choose one of {', '.join(supported_policy_types())}."
            )
        inputs, outputs = policy_features(meta)
        config_cls = PreTrainedConfig.get_choice_class(policy_type)
        try:
            policy_cfg = config_cls(input_features=inputs, output_features=outputs, device=device.type)
            _apply_overrides(policy_cfg, overrides)
            _fill_task_vocabulary(policy_cfg, meta)
            policy = get_policy_class(policy_type)(policy_cfg).to(device)
        except (ValueError, KeyError) as e:
            if isinstance(e, ReflowError):
                raise
            raise DataError(
                f"cannot build a {policy_type} policy for dataset {meta.repo_id!r}: {e}. Dataset features: "
                f"{', '.join(sorted(meta.features))}."
            ) from None
        pre, post = make_pre_post_processors(policy_cfg, dataset_stats=meta.stats)
        return Student(policy, pre, post)

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
            cpu=cfg.policy.get("device") == "cpu",  # lerobot-train's --policy.device=cpu
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

        w, logs = self.config.wandb, self.output_dir / "logs"
        kwargs = {"dir": str(logs), "name": self.config.job_name or self.output_dir.name, "notes": w.notes}
        kwargs.update({k: v for k, v in (("entity", w.entity), ("mode", w.mode)) if v is not None})
        if w.run_id:
            kwargs.update(id=w.run_id, resume="allow")
        return WandBTracker(w.project, **kwargs)

    # ---- the loop ----------------------------------------------------------------------
    def train(self) -> Path:
        """Run the stage to `config.steps` (resuming when asked) and return the final checkpoint dir.

        With `push_to_hub`, the repo id, token and write access are checked before anything else, and
        the final checkpoint is pushed (main process) after training.
        """
        from hf_reflow import hub

        repo_id = hub.check_stage_push(self.config) if self.config.push_to_hub else None
        final = self._train()
        if repo_id is not None:
            from accelerate import PartialState

            error = None
            if PartialState().is_main_process:
                try:
                    hub.push_stage(self.config, final, repo_id)
                except ReflowError as e:  # let the other processes leave the barrier first
                    error = e
            PartialState().wait_for_everyone()
            if error is not None:
                raise error
        return final

    def _train(self) -> Path:
        from accelerate.utils import set_seed

        cfg = self.config
        if self._check_output_dir():
            return self.output_dir / PRETRAINED_DIR
        created = not self.output_dir.exists()
        try:
            accelerator = self._make_accelerator()
            set_seed(cfg.seed)
            if cfg.stage != "flow_matching":
                self.teacher = OnlineTeacher(cfg.teacher, device=accelerator.device)
            return self._run(accelerator)
        except ReflowError:
            if created and not (self.output_dir / CHECKPOINTS).exists():
                shutil.rmtree(self.output_dir, ignore_errors=True)  # leave nothing half-written
            raise

    def _run(self, accelerator) -> Path:
        cfg = self.config
        meta = load_metadata(cfg.dataset)
        student = self._build_student(meta, accelerator.device)
        adapter = adapter_for(student.policy)
        if self.teacher is not None:
            check_compatible(self.teacher.config, student.policy.config)
            self.shared_backbone = self._share_backbone(adapter)
        dataset = make_dataset(cfg.dataset, student.policy.config)
        if cfg.couplings.path:  # stored couplings instead of online generation
            dataset = offline_couplings.training_dataset(
                cfg.couplings, dataset, teacher=str(cfg.teacher.path), action_shape=adapter.action_shape,
                teacher_revision=cfg.teacher.revision, dataset_cfg=cfg.dataset,
            )  # fmt: skip
        student.policy.train()
        loss_module = (
            ShortcutLoss(adapter, cfg.flow, cfg.shortcut) if cfg.stage == "shortcut" else StudentLoss(adapter, cfg.flow)
        )
        optimizer, scheduler, self.optim_used = build_optimizer(
            cfg.optim, student.policy.config, _trainable(student.policy), total_steps=cfg.steps
        )
        ema = _make_ema(student.policy, cfg.ema_decay)
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
        state = _LoopState(accelerator, loss_module, optimizer, scheduler, ema, student, adapter)
        self._loop(state, loader, start_step)
        final = self._save_final(state)
        accelerator.end_training()
        return final

    def _loader(self, dataset, start_step: int, accelerator):
        cfg = self.config
        sampler = StepBatchSampler(
            len(dataset),
            cfg.batch_size,
            seed=cfg.seed,
            start_step=start_step * cfg.gradient_accumulation_steps,
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

    def _loop(self, state: _LoopState, loader, start_step: int) -> None:
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
        for step in progress:
            for _ in range(cfg.gradient_accumulation_steps):
                batch, stored = offline_couplings.split_stored(next(batches))  # processors never see them
                metrics = self.train_step(state, {**state.student.preprocessor(batch), **stored}, step)
            if state.ema is not None:
                state.ema.step(_trainable(state.student.policy))
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                accelerator.log(metrics, step=step + 1)
                self.history.append({"step": step + 1, **metrics})
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                self._save_training_checkpoint(state, step + 1)

    def train_step(self, state: _LoopState, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        """One micro-batch: targets for the stage, loss, backward; optimizer step when gradients sync."""
        accelerator = state.accelerator
        noise, action, t, mask, context = self._targets(state.adapter, batch)
        with accelerator.accumulate(state.loss_module):
            loss = state.loss_module(batch, noise, action, t, mask, context)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss.item()} at step {step}; lower --optim.lr, keep "
                    "gradient clipping on (--optim.grad_clip_norm > 0), and check the dataset stats (a zero std feature?)."
                )
            accelerator.backward(loss)
            grad_norm, clip = None, self.optim_used["optimizer"].get("grad_clip_norm")
            if accelerator.sync_gradients and clip:
                grad_norm = accelerator.clip_grad_norm_(state.loss_module.parameters(), clip)
            state.optimizer.step()
            if accelerator.sync_gradients:
                state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
        metrics = {"train/loss": loss.item(), "train/lr": state.scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        return metrics

    def _targets(self, adapter: PolicyAdapter, batch: dict[str, Tensor]):
        """(noise, action, t, mask, context) for the stage; action is the dataset's or the teacher's.

        context: the frozen backbone's output, computed once for the teacher's ODE and the student's loss
        when the backbone is shared, else None.
        """
        cfg = self.config
        data_action, mask = adapter.action_target(batch)
        batch_size = data_action.shape[0]
        noise = torch.randn(batch_size, *adapter.action_shape, device=data_action.device, dtype=data_action.dtype)
        # The shared backbone is the student's own frozen module: no teacher load needed (e.g. stored couplings).
        context = adapter.backbone_context(batch) if self.shared_backbone else None
        if cfg.stage == "flow_matching":
            action = data_action
        elif offline_couplings.NOISE_KEY in batch:  # stored couplings (the fresh noise above is unused)
            noise = batch[offline_couplings.NOISE_KEY].to(noise)
            action, mask = batch[offline_couplings.ACTION_KEY].to(noise), None
        else:
            action, mask = self.teacher.end_points(batch, noise, context), None  # teacher chunks have no padding
        if cfg.stage == "distill":
            _, t, _ = flow.distillation_inputs(noise, action)
        else:
            f = cfg.flow
            t = flow.sample_time(
                batch_size,
                f.time_sampler,
                device=noise.device,
                logit_mean=f.logit_mean,
                logit_std=f.logit_std,
                u_shaped_a=f.u_shaped_a,
            )
        return noise, action, t, mask, context

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
        """Load the newest complete training checkpoint when resuming; return its step (0 if none).

        Only JSON and safetensors are read (`load_training_state`): no pickle in a checkpoint is ever opened.
        """
        if not self.config.resume:
            return 0
        steps = sorted(int(p.name) for p in (self.output_dir / CHECKPOINTS).glob("[0-9]*") if p.name.isdigit())
        if not steps:
            return 0
        load_training_state(
            self.output_dir / CHECKPOINTS / f"{steps[-1]:06d}" / TRAINING_STATE,
            accelerator,
            model=loss_module,
            optimizer=optimizer,
            scheduler=scheduler,
            ema=ema,
        )
        return steps[-1]

    def _save_training_checkpoint(self, state: _LoopState, step: int, *, final: bool = False) -> Path:
        """Write `checkpoints/<step>/{pretrained_model,training_state}` via a temporary name, then point
        `checkpoints/last` at it. The final one's model holds the EMA weights and the stage's `num_steps`;
        its training state holds the trained weights (as every training state does)."""
        accelerator = state.accelerator
        checkpoint = self.output_dir / CHECKPOINTS / f"{step:06d}"
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
            state.ema.copy_to(_trainable(state.student.policy))  # the final model holds the EMA weights
        self._save_pretrained(state, tmp / PRETRAINED_DIR, num_steps=self.config.final_num_steps if final else None)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_config(self.config, tmp / PRETRAINED_DIR / TRAIN_CONFIG, {"optim_used": self.optim_used})
            shutil.rmtree(checkpoint, ignore_errors=True)
            tmp.rename(checkpoint)
            _point_last_at(checkpoint)
        accelerator.wait_for_everyone()
        return checkpoint

    def _save_final(self, state: _LoopState) -> Path:
        """The last step's checkpoint (`checkpoints/last`), then the same model as the run's `pretrained_model/`."""
        checkpoint = self._save_training_checkpoint(state, self.config.steps, final=True)
        final = self.output_dir / PRETRAINED_DIR
        if state.accelerator.is_main_process:
            _link_tree(checkpoint / PRETRAINED_DIR, final)
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
        save_checkpoint(directory, student.policy, student.preprocessor, student.postprocessor, self._info(state), state_dict)
        if num_steps is not None:
            state.adapter.num_steps = trained_steps

    def _info(self, state: _LoopState) -> dict[str, Any]:
        """Lineage written to `reflow.json` beside the stock checkpoint files."""
        cfg = self.config
        teacher_k = load_teacher_lineage(cfg.teacher.path).get("k", 1) if cfg.teacher.path else 0
        samples = cfg.steps * cfg.batch_size * cfg.gradient_accumulation_steps * state.accelerator.num_processes
        return {
            "hf_reflow_version": __version__,
            "stage": cfg.stage,
            "k": stage_k(cfg.stage, teacher_k),
            "distilled": cfg.stage == "distill",
            "teacher": cfg.teacher.path if cfg.stage != "flow_matching" else None,
            "teacher_commit": checkpoint_commit(cfg.teacher.path, revision=cfg.teacher.revision)
            if cfg.teacher.path
            else None,
            "teacher_num_inference_steps": cfg.teacher.num_inference_steps if cfg.stage != "flow_matching" else None,
            "teacher_solver": cfg.teacher.solver if cfg.stage != "flow_matching" else None,
            # The checkpoint a 1-RF was fine-tuned from (the model card's base_model) and its commit.
            "base_model": cfg.policy.get("path") if cfg.stage == "flow_matching" else None,
            "base_model_commit": checkpoint_commit(cfg.policy["path"])
            if cfg.stage == "flow_matching" and cfg.policy.get("path")
            else None,
            "couplings_seen": samples if cfg.stage != "flow_matching" else 0,
            "couplings_dataset": cfg.couplings.path,  # stored couplings; None = made online
            "dataset": {"repo_id": cfg.dataset.repo_id, "root": cfg.dataset.root},
            "train_steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "num_processes": state.accelerator.num_processes,
            "lr": self.optim_used["optimizer"]["lr"],
            "time_sampler": "fixed_t1" if cfg.stage == "distill" else cfg.flow.time_sampler,
            "loss": cfg.flow.loss,
            "seed": cfg.seed,
            "ema_decay": cfg.ema_decay,
            "num_steps": cfg.final_num_steps,
        }


@dataclass
class _LoopState:
    accelerator: Any
    loss_module: nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any
    student: Student
    adapter: PolicyAdapter


def _check_teacher_type(cfg: TrainConfig, teacher_cfg: Any) -> None:
    """A student initialised from the teacher is the teacher's type: reject a recipe naming another one."""
    wanted = cfg.policy.get("type")
    explicit = cfg.policy != TrainConfig.__dataclass_fields__["policy"].default_factory()
    if explicit and wanted and wanted != teacher_cfg.type:
        raise CheckpointError(
            f"the teacher {cfg.teacher.path!r} is a {teacher_cfg.type} policy, but policy.type is {wanted!r} and "
            f"the student is initialised from the teacher; pass a {wanted} teacher checkpoint, or drop "
            f"policy.type (the student is a {teacher_cfg.type} copy of the teacher)."
        )


def _check_new_student_type(cfg: TrainConfig, teacher_cfg: Any) -> None:
    """A new student (init_from_teacher=false) keeps the teacher's processors: it must be the teacher's type."""
    wanted = cfg.policy.get("type", teacher_cfg.type)
    if wanted != teacher_cfg.type:
        padded = getattr(teacher_cfg, "max_action_dim", None)
        space = f" and its padded action space (max_action_dim={padded})" if padded else ""
        raise CheckpointError(
            f"the teacher {cfg.teacher.path!r} is a {teacher_cfg.type} policy, but policy.type is {wanted!r}: a new "
            f"student (init_from_teacher=false) keeps the teacher's processors (tokenizer, prompt format, "
            f"normalisation stats){space}, so it must be a {teacher_cfg.type} policy; set "
            f"--policy.type={teacher_cfg.type}."
        )


def _fill_task_vocabulary(policy_cfg: Any, meta: Any) -> None:
    """Give a task-conditioned policy (`tasks` + `task_conditioning` fields) the dataset's task strings.

    Only a dataset with two or more tasks needs it: with one, the task says nothing the state does not.
    """
    if not getattr(policy_cfg, "task_conditioning", False) or getattr(policy_cfg, "tasks", None):
        return
    tasks = list(meta.tasks.sort_values("task_index").index)  # task string -> task_index, in index order
    if len(tasks) >= 2:
        policy_cfg.tasks = [str(task) for task in tasks]


def _apply_overrides(policy_cfg: Any, overrides: dict[str, Any]) -> None:
    """Set policy config fields from the recipe's `policy:` section, rejecting unknown names."""
    import dataclasses

    valid = {f.name for f in dataclasses.fields(policy_cfg)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"unknown policy key(s) {', '.join('policy.' + k for k in unknown)} for type {policy_cfg.type!r}; "
            f"valid keys: type, path, {', '.join(sorted(valid))}."
        )
    for key, value in overrides.items():
        setattr(policy_cfg, key, value)
    try:
        policy_cfg.__post_init__()
    except ValueError as e:
        raise ConfigError(f"invalid policy settings {overrides}: {e}") from None


def build_optimizer(optim: OptimConfig, policy_config: Any, params: list[nn.Parameter], *, total_steps: int):
    """The optimizer and LR scheduler of a run: the policy's LeRobot presets, with every field given in `optim` winning.

    Returns (optimizer, scheduler, record); `record` (what was used, and which fields were overridden) goes into
    train_config.json as `optim_used`. A policy without a scheduler preset, or `optim.scheduler=constant`, gets a
    constant LR (a LambdaLR, so the training state has the same shape).
    """
    opt_cfg, sched_cfg = resolve_optim(optim, policy_config, total_steps=total_steps)
    optimizer = opt_cfg.build(params)
    if sched_cfg is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _constant_lr)
    else:
        scheduler = sched_cfg.build(optimizer, total_steps)
    record = {
        "preset_of": policy_config.type,  # whose get_optimizer_preset / get_scheduler_preset gave the defaults
        "overridden": sorted(optim.given()),  # optim.* fields given, which won over the presets
        "optimizer": {"type": opt_cfg.type, **_jsonable(dataclasses.asdict(opt_cfg))},
        "scheduler": {"type": sched_cfg.type, **_jsonable(dataclasses.asdict(sched_cfg))} if sched_cfg else {"type": "constant"},
    }
    return optimizer, scheduler, record


def resolve_optim(optim: OptimConfig, policy_config: Any, *, total_steps: int):
    """(LeRobot OptimizerConfig, LRSchedulerConfig or None): the presets, updated with the `optim.*` fields given."""
    from lerobot.optim.optimizers import OptimizerConfig
    from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

    from hf_reflow.policies.flow_mlp.configuration_flow_mlp import WarmupCosineSchedulerConfig

    given = optim.given()
    preset = policy_config.get_optimizer_preset()
    if "type" in given and given["type"] != preset.type:
        opt_cfg = OptimizerConfig.get_choice_class(given["type"])()  # that optimizer's LeRobot defaults
    else:
        opt_cfg = copy.deepcopy(preset)
    names = {f.name for f in dataclasses.fields(opt_cfg)}
    updates = {}
    for key in ("lr", "weight_decay", "betas", "eps", "grad_clip_norm"):
        if key in given:
            if key not in names:
                raise ConfigError(f"optim.{key} does not apply to the {opt_cfg.type} optimizer; drop it or set optim.type.")
            updates[key] = tuple(given[key]) if key == "betas" else given[key]
    opt_cfg = dataclasses.replace(opt_cfg, **updates)

    sched_preset = policy_config.get_scheduler_preset()
    kind = given.get("scheduler")
    if kind == "constant":
        sched_cfg = None
    elif kind is None or (sched_preset is not None and kind == sched_preset.type):
        sched_cfg = copy.deepcopy(sched_preset)
    elif kind == "warmup_cosine":
        sched_cfg = WarmupCosineSchedulerConfig()
    else:  # cosine_decay_with_warmup when the preset is another schedule: over the whole run, to 0.1 x lr
        sched_cfg = CosineDecayWithWarmupSchedulerConfig(
            num_warmup_steps=0, num_decay_steps=total_steps, peak_lr=opt_cfg.lr, decay_lr=0.1 * opt_cfg.lr
        )
    schedule_keys = [k for k in ("warmup_steps", "decay_steps", "min_lr_ratio") if k in given]
    if sched_cfg is None:
        if schedule_keys:
            raise ConfigError(
                f"optim.{schedule_keys[0]} needs a schedule, but the LR is constant; set --optim.scheduler=warmup_cosine."
            )
        return opt_cfg, None
    return opt_cfg, _update_schedule(sched_cfg, given, lr=opt_cfg.lr)


def _update_schedule(sched_cfg: Any, given: dict[str, Any], *, lr: float) -> Any:
    names = {f.name for f in dataclasses.fields(sched_cfg)}
    updates: dict[str, Any] = {}
    if "warmup_steps" in given:
        updates["num_warmup_steps"] = given["warmup_steps"]
    if "decay_steps" in given:
        if "num_decay_steps" not in names:
            raise ConfigError(f"optim.decay_steps does not apply to the {sched_cfg.type} schedule.")
        updates["num_decay_steps"] = given["decay_steps"]
    if "min_lr_ratio" in names:
        if "min_lr_ratio" in given:
            updates["min_lr_ratio"] = given["min_lr_ratio"]
    elif {"peak_lr", "decay_lr"} <= names:  # LeRobot's cosine_decay_with_warmup: decay to decay_lr / peak_lr x lr
        if "min_lr_ratio" in given or lr != sched_cfg.peak_lr:
            ratio = given.get("min_lr_ratio", sched_cfg.decay_lr / sched_cfg.peak_lr)
            updates.update(peak_lr=lr, decay_lr=ratio * lr)
    elif "min_lr_ratio" in given:
        raise ConfigError(f"optim.min_lr_ratio does not apply to the {sched_cfg.type} schedule.")
    return dataclasses.replace(sched_cfg, **updates) if updates else sched_cfg


def _constant_lr(step: int) -> float:
    return 1.0


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _point_last_at(checkpoint: Path) -> None:
    """`checkpoints/last` -> `checkpoint` (relative), replaced atomically."""
    link = checkpoint.parent / LAST
    tmp = checkpoint.parent / f".{LAST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(checkpoint.name, tmp, target_is_directory=True)
    os.replace(tmp, link)


def _link_tree(src: Path, dst: Path) -> None:
    """Make `dst` a copy of `src` whose files are hard links where possible (no second copy of the weights)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link_or_copy)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def _make_ema(policy: nn.Module, decay: float | None):
    if decay is None:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(_trainable(policy), decay=decay)


def _trainable(policy: nn.Module) -> list[nn.Parameter]:
    return [p for p in policy.parameters() if p.requires_grad]


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
