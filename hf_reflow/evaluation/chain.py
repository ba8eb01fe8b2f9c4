"""The pipeline's evaluation of a trained chain: every seed x stage x step count, offline and closed loop.

Each stage's rows are cached in `<run>/eval.json` with the settings that produced them (and the closed-loop
`PROTOCOL`), so a rerun with the same settings reuses them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hf_reflow.evaluation.closed_loop import PROTOCOL, attach_closed_loop
from hf_reflow.evaluation.offline import evaluate_checkpoint


def evaluate_chain(
    trained: dict[int, list[tuple[Any, Any]]],
    heldout: Any,
    eval_cfg: Any,
    *,
    tasks: list[str],
    mode: str,
    log: Any = print,
) -> list[dict]:
    """Rows (seed x stage x step count) of offline metrics and Meta-World closed-loop results.

    Each stage's rows are cached in `<run>/eval.json` with the settings that produced them; a rerun
    with the same settings reuses them. Closed-loop episodes of every stage left to evaluate run in one
    pool of worker processes.
    """
    settings = {**dataclasses.asdict(eval_cfg), "tasks": list(tasks), "mode": mode, "protocol": PROTOCOL}
    settings.pop("workers")  # how many processes ran it does not change the result
    rows, todo = [], []
    for seed, stages in trained.items():
        for stage, checkpoint in stages:
            cache = Path(checkpoint).parent / "eval.json"
            if cache.is_file() and json.loads(cache.read_text()).get("settings") == settings:
                rows += json.loads(cache.read_text())["rows"]
                continue
            own = stage.kind == "distill"
            log(f"evaluating seed {seed} {stage.label} offline at {'its own step count' if own else eval_cfg.nfe}")
            stage_rows = evaluate_checkpoint(
                str(checkpoint), heldout, nfes=eval_cfg.nfe, num_samples=eval_cfg.num_samples, own_steps_only=own
            )
            for row in stage_rows:
                row.update({"seed": seed, "name": stage.label, "run": stage.name, "stage": stage.kind, "k": stage.k})
            todo.append((cache, stage_rows))
    if eval_cfg.episodes > 0:
        pending = [row for _, stage_rows in todo for row in stage_rows]
        done = attach_closed_loop(pending, tasks=tasks, mode=mode, episodes=eval_cfg.episodes, workers=eval_cfg.workers,
                                  n_action_steps=eval_cfg.n_action_steps, log=log)  # fmt: skip
        todo = [(cache, [row for row in done if row["checkpoint"] == stage_rows[0]["checkpoint"]])
                for cache, stage_rows in todo if stage_rows]  # fmt: skip
    for cache, stage_rows in todo:
        cache.write_text(json.dumps({"settings": settings, "rows": stage_rows}, indent=2))
        rows += stage_rows
    return rows
