"""The evaluation rows a card shows: read from `hf-reflow eval --output=` and matched to the checkpoint
being pushed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_reflow.errors import HubError
from hf_reflow.metrics import upgrade_row
from hf_reflow.refs import checkpoint_folder


def load_eval_rows(path: str | Path, checkpoint: str | Path) -> list[dict[str, Any]]:
    """Rows of an `hf-reflow eval --output=` file that belong to `checkpoint`, sorted by step count.

    A file written for several checkpoints is filtered by each row's `checkpoint`; rows without one
    are taken as they are.
    """
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HubError(
            f"cannot read eval results {str(path)!r} ({type(e).__name__}); pass the JSON `hf-reflow eval --output=` wrote."
        ) from None
    rows = [upgrade_row(r) for r in rows] if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else None
    if rows is None or not all(_step_count(r.get("num_steps")) for r in rows):
        raise HubError(
            f"eval results {str(path)!r} must be a list of rows whose `num_steps` is a step count (an integer >= 1), as "
            "`hf-reflow eval --output=` writes."
        )
    target = _final_folder(checkpoint)
    mine = [r for r in rows if "checkpoint" not in r or _final_folder(r["checkpoint"]) == target]
    if not mine:
        found = sorted({str(r["checkpoint"]) for r in rows})
        raise HubError(
            f"eval results {str(path)!r} have no rows for checkpoint {str(checkpoint)!r} (they cover {', '.join(found)}); "
            "evaluate this checkpoint or pass the matching results file."
        )
    return sorted(mine, key=lambda r: (r["num_steps"], _step_count(r.get("n_action_steps")) or 0))


def _step_count(value: Any) -> bool:
    """An integer >= 1 (not a bool, a float or a string)."""
    return type(value) is int and value >= 1


def _final_folder(path: str | Path) -> Path:
    """A run dir and its `pretrained_model/` name the same checkpoint."""
    return (checkpoint_folder(path) or Path(path)).resolve()
