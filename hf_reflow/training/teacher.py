"""Reflow couplings generated online by a frozen k-RF teacher.

A coupling is (noise z, a = ODE_teacher(z | observation)): the student of round k+1 regresses the
straight line between them. The teacher is loaded lazily on first use (the seed guide's
`load_teacher_model`), never trained (no_grad, requires_grad off) and lives on the student's device
and dtype; its samples are in the teacher's normalised action space, which the student shares.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hf_reflow.artifacts.checkpoints import (
    check_weights,
    load_config,
    load_policy,
    teacher_lineage,
)
from hf_reflow.configs import TeacherConfig
from hf_reflow.errors import CheckpointError
from hf_reflow.policies.base import PolicyAdapter, sample_policy
from hf_reflow.policies.factory import adapter_for
from hf_reflow.refs import CheckpointRef
from hf_reflow.sampling import integrate


def check_compatible(teacher_config: Any, student_config: Any) -> None:
    """Fail before training when the student cannot regress on the teacher's action chunks."""
    t_action, s_action = teacher_config.action_feature, student_config.action_feature
    t_shape = tuple(t_action.shape) if t_action else None
    s_shape = tuple(s_action.shape) if s_action else None
    if t_shape != s_shape:
        raise CheckpointError(
            f"teacher action shape {t_shape} differs from the student's {s_shape}; a reflow student must "
            "predict the teacher's action dimension (use the same dataset / action features for both)."
        )
    t_padded, s_padded = getattr(teacher_config, "max_action_dim", None), getattr(student_config, "max_action_dim", None)
    if t_padded != s_padded:
        raise CheckpointError(
            f"the teacher ({teacher_config.type}) samples actions padded to max_action_dim={t_padded} but the "
            f"student ({student_config.type}) to {s_padded}; use a student of the teacher's type with the same "
            "max_action_dim."
        )
    if teacher_config.action_delta_indices != student_config.action_delta_indices:
        raise CheckpointError(
            f"teacher chunk ({len(teacher_config.action_delta_indices)} actions) differs from the student's "
            f"({len(student_config.action_delta_indices)}); set the student's chunk_size to the teacher's."
        )


class OnlineTeacher:
    """Lazily loaded frozen teacher producing reflow targets for each training batch."""

    def __init__(self, cfg: TeacherConfig, *, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.cfg, self.device, self.dtype = cfg, device, dtype
        # Checked now, before any training: its config, lineage and weights file (header only, no weights yet).
        self.ref = CheckpointRef.of(cfg.path, revision=cfg.revision, flag="teacher.path")  # resolved once
        self.config = load_config(self.ref)
        self.lineage = teacher_lineage(self.ref)
        check_weights(self.ref.local())
        self._adapter: PolicyAdapter | None = None
        self._velocity: Any = None  # the adapter's velocity call, compiled with `teacher.compile`
        self._student: PolicyAdapter | None = None  # set by `share_backbone_with`

    @property
    def adapter(self) -> PolicyAdapter:
        if self._adapter is None:
            # Building the module draws random init weights before the checkpoint overwrites them; keep
            # those draws off the training RNG stream so a resumed run sees the same noise.
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                policy = load_policy(self.ref, device=self.device, config=self.config)
            policy.requires_grad_(False).eval().to(dtype=self.dtype)
            self._adapter = adapter_for(policy)
            if self._student is not None:
                self._adapter.share_backbone(self._student)  # drops the teacher's own backbone copy
            # Only the per-step call is compiled: it runs num_inference_steps times per batch; encoding once.
            velocity = self._adapter.velocity
            self._velocity = torch.compile(velocity) if self.cfg.compile else velocity
        return self._adapter

    def share_backbone_with(self, student: PolicyAdapter) -> None:
        """Use the student's frozen backbone (checked equal to the teacher's when the teacher loads)."""
        self._student = student

    @torch.no_grad()
    def end_points(self, batch: dict[str, Tensor], noise: Tensor, context: Any = None) -> Tensor:
        """Teacher's ODE end points from `noise` (B, chunk, action_dim), in normalised action space.

        `context`: the shared backbone's output (`adapter.backbone_context(batch)`), or None to encode from scratch.
        """
        steps, solver, adapter = self.cfg.num_inference_steps, self.cfg.solver, self.adapter
        try:
            if context is None:
                out = sample_policy(adapter, batch, noise.to(self.dtype), num_steps=steps, solver=solver,
                                    velocity=self._velocity)  # fmt: skip
            else:
                condition = adapter.encode(batch, context)
                velocity_fn = lambda x_t, t: self._velocity(x_t, t, condition)  # noqa: E731
                out = integrate(velocity_fn, noise.to(self.dtype), num_steps=steps, solver=solver)
        except RuntimeError as e:
            raise CheckpointError(f"the teacher {self.cfg.path!r} failed on a training batch: {e}") from e
        return out.action.to(noise.dtype)
