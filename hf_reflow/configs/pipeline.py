"""`hf-reflow pipeline`: demonstrations -> 1-RF -> reflow rounds -> distill -> evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from hf_reflow.configs.fields import (
    COUPLING_STATES,
    EXPERT_AIM_HELP,
    EXPERT_AIMS,
    HOLD_STEPS_HELP,
    MAX_COUNT,
    MAX_ODE_STEPS,
    N_ACTION_STEPS_HELP,
    at_least,
    at_most,
    check_choice,
    check_n_action_steps,
    check_repo_template,
    check_seed,
    option,
)
from hf_reflow.errors import ConfigError
from hf_reflow.policies.smolvlm import SmolVLMSize
from hf_reflow.refs import is_repo_id
from hf_reflow.stages import STAGES

PIPELINE_STAGES = STAGES  # every stage kind has its recipe section
VLM_DIR = "vlm"  # output_dir/vlm: the backbone `vlm.build` writes
MAX_LAYOUT_SETS = 64  # `rollout_layout_sets`: far below the evaluation set's MT1 seed (1000)


@dataclass
class DemoSettings:
    """Meta-World expert demonstrations, as `hf-reflow dataset metaworld` and the pipeline write them."""

    tasks: list[str] = option(help="Meta-World tasks, e.g. reach-v3,push-v3", factory=lambda: ["reach-v3", "push-v3"])
    episodes: int = option(100, "expert episodes attempted per task (failed ones are dropped and counted)")
    mode: str = option("multimodal", "multimodal (detour left / right of an obstacle) | scripted")
    seed: int = option(0, "seed of the episodes")
    images: bool = option(False, "also render a camera image per frame (for VLA policies)")
    image_size: int = option(96, "rendered image size in pixels")
    hold_steps: int = option(0, HOLD_STEPS_HELP)
    expert_aim: str = option("hand", EXPERT_AIM_HELP)
    PREFIX: ClassVar[str] = ""  # how the flags are spelt: `--episodes` (dataset) or `--data.episodes` (pipeline)

    def __post_init__(self) -> None:
        p = self.PREFIX
        check_seed(self.seed)
        check_choice(f"{p}mode", self.mode, ("multimodal", "scripted"))
        check_choice(f"{p}expert_aim", self.expert_aim, EXPERT_AIMS)
        at_least(f"{p}episodes", self.episodes, 1)
        at_most(f"{p}episodes", self.episodes, 1_000_000)
        at_least(f"{p}hold_steps", self.hold_steps, 0)
        at_most(f"{p}hold_steps", self.hold_steps, 1000)
        if self.image_size < 8:
            raise ConfigError(f"{p}image_size must be >= 8, got {self.image_size}.")


@dataclass
class DemoConfig(DemoSettings):
    """Meta-World expert demonstrations written as a LeRobotDataset by the pipeline."""

    heldout_episodes: int = option(10, "expert episodes per task on evaluation layouts, for offline metrics")
    PREFIX: ClassVar[str] = "data."

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("data.heldout_episodes", self.heldout_episodes, 1)
        at_most("data.heldout_episodes", self.heldout_episodes, 1_000_000)


@dataclass
class StepCountEval:
    """What every evaluation measures, `hf-reflow eval`'s and the pipeline's: the step counts, the offline
    observations, closed-loop episodes, their worker processes and re-planning."""

    num_steps: list[int] = option(help="Euler step counts to evaluate, e.g. 1,2,4,10", factory=lambda: [1, 2, 4, 10])
    num_samples: int = option(64, "held-out observations for the offline metrics")
    episodes: int = option(50, "closed-loop episodes per task and cell (checkpoint x step count)")
    workers: int = option(0, "Meta-World rollout processes; 0 = one per CPU core")
    n_action_steps: list[int] | None = option(None, N_ACTION_STEPS_HELP)
    PREFIX: ClassVar[str] = ""  # how the flags are spelt: `--num_steps` (eval) or `--eval.num_steps` (pipeline)

    def __post_init__(self) -> None:
        p = self.PREFIX
        check_n_action_steps(self.n_action_steps)
        if not self.num_steps or any(not isinstance(n, int) or not 1 <= n <= MAX_ODE_STEPS for n in self.num_steps):
            raise ConfigError(f"{p}num_steps must list step counts in 1..{MAX_ODE_STEPS}, e.g. --{p}num_steps=1,2,4,10; got {self.num_steps}.")
        for name in ("num_samples", "episodes", "workers"):
            low = 1 if name == "num_samples" else 0
            if getattr(self, name) < low:
                raise ConfigError(f"{p}{name} must be >= {low}, got {getattr(self, name)}.")
            at_most(f"{p}{name}", getattr(self, name), MAX_COUNT)


@dataclass
class TargetsConfig:
    """The benchmark's targets that `report.md` checks, as success-rate fractions (-0.03 = 3 points below the
    reference cell, the 1-RF at its largest step count). A recipe states its own (the multi-task recipe wants
    the best 1-step stage within 2 points); these defaults are the embedded default's."""

    min_reference_success: float = option(0.95, "the reference cell's success, at least")
    min_gap_1_step: float = option(-0.03, "best 1-step cell's success minus the reference's, at least")
    min_gap_2_steps: float = option(-0.01, "best 2-step cell's success minus the reference's, at least")
    max_collisions_1_step: float = option(0.02, "collision share of the best 1-step cell, at most")
    max_timeouts_1_step: float = option(0.05, "timeout share of the best 1-step cell, at most")
    left_share: list[float] = option(help="[low, high]: share of left detours of the best 1-step cell", factory=lambda: [0.40, 0.60])
    min_speedup: float = option(5.0, "speed-up at equal success (denoising passes per env step), at least")

    def __post_init__(self) -> None:
        for name, low, example in (("min_reference_success", 0.0, "0.95"), ("max_collisions_1_step", 0.0, "0.02"),
                                   ("max_timeouts_1_step", 0.0, "0.05"), ("min_gap_1_step", -1.0, "-0.03 for 3 points below"),
                                   ("min_gap_2_steps", -1.0, "-0.01 for 1 point below")):  # fmt: skip
            _check_fraction(f"eval.targets.{name}", getattr(self, name), low, example)
        if len(self.left_share) != 2 or not 0.0 <= self.left_share[0] <= self.left_share[1] <= 1.0:
            raise ConfigError(f"eval.targets.left_share must be [low, high] with 0 <= low <= high <= 1, e.g. [0.4, 0.6]; got {self.left_share}.")
        if not self.min_speedup > 0:
            raise ConfigError(f"eval.targets.min_speedup must be > 0 (a ratio of the reference's cost), e.g. 5.0; got {self.min_speedup}.")


