"""Merge pipeline runs of one recipe on different training seeds into one report, as if one run had trained them all.

Seeds run on two machines, or seeds 3-5 added in another output dir:

    python scripts/merge_runs.py RUN_A RUN_B [...] --output_dir=MERGED

Each RUN is a pipeline output dir (its `recipe.json` and `results.json`). Their recipes must agree in every
setting but `seeds`, `output_dir`, `from_run`, `push` and `eval.workers`, and their seeds must not overlap; MERGED
gets `results.json`, `report.md` and `report.png` over every seed (Student-t CIs over seeds, paired differences
within each seed: every seed's cells ran the same episodes and noise), and the summary and the speed-up line are
printed as the pipeline prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_reflow.errors import ConfigError
from hf_reflow.evaluation import report
from hf_reflow.metrics import upgrade_row
from hf_reflow.parsing import parse_pipeline_config

FREE = ("seeds", "output_dir", "from_run", "push", "force")  # may differ between the runs merged


def _settings(recipe: dict) -> dict:
    """What must agree: the recipe without the free keys and the evaluation's worker count."""
    kept = {k: v for k, v in recipe.items() if k not in FREE}
    return {**kept, "eval": {k: v for k, v in (kept.get("eval") or {}).items() if k != "workers"}}


def merged_rows(runs: list[Path]) -> tuple[dict, list[dict]]:
    """The first run's recipe and every run's rows, once the recipes and seeds are checked."""
    recipes = [json.loads((run / "recipe.json").read_text()) for run in runs]
    for run, recipe in zip(runs[1:], recipes[1:], strict=True):
        changed = sorted(k for k in _settings(recipe).keys() | _settings(recipes[0]).keys()
                         if _settings(recipe).get(k) != _settings(recipes[0]).get(k))  # fmt: skip
        if changed:
            raise ConfigError(f"{str(run)!r} is another recipe's run than {str(runs[0])!r} (differs in {', '.join(changed)}); "
                              "merge runs of one recipe only.")  # fmt: skip
    rows, seen = [], {}
    for run in runs:
        run_rows = [upgrade_row(r) for r in json.loads((run / "results.json").read_text())["rows"]]
        for seed in sorted({r["seed"] for r in run_rows}):
            if seed in seen:
                raise ConfigError(f"training seed {seed} is in both {str(seen[seed])!r} and {str(run)!r}; merge runs of different seeds.")
            seen[seed] = run
        rows += run_rows
    return recipes[0], rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="pipeline output dirs of one recipe")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the merged report goes")
    args = parser.parse_args(argv)
    try:
        _, rows = merged_rows(args.runs)
        seeds = sorted({r["seed"] for r in rows})
        cfg = parse_pipeline_config([f"--config_path={args.runs[0] / 'recipe.json'}", f"--seeds={seeds}",
                                     f"--output_dir={args.output_dir}", "--from_run=null"])  # fmt: skip
    except (ConfigError, OSError, KeyError, ValueError) as e:
        print(f"merge_runs: error: {e}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = report.write(args.output_dir, cfg, rows)
    print(report.format_summary(results["summary"]))
    print(report.speedup_line(results["speedup_at_equal_success"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
