"""The training stages of the k-RF chain and the rule for k (no dependency beyond `errors`: checkpoints,
publishing and the pipeline read it without importing the config parser)."""

from __future__ import annotations

from hf_reflow.errors import ConfigError

STAGES = ("flow_matching", "reflow", "distill", "shortcut")
# Step count written into each stage's final checkpoint unless `num_steps` says otherwise.
RECOMMENDED_NUM_STEPS = {"flow_matching": 10, "reflow": 2, "distill": 1, "shortcut": 1}


def stage_k(stage: str, teacher_k: int) -> int:
    """The k of a stage's model: 1 for flow matching, the teacher's k + 1 for a reflow round, and the
    teacher's own k for a distilled or shortcut student (the same couplings' flow, sampled in fewer steps)."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}.")
    return {"flow_matching": 1, "reflow": teacher_k + 1}.get(stage, teacher_k)