def _check_fraction(flag: str, value: float, low: float, example: str) -> None:
    """Refuse a target that is not a success-rate fraction in `low`..1: points (-3), a bool, NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= 1.0:
        raise ConfigError(f"{flag} is a success-rate fraction in {low:g}..1, e.g. {example}; got {value!r}.")


@dataclass
class EvalConfig(StepCountEval):
    """Evaluation of every stage at every step count."""

    num_samples: int = option(256, "held-out observations for the offline metrics")
    targets: TargetsConfig = option(help="the targets report.md checks", factory=TargetsConfig)
    PREFIX: ClassVar[str] = "eval."


@dataclass
class PipelinePushConfig:
    """After evaluation, push the first seed's stages (cards, lineage, eval table) to the Hub, then a Gradio
    Space showing that chain; write access to every repo is checked before anything trains."""

    hub_model_id: str | None = option(None, "namespace/name the stage repos are named from (hub_repo_template); null: push nothing")
    hub_repo_template: str = option("{hub_model_id}-{k}rf{suffix}", "repo name per stage, as train's: {hub_model_id}, {k}, {stage}, {suffix} (-distilled, -redistilled, -shortcut, -meanflow)")
    space_id: str | None = option(None, "namespace/name of a Gradio Space showing the pushed chain; null: no Space")
    private: bool = option(False, "create the model repos and the Space private")

    def __post_init__(self) -> None:
        if self.space_id and not self.hub_model_id:
            raise ConfigError("push.space_id shows the pushed chain: also set push.hub_model_id=namespace/name.")
        for name in ("hub_model_id", "space_id"):
            value = getattr(self, name)
            if value is not None and not is_repo_id(value):
                raise ConfigError(f"push.{name} must be namespace/name, got {value!r}.")
        check_repo_template("push.hub_repo_template", self.hub_repo_template)


@dataclass
class VLMConfig:
    """A from-scratch SmolVLM backbone for a SmolVLA student (`hf_reflow.policies.smolvlm`): random weights and a
    tokenizer trained on the tasks' instructions, written once to `output_dir/vlm`; the 1-RF's policy reads it
    (`vlm_model_name`, `load_vlm_weights: false`, every text layer, images padded to its size). Offline
    benchmarks only: real users start from the pretrained `lerobot/smolvla_base` (recipes/smolvla/)."""

    build: bool = option(False, "write the backbone and point the SmolVLA student at it (needs data.images)")
    size: SmolVLMSize = option(
        help="architecture: text_hidden, text_layers, text_heads, text_kv_heads, vision_hidden, vision_layers, "
        "vision_heads, image_size (= data.image_size), patch_size, scale_factor, vocab_size",
        factory=SmolVLMSize,
    )


_SECTION_HELP = "TrainConfig fields (any `hf-reflow train` option) for the {} stage, on top of `train`"


@dataclass
class PipelineConfig:
    """The whole k-RF chain. `stages` is the chain in order, e.g. [flow_matching, reflow, reflow, distill]
    for 1-RF -> 2-RF -> 3-RF -> distilled; each stage trains from the previous one as teacher.

    `train` holds `TrainConfig` fields shared by every stage; each stage kind's section (`flow_matching`, `reflow`,
    `distill`, `redistill`, `shortcut`, `meanflow`) holds that stage's own fields on top (e.g. steps, optim.lr, flow.time_sampler).
    """

    output_dir: str = option("outputs/metaworld", "where the data, every stage's run and the report go")
    seeds: list[int] = option(help="training seeds; one chain per seed", factory=lambda: [0])
    stages: list[str] = option(help="the chain in order, flow_matching first", factory=lambda: ["flow_matching", "reflow", "distill"])
    force: bool = option(False, "redo finished stages (and the dataset) instead of skipping them")
    from_run: str | None = option(
        None,
        "a finished pipeline run whose datasets, couplings and stages this run hard-links wherever it would make "
        "the very same ones (same settings, inputs with the same content); everything else is made here: a paired "
        "lever retrains only what it changes",
    )
    num_couplings: int = option(
        0,
        "reflow / distill targets: 0 = couplings made online for every batch by the frozen teacher; N > 0 = "
        "N couplings generated once per stage (`hf-reflow couplings generate`), then trained on like data",
    )
    coupling_states: str = option(
        "demonstrations",
        "the observations the teacher's couplings are made at: demonstrations (the dataset's frames) | closed_loop "
        "(the states the frozen teacher visits when it acts, on demonstration layouts: `data.episodes` rollouts "
        "per task, failures kept); a redistill stage always trains at its distilled student's states",
    )
    rollout_layout_sets: int = option(
        1,
        "closed-loop states (coupling_states=closed_loop, redistill) are rolled out on this many Meta-World layout "
        "sets, `data.episodes` per task on each: MT1 seeds 0 (the demonstrations' 50 layouts per task) to N-1, never "
        "the evaluation set; more layouts to learn the teacher on, one more rollout of every episode per set",
    )
    data: DemoConfig = option(help="the demonstrations", factory=DemoConfig)
    vlm: VLMConfig = option(help="a from-scratch SmolVLM backbone for a SmolVLA student (offline benchmarks)", factory=VLMConfig)
    eval: EvalConfig = option(help="evaluation of every stage", factory=EvalConfig)
    push: PipelinePushConfig = option(help="push the chain and a Space to the Hub", factory=PipelinePushConfig)
    train: dict[str, Any] = option(help="TrainConfig fields (any `hf-reflow train` option) shared by every stage", factory=dict)
    flow_matching: dict[str, Any] = option(help=_SECTION_HELP.format("flow_matching"), factory=dict)
    reflow: dict[str, Any] = option(help=_SECTION_HELP.format("reflow"), factory=dict)
    distill: dict[str, Any] = option(help=_SECTION_HELP.format("distill"), factory=dict)
    redistill: dict[str, Any] = option(help=_SECTION_HELP.format("redistill"), factory=dict)
    shortcut: dict[str, Any] = option(help=_SECTION_HELP.format("shortcut"), factory=dict)
    meanflow: dict[str, Any] = option(help=_SECTION_HELP.format("meanflow"), factory=dict)

    def __post_init__(self) -> None:
        for stage in self.stages:
            check_choice("stages[]", stage, PIPELINE_STAGES)
        if not self.stages or self.stages[0] != "flow_matching" or "flow_matching" in self.stages[1:]:
            raise ConfigError(
                f"stages must start with flow_matching (the 1-RF) and use it once, got {self.stages}; "
                "e.g. [flow_matching, reflow, distill]."
            )
        if self.num_couplings < 0:
            raise ConfigError(f"num_couplings must be >= 0 (0 = online couplings), got {self.num_couplings}.")
        at_most("num_couplings", self.num_couplings, MAX_COUNT)
        check_choice("coupling_states", self.coupling_states, COUPLING_STATES)
        if not self.seeds:
            raise ConfigError("seeds must list at least one training seed, e.g. [0] or [0, 1, 2].")
        for seed in self.seeds:
            at_least("each of seeds", seed, 0)
        at_least("rollout_layout_sets", self.rollout_layout_sets, 1)
        at_most("rollout_layout_sets", self.rollout_layout_sets, MAX_LAYOUT_SETS, " (each set is one more rollout of every episode)")
        self._check_vlm()

    def _check_vlm(self) -> None:
        rollouts = [what for what, on in (("coupling_states=closed_loop", self.coupling_states == "closed_loop"),
                                          ("a redistill stage", "redistill" in self.stages)) if on]  # fmt: skip
        if self.data.images and rollouts:  # the rollouts' states hold no camera frame
            raise ConfigError(
                f"the states of {' and '.join(rollouts)} come from rollouts without a camera, so they cannot serve a "
                "policy that reads images (data.images=true); use coupling_states=demonstrations and drop redistill from stages."
            )
        if not self.vlm.build:
            return
        policy_type = (self.train.get("policy") or {}).get("type")
        if policy_type != "smolvla" or not self.data.images or self.data.image_size != self.vlm.size.image_size:
            raise ConfigError(
                "vlm.build makes a SmolVLM backbone for a SmolVLA student that sees the camera: set train.policy.type="
                f"smolvla, data.images=true and data.image_size={self.vlm.size.image_size} (vlm.size.image_size); "
                f"got {policy_type}, {self.data.images}, {self.data.image_size}."
            )
