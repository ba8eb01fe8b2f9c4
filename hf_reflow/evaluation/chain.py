"""The pipeline's evaluation of a trained chain: every seed x stage x step count, offline and closed loop.

Each stage's rows are cached in `<run>/eval.json` with the settings that produced them (and the closed-loop
`PROTOCOL`), so a rerun with the same settings reuses them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hf_reflow.atomic import write_text
from hf_reflow.evaluation.closed_loop import PROTOCOL
from hf_reflow.evaluation.evaluate import EvalSettings, EvalTarget, evaluate
from hf_reflow.metrics import EvalRow, upgrade_row
from hf_reflow.stages import DISTILL_STAGES


def evaluate_chain(
    trained: dict[int, list[tuple[Any, Any]]],
    heldout: Any,
    eval_cfg: Any,
    *,
    tasks: list[str],
    mode: str,
    log: Any = print,
) -> list[EvalRow]:
    """Rows (seed x stage x step count) of offline metrics and Meta-World closed-loop results.

    Each stage's rows are cached in `<run>/eval.json` with the settings that produced them; a rerun
    with the same settings reuses them. Closed-loop episodes of every stage left to evaluate run in one
    pool of worker processes.
    """
    settings = {**dataclasses.asdict(eval_cfg), "tasks": list(tasks), "mode": mode, "protocol": PROTOCOL}
    for key in ("workers", "targets"):  # how many processes ran it, and what the report wants, change no row
        settings.pop(key, None)
    rows, todo = [], []
    for seed, stages in trained.items():
        for stage, checkpoint in stages:
            cache = Path(checkpoint).parent / "eval.json"
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
            # a cache of any version: its settings and rows read with today's names (`nfe` is `num_steps`); the
            # checkpoint where it is now (a moved run's cache names where it was evaluated)
            if upgrade_row(cached.get("settings", {})) == settings:
                rows += [{**upgrade_row(row), "checkpoint": str(checkpoint)} for row in cached["rows"]]
                continue
            labels = {"seed": seed, "name": stage.label, "run": stage.name, "stage": stage.kind, "k": stage.k}
            todo.append((cache, EvalTarget(str(checkpoint), own_steps_only=stage.kind in DISTILL_STAGES, labels=labels,
                                           title=f"seed {seed} {stage.label}")))  # fmt: skip
    measure = EvalSettings(step_counts=eval_cfg.num_steps, num_samples=eval_cfg.num_samples, episodes=eval_cfg.episodes,
                           env="metaworld", tasks=tuple(tasks), mode=mode, workers=eval_cfg.workers,
                           n_action_steps=eval_cfg.n_action_steps)  # fmt: skip
    done = evaluate([target for _, target in todo], heldout, measure, log=log)
    for cache, target in todo:  # each stage's rows cached beside its checkpoint
        stage_rows = [row for row in done if row["checkpoint"] == target.checkpoint]
        write_text(cache, json.dumps({"settings": settings, "rows": stage_rows}, indent=2))
        rows += stage_rows
    return rows
