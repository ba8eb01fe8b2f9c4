"""How a run writes and resumes its checkpoints, in lerobot-train's layout (`artifacts/run_dir.py`).

`checkpoints/<step>/{pretrained_model,training_state}` is written under a temporary name every process of a
distributed run shares, then renamed and pointed at by `checkpoints/last`; the final model is also linked as
the run's `pretrained_model/`. A training state holds only JSON and safetensors (`artifacts/training_state.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hf_reflow.artifacts.checkpoints import save_checkpoint, stage_lineage
from hf_reflow.artifacts.content import input_hashes
from hf_reflow.artifacts.run_dir import (
    TRAIN_CONFIG,
    TRAINING_STATE,
    checkpoint_dir,
    find_resumable_checkpoint,
    link_tree,
    point_last_at,
)
from hf_reflow.artifacts.training_state import load_training_state, save_training_state
from hf_reflow.atomic import remove, replace_path, temporary_sibling
from hf_reflow.configs import TrainConfig, save_config
from hf_reflow.policies.base import PolicyAdapter
from hf_reflow.refs import PRETRAINED_DIR, CheckpointRef
from hf_reflow.training.optim import trainable
from hf_reflow.training.student import Student


@dataclass
class LoopState:
    """What the training loop updates and a checkpoint saves."""

    accelerator: Any
    loss_module: nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any
    student: Student
    adapter: PolicyAdapter
    tracker: Any  # lerobot's MetricsTracker: the console's log line


@dataclass
class CheckpointWriter:
    """Saves and resumes the checkpoints of one run (`record()` is written into every `train_config.json`)."""

    config: TrainConfig
    output_dir: Path
    optim_used: dict[str, Any]
    teacher: CheckpointRef | None = None  # the teacher as the run resolved it once (its lineage and commit)
    # {input key: content hash} of the local teacher, frames and couplings, so that a moved run finds them
    # by content (`artifacts/run_dir.check_run_dir`); hashed once per run.
    input_hashes: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.input_hashes = input_hashes(self.config.to_dict())

    def record(self) -> dict[str, Any]:
        """What `train_config.json` records beside the config (`configs.RECORD_KEYS`, ignored when read back)."""
        return {"optim_used": self.optim_used, "input_hashes": self.input_hashes}

    def resume(self, accelerator: Any, loss_module: nn.Module, optimizer: Any, scheduler: Any, ema: Any) -> int:
        """Load the newest training checkpoint that loads when resuming; return its step (0 if none).

        Only JSON and safetensors are read (`load_training_state`): no pickle in a checkpoint is ever opened.
        """
        if not self.config.resume:
            return 0

        def load(directory: Path) -> None:
            load_training_state(directory, accelerator, model=loss_module, optimizer=optimizer, scheduler=scheduler, ema=ema)

        step = find_resumable_checkpoint(self.output_dir, load)  # a damaged newest one: the one before
        return 0 if step is None else step

    def save(self, state: LoopState, step: int, *, final: bool = False) -> Path:
        """Write `checkpoints/<step>/{pretrained_model,training_state}` via a temporary name, then point
        `checkpoints/last` at it. The final one's model holds the EMA weights and the stage's `num_steps`;
        its training state holds the trained weights (as every training state does)."""
        checkpoint = checkpoint_dir(self.output_dir, step)
        self._write(state, checkpoint, step=step, final=final)
        if state.accelerator.is_main_process:
            point_last_at(checkpoint)
        state.accelerator.wait_for_everyone()
        return checkpoint

    def save_final(self, state: LoopState) -> Path:
        """The last step's checkpoint (`checkpoints/last`), then the same model as the run's `pretrained_model/`;
        with `save_checkpoint=false` only the model, straight to `pretrained_model/` (no training state)."""
        final = self.output_dir / PRETRAINED_DIR
        if not self.config.save_checkpoint:
            self._write(state, final, step=None, final=True)
            return final
        checkpoint = self.save(state, self.config.steps, final=True)
        if state.accelerator.is_main_process:
            link_tree(checkpoint / PRETRAINED_DIR, final)
        state.accelerator.wait_for_everyone()
        return final

    def _write(self, state: LoopState, target: Path, *, step: int | None, final: bool) -> None:
        """`target` written under a temporary name every process shares, then renamed: a checkpoint folder
        (model + training state) when `step` is given, else the model folder alone."""
        accelerator = state.accelerator
        tmp = temporary_sibling(target, shared=True)  # every process writes its part there
        if accelerator.is_main_process:
            remove(tmp)
        accelerator.wait_for_everyone()
        model_dir = tmp if step is None else tmp / PRETRAINED_DIR
        if step is not None:
            save_training_state(tmp / TRAINING_STATE, accelerator, step=step, model=state.loss_module,
                                optimizer=state.optimizer, scheduler=state.scheduler, ema=state.ema)  # fmt: skip
        if final and state.ema is not None:
            state.ema.copy_to(trainable(state.student.policy))  # the final model holds the EMA weights
        self.save_pretrained(state, model_dir, self.config.final_num_steps if final else None)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_config(self.config, model_dir / TRAIN_CONFIG, self.record())
            replace_path(tmp, target)
        accelerator.wait_for_everyone()

    def save_pretrained(self, state: LoopState, directory: Path, num_steps: int | None) -> None:
        """The student as a stock-loadable checkpoint with `num_steps` in its config (None: the trained count)."""
        accelerator, student = state.accelerator, state.student
        state_dict = accelerator.get_state_dict(state.loss_module)  # collective under FSDP
        if not accelerator.is_main_process:
            return
        state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        lineage = stage_lineage(self.config, num_processes=accelerator.num_processes,
                                lr=self.optim_used["optimizer"]["lr"], teacher=self.teacher)  # fmt: skip
        with state.adapter.inference_steps(num_steps):  # the saved config's count; None: the trained one
            save_checkpoint(directory, student.policy, student.preprocessor, student.postprocessor, lineage, state_dict)
