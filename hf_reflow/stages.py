"""The training stages of the k-RF chain and the rule for k (no dependency beyond `errors`: checkpoints,
publishing and the pipeline read it without importing the config parser)."""

from __future__ import annotations

from hf_reflow.errors import ConfigError

STAGES = ("flow_matching", "reflow", "distill", "redistill", "shortcut", "meanflow")
# Step count written into each stage's final checkpoint unless `num_steps` says otherwise.
RECOMMENDED_NUM_STEPS = {"flow_matching": 10, "reflow": 2, "distill": 1, "redistill": 1, "shortcut": 1, "meanflow": 1}
# Students of a k-RF that no later stage uses (the next reflow round still learns from that k-RF): the word
# their label and Hub repo name add.
LEAF_STAGES = {"distill": "distilled", "redistill": "redistilled", "shortcut": "shortcut", "meanflow": "meanflow"}
# One-step students trained at t = 1 on their teacher's end points. `redistill` is the same objective at other
# states: those the k-RF's `distill` student visits when it acts (the pipeline rolls it out to make them).
DISTILL_STAGES = ("distill", "redistill")


def stage_label(stage: str | None, k: int | str) -> str:
    """`2-RF`, `2-RF distilled`, `2-RF shortcut`: how logs, results, cards and the Space name a stage's model."""
    return f"{k}-RF {LEAF_STAGES[stage]}" if stage in LEAF_STAGES else f"{k}-RF"


def repo_suffix(stage: str | None) -> str:
    """`{suffix}` of `hub_repo_template` for a stage: `-distilled`, `-shortcut`, or nothing for a k-RF."""
    return f"-{LEAF_STAGES[stage]}" if stage in LEAF_STAGES else ""


def run_name(stage: str, k: int) -> str:
    """A stage's folder in a pipeline run: `2rf`, or `2rf-distill` / `2rf-shortcut` for a leaf student."""
    return f"{k}rf-{stage}" if stage in LEAF_STAGES else f"{k}rf"


def stage_k(stage: str, teacher_k: int) -> int:
    """The k of a stage's model: 1 for flow matching, the teacher's k + 1 for a reflow round, and the
    teacher's own k for a distilled, shortcut or meanflow student (the same couplings' flow, sampled in fewer steps)."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}.")
    return {"flow_matching": 1, "reflow": teacher_k + 1}.get(stage, teacher_k)
