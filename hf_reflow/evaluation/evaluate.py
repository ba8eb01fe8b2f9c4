"""One evaluation for `hf-reflow eval` and the pipeline: offline metrics by step count for each checkpoint,
then closed-loop episodes in the env asked for (the toy env, our Meta-World detour tasks in one pool of
worker processes, or any LeRobot env), with the same episode seeds and noise for every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_reflow.evaluation.closed_loop import attach_closed_loop
from hf_reflow.evaluation.lerobot_envs import attach_env_closed_loop
from hf_reflow.evaluation.offline import evaluate_checkpoint
from hf_reflow.metrics import EvalRow


@dataclass(frozen=True)
class EvalTarget:
    """A checkpoint to evaluate.

    Attributes:
        checkpoint: a local folder, run dir or Hub id.
        own_steps_only: only at its saved step count and the requested counts dividing it (a distilled student
            is trained at that count's Euler grid only).
        labels: columns every row of it carries (the pipeline's seed, stage name, run, k).
        title: what the log says while it is evaluated offline (None: nothing).
    """

    checkpoint: str
    own_steps_only: bool = False
    labels: dict[str, Any] = field(default_factory=dict)
    title: str | None = None


@dataclass(frozen=True)
class EvalSettings:
    """What is measured, the same for every checkpoint.

    Attributes:
        step_counts: the step counts.
        num_samples: observations for the offline metrics.
        seed: the offline observations' and noise's seed.
        episodes: closed-loop episodes per task (0: offline only).
        env: `none`, `toy` or `metaworld` (our detour tasks).
        tasks, mode, workers: the Meta-World tasks, their mode and worker processes.
        n_action_steps: re-plan after this many actions, one row per value (None: the policy's own).
        env_config: a LeRobot `EnvConfig` (`--env.type=...`) to run episodes in instead.
    """

    step_counts: list[int]
    num_samples: int = 64
    seed: int = 0
    episodes: int = 0
    env: str = "none"
    tasks: tuple[str, ...] = ()
    mode: str = "multimodal"
    workers: int = 1
    n_action_steps: list[int] | None = None
    env_config: Any = None


def evaluate(targets: list[EvalTarget], dataset_cfg: Any, settings: EvalSettings, *, log: Any = print) -> list[EvalRow]:
    """Rows (checkpoint x step count [x re-planning]) of offline metrics and closed-loop results."""
    s, rows = settings, []
    for target in targets:
        if target.title:
            log(f"evaluating {target.title} offline at {'the step counts it was trained for' if target.own_steps_only else s.step_counts}")
        checkpoint_rows = evaluate_checkpoint(
            target.checkpoint, dataset_cfg, step_counts=s.step_counts, num_samples=s.num_samples, seed=s.seed,
            episodes=s.episodes, env="toy" if s.env == "toy" else "none", own_steps_only=target.own_steps_only,
        )  # fmt: skip
        rows += [{**row, **target.labels} for row in checkpoint_rows]
    if s.env == "metaworld" and s.episodes > 0:
        rows = attach_closed_loop(rows, tasks=list(s.tasks), mode=s.mode, episodes=s.episodes, workers=s.workers,
                                  n_action_steps=s.n_action_steps, log=log)  # fmt: skip
    if s.env_config is not None and s.episodes > 0:
        rows = attach_env_closed_loop(rows, s.env_config, episodes=s.episodes, n_action_steps=s.n_action_steps)
    return rows
