"""`hf-reflow train`: one stage of the k-RF chain (`TrainConfig` and its sections), and its saved form."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import draccus
from lerobot.configs.policies import PreTrainedConfig
from lerobot.transforms.transforms import ImageTransformsConfig

from hf_reflow.atomic import write_text
from hf_reflow.configs.fields import (
    MAX_COUNT,
    MAX_ODE_STEPS,
    OPTIMIZERS,
    SCHEDULERS,
    TRACKERS,
    at_least,
    at_most,
    check_choice,
    check_repo_template,
    check_revision,
    check_seed,
    option,
)
from hf_reflow.errors import ConfigError
from hf_reflow.flow import LOSSES, TIME_SAMPLERS, shortcut_levels
from hf_reflow.sampling import SOLVERS
from hf_reflow.stages import RECOMMENDED_NUM_STEPS, STAGES


@dataclass
class DatasetConfig:
    """Where the demonstrations come from (any LeRobotDataset)."""

    repo_id: str = option("local/dataset", "Hub dataset id, or any name when `root` holds the dataset")
    root: str | None = option(None, "local LeRobotDataset folder; null: the Hugging Face cache / Hub")
    revision: str | None = option(None, "Hub revision (branch, tag or commit) of a Hub dataset; null: main. Recorded "
                                "with the commit it resolved to in every checkpoint's reflow.json (lerobot-train's)")
    episodes: list[int] | None = option(None, "subset of episode indices; null: all")
    num_workers: int = option(0, "DataLoader worker processes")
    in_memory: str = option("auto", "auto (no videos, <= 200k frames, <= 2 GiB of camera images; stored couplings <= 2 GiB) | always | never: hold the frames and stored couplings in memory")
    video_backend: str | None = option(None, "video decoder: torchcodec | pyav; null: torchcodec when its FFmpeg loads, else pyav")
    image_transforms: ImageTransformsConfig = option(
        help="lerobot-train's image augmentation (LeRobot's ImageTransforms): --dataset.image_transforms.enable=true",
        factory=ImageTransformsConfig,
    )
    rename_map: dict[str, str] = option(
        help="dataset observation key -> the key the pretrained policy reads, e.g. {observation.images.top: "
        "observation.images.camera1} (lerobot-train's --rename_map; applied by the policy's own rename step)",
        factory=dict,
    )

    def __post_init__(self) -> None:
        check_choice("dataset.in_memory", self.in_memory, ("auto", "always", "never"))
        check_revision("dataset.revision", self.revision)
        if self.video_backend is not None:
            check_choice("dataset.video_backend", self.video_backend, ("torchcodec", "pyav"))
        if self.num_workers < 0:
            raise ConfigError(f"dataset.num_workers must be >= 0, got {self.num_workers}.")
        if self.episodes is not None and not self.episodes:
            raise ConfigError("dataset.episodes is an empty list; list episode indices, e.g. [0,1,2], or null for all.")
        for episode in self.episodes or []:
            at_least("each of dataset.episodes", episode, 0)
        for key, value in self.rename_map.items():
            if not (str(key).startswith("observation.") and str(value).startswith("observation.")):
                raise ConfigError(
                    "dataset.rename_map renames observations (observation.* -> observation.*); got "
                    f"{key!r}: {value!r}. Actions keep the name 'action'."
                )


@dataclass
class TeacherConfig:
    """The frozen k-RF teacher whose ODE end points become the student's targets (reflow, distill)."""

    path: str | None = option(None, "Hub repo id or local checkpoint / run dir (the guide's teacher_model_path)")
    revision: str | None = option(None, "Hub revision (branch, tag or commit) of the teacher")
    num_inference_steps: int = option(10, "the teacher's ODE steps per coupling (the guide's reflow_num_inference_steps)")
    solver: str = option("euler", "euler (LeRobot's grid) | heun: the teacher's ODE solver")
    shared_backbone: bool | None = option(
        None,
        "null (auto): a teacher whose frozen VLM equals the student's (SmolVLA with train_expert_only, student "
        "initialised from it) uses the student's VLM module and the VLM prefix is computed once per batch; "
        "true: the same, but an error when it cannot be shared; false: the teacher keeps its own VLM copy",
    )
    compile: bool = option(
        False, "torch.compile the teacher's velocity call (first batches pay the compile; same couplings within 1e-5)"
    )

    def __post_init__(self) -> None:
        check_choice("teacher.solver", self.solver, SOLVERS)
        check_revision("teacher.revision", self.revision)
        if self.num_inference_steps < 1:
            raise ConfigError(f"teacher.num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        at_most("teacher.num_inference_steps", self.num_inference_steps, MAX_ODE_STEPS)


@dataclass
class CouplingsConfig:
    """Stored reflow couplings (`hf-reflow couplings generate`) used instead of online generation."""

    path: str | None = option(None, "couplings folder or Hub dataset repo id; null: couplings made online per batch")
    revision: str | None = option(None, "Hub revision of the couplings dataset")

    def __post_init__(self) -> None:
        check_revision("couplings.revision", self.revision)


@dataclass
class FlowConfig:
    """How training times are drawn and velocity errors are scored."""

    time_sampler: str = option("beta", f"training-time distribution: {' | '.join(TIME_SAMPLERS)} (beta: SmolVLA's)")
    loss: str = option("mse", f"velocity loss: {' | '.join(LOSSES)}")
    logit_mean: float = option(0.0, "logit_normal sampler: mean")
    logit_std: float = option(1.0, "logit_normal sampler: standard deviation")
    u_shaped_a: float = option(4.0, "u_shaped sampler: concentration at both ends (Lee et al. 2024)")
    executed_weight: float = option(
        1.0,
        "loss weight of each chunk's first n_action_steps actions (the ones executed before re-planning) relative "
        "to the rest; weights are scaled to mean 1 over the chunk; 1 = uniform (not for the shortcut stage)",
    )

    def __post_init__(self) -> None:
        check_choice("flow.time_sampler", self.time_sampler, TIME_SAMPLERS)
        check_choice("flow.loss", self.loss, LOSSES)
        for name in ("logit_std", "u_shaped_a", "executed_weight"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"flow.{name} must be > 0, got {getattr(self, name)}.")


@dataclass
class OptimConfig:
    """Optimizer and LR schedule. A field left null takes the policy's own LeRobot preset
    (`policy.config.get_optimizer_preset()` / `get_scheduler_preset()`, what lerobot-train uses); a value
    given here wins. `train_config.json` records what was used (`optim_used`)."""

    lr: float | None = option(None, "peak learning rate; null: the preset's")
    weight_decay: float | None = option(None, "weight decay; null: the preset's")
    betas: list[float] | None = option(None, "Adam betas, e.g. [0.9, 0.95]; null: the preset's")
    eps: float | None = option(None, "Adam epsilon; null: the preset's")
    grad_clip_norm: float | None = option(None, "gradient-norm clipping (0 = off); null: the preset's")
    type: str | None = option(None, f"optimizer: {' | '.join(OPTIMIZERS)}; null: the preset's")
    scheduler: str | None = option(
        None,
        "LR schedule: warmup_cosine (linear warmup, then cosine to min_lr_ratio x lr at the last step) | "
        "cosine_decay_with_warmup (LeRobot's, pi0 / SmolVLA presets) | constant; null: the preset's",
    )
    warmup_steps: int | None = option(None, "linear-warmup steps; null: the preset's")
    decay_steps: int | None = option(None, "cosine_decay_with_warmup: decay steps; null: the preset's")
    min_lr_ratio: float | None = option(None, "final LR / peak LR of the cosine decay; null: the preset's")
    use_policy_preset: bool = option(
        True,
        "false: no policy preset, as lerobot-train's --use_policy_training_preset=false: optim.type and "
        "optim.scheduler must be given, every other field takes that optimizer's / schedule's own default",
    )

    def __post_init__(self) -> None:
        if self.type is not None:
            check_choice("optim.type", self.type, OPTIMIZERS)
        if not self.use_policy_preset and (self.type is None or self.scheduler is None):
            raise ConfigError(
                "without the policy's preset (use_policy_training_preset=false) set the optimizer and the schedule: "
                f"--optimizer.type={'|'.join(OPTIMIZERS)} and --scheduler.type={'|'.join(SCHEDULERS)}; "
                f"got optimizer.type={self.type}, scheduler.type={self.scheduler}."
            )
        if self.scheduler is not None:
            check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        if self.lr is not None and not 0 < self.lr <= 1e6:  # float32 overflows near 3e38; beyond 1e6 is a typo
            raise ConfigError(f"optim.lr must be in (0, 1e6], e.g. 1e-4; got {self.lr}.")
        if self.betas is not None and (len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {self.betas}.")
        if self.min_lr_ratio is not None and self.min_lr_ratio > 1:
            raise ConfigError(f"optim.min_lr_ratio (final LR / peak LR) must be in [0, 1], got {self.min_lr_ratio}.")
        for name in ("weight_decay", "eps", "grad_clip_norm", "warmup_steps", "min_lr_ratio"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"optim.{name} must be >= 0, got {getattr(self, name)}.")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ConfigError(f"optim.decay_steps must be >= 1, got {self.decay_steps}.")

    def given(self) -> dict[str, Any]:
        """The fields set (not null): they override the policy's presets."""
        fields = (f.name for f in dataclasses.fields(self) if f.name != "use_policy_preset")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


@dataclass
class ShortcutConfig:
    """The `shortcut` stage: one network for 1 and 2 steps (Frans et al. 2024; SnapFlow, arXiv 2604.05656).

    The student starts as its teacher, plus a step-size input whose last layer is zero (so it reproduces
    the teacher exactly at step 0). Its loss: the flow loss on the teacher's couplings at the smallest
    step size (`min_step`, its plain flow) + `consistency_weight` x the self-consistency loss (one step
    of 2d = two steps of d of its own velocity, for 2d in 2 min_step .. 1).
    """

    min_step: float = option(0.125, "smallest step size, 1 / 2^n (its plain flow)")
    consistency_weight: float = option(1.0, "weight of the self-consistency loss")

    def __post_init__(self) -> None:
        try:
            if len(shortcut_levels(self.min_step)) < 2:
                raise ValueError("min_step 1 leaves nothing to distil")
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"shortcut.min_step must be 1 / 2^n with n >= 1, e.g. 0.125; got {self.min_step} ({e}).") from None
        if not math.isfinite(self.consistency_weight) or self.consistency_weight < 0:
            raise ConfigError(f"shortcut.consistency_weight must be finite and >= 0, got {self.consistency_weight}.")


@dataclass
class MeanFlowConfig:
    """The `meanflow` stage: a 1-step student of the average velocity u(x_t, r, t) (Geng et al. 2025; MP1).

    The student starts as its teacher plus a step-size input d = t - r at zero (as a shortcut student) and is
    trained on the teacher's couplings with the MeanFlow identity (`training/meanflow.py`); one Euler step of
    size d = 1 / num_steps then follows the average velocity over that step.
    """

    mean_share: float = option(0.5, "share of each batch trained on an interval r < t (the rest at r = t: the plain flow)")
    adaptive_power: float = option(1.0, "MeanFlow's adaptive loss weight 1 / (||error||^2 + 1e-3)^p; 0: flow.loss instead")
    # The smallest step size the student is told when sampling (flow_mlp's shortcut_min_step): d = 1 / num_steps
    # is exact up to 64 steps.
    MIN_STEP: ClassVar[float] = 1 / 64

    def __post_init__(self) -> None:
        if not 0 < self.mean_share <= 1:
            raise ConfigError(f"meanflow.mean_share must be in (0, 1], e.g. 0.5; got {self.mean_share}.")
        if not 0 <= self.adaptive_power <= 2:
            raise ConfigError(f"meanflow.adaptive_power must be in [0, 2] (1: MeanFlow's default), got {self.adaptive_power}.")


@dataclass
class WandbConfig:
    """Weights & Biases, configured as lerobot-train's `--wandb.*` (main process only, Accelerate's tracker)."""

    enable: bool = option(False, "log to Weights & Biases (beside log_with's trackers)")
    project: str = option("hf-reflow", "W&B project")
    entity: str | None = option(None, "W&B entity (user or team); null: your default")
    notes: str | None = option(None, "W&B run notes")
    run_id: str | None = option(None, "W&B run id, e.g. to continue a run after --resume=true")
    mode: str | None = option(None, "online | offline (no network; `wandb sync` later) | disabled; null: WANDB_MODE or online")
    add_tags: bool = option(True, "tag the run policy:TYPE, seed:N, dataset:REPO_ID, stage:STAGE (lerobot-train's tags + the stage)")
    disable_artifact: bool = option(False, "false: log the final model.safetensors as a W&B model artifact, as lerobot-train does")

    def __post_init__(self) -> None:
        if self.mode is not None:
            check_choice("wandb.mode", self.mode, ("online", "offline", "disabled"))


POLICY_HELP = (
    "the student: a LeRobot PreTrainedConfig, resolved as lerobot-train resolves it. `path`: start from a "
    "checkpoint (its config.json and weights); `type`: a new policy of that LeRobot type (default flow_mlp). A "
    "reflow / distill student initialised from its teacher starts from the teacher's config.json (teacher.path "
    "is its implicit policy.path). Then any field of that type's config class, decoded by draccus, e.g. "
    "--policy.chunk_size=16; `device` (unset: auto). --policy.discover_packages_path=PKG imports a package "
    "that registers more policy types. List a type's fields: --policy.type=TYPE --help"
)


@dataclass
class TrainEvalConfig:
    """lerobot-train's `--eval.*` for the evaluation during training (`--env.type` + `--env_eval_freq`)."""

    n_episodes: int = option(50, "closed-loop episodes per evaluation (paired: the same episode seeds every time)")

    def __post_init__(self) -> None:
        if self.n_episodes < 1:
            raise ConfigError(f"eval.n_episodes must be >= 1, got {self.n_episodes}.")
        at_most("eval.n_episodes", self.n_episodes, MAX_COUNT)


@dataclass
class TrainConfig:
    """One training stage: 1-RF (`flow_matching`), k+1-RF (`reflow`), one-step `distill`, `shortcut` (1-2 steps)
    or `meanflow` (1 step)."""

    stage: str = option("flow_matching", "flow_matching (1-RF) | reflow (k+1-RF) | distill (num_steps-step student at its Euler grid; 1: t = 1) | redistill "
                                         "(distill at a distilled student's closed-loop states) | shortcut | meanflow")
    output_dir: str = option("outputs/run", "run directory (lerobot-train's layout: checkpoints/<step>, checkpoints/last)")
    seed: int = option(0, "seed of weights, noise, times and batch order")
    cudnn_deterministic: bool = option(False, "deterministic cuDNN kernels (lerobot-train's; GPU only; benchmark mode is never on)")
    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(64, "per process and micro-step")
    gradient_accumulation_steps: int = option(1, "micro-steps per optimizer step")
    mixed_precision: str = option("no", "no | fp16 | bf16 (Accelerate)")
    num_steps: int | None = option(
        None, "inference steps saved in the final checkpoint; null: the stage's (10 for 1-RF, 2 for reflow, 1 for distill)"
    )
    coupling_reuse: int = option(
        1,
        "student updates per batch of (noise, target) pairs, each with fresh t: online reflow solves the teacher "
        "once per r updates (1: every update); steps and save_every must be multiples of it",
    )
    init_from_teacher: bool = option(True, "reflow / distill: the student starts from the teacher's weights")
    ema_decay: float | None = option(None, "EMA of the weights in the final checkpoint, e.g. 0.999; null: no EMA")
    save_every: int = option(0, "also checkpoint every N steps (lerobot-train's save_freq); 0: the final one only")
    save_checkpoint: bool = option(
        True,
        "false: no checkpoints/<step>/ folders (no training state, so nothing to --resume from); the final model "
        "is still written to pretrained_model/ (lerobot-train's --save_checkpoint=false writes nothing at all)",
    )
    log_every: int = option(50, "log metrics every N steps (lerobot-train's log_freq)")
    log_with: list[str] = option(help=f"local trackers: {', '.join(TRACKERS)} (wandb: --wandb.enable=true)", factory=lambda: ["tensorboard"])
    wandb: WandbConfig = option(help="Weights & Biases", factory=WandbConfig)
    job_name: str | None = option(None, "run name for the trackers (lerobot-train's job_name); null: the output dir's name")
    resume: bool = option(False, "continue the run in output_dir from its newest checkpoint, bitwise as if uninterrupted")
    push_to_hub: bool = option(False, "push the final checkpoint + model card (access checked before training); = policy.push_to_hub")
    hub_model_id: str | None = option(None, "namespace/name; the repo is hub_repo_template's (= policy.repo_id: exactly this repo)")
    hub_repo_template: str = option("{hub_model_id}-{k}rf{suffix}", "repo name per stage; may use {hub_model_id}, {k}, {stage}, {suffix} (-distilled, -redistilled, ...)")
    hub_private: bool = option(False, "create the Hub repo private")
    hub_revision: str | None = option(None, "branch to push to (created if missing); null: main")
    hub_set_new_version: bool = option(False, "point the teacher's card to this stage with new_version")
    # Not a constructor argument: `policy_config` resolves it after the rest is decoded (and draccus, which
    # would register every LeRobot policy type's fields for it, taking ~0.3 s a parse, skips it).
    policy: PreTrainedConfig | None = field(default=None, init=False, metadata={"help": POLICY_HELP})
    dataset: DatasetConfig = option(help="the demonstrations", factory=DatasetConfig)
    teacher: TeacherConfig = option(help="the frozen teacher", factory=TeacherConfig)
    couplings: CouplingsConfig = option(help="stored couplings", factory=CouplingsConfig)
    flow: FlowConfig = option(help="flow-matching times and loss", factory=FlowConfig)
    optim: OptimConfig = option(help="optimizer and schedule", factory=OptimConfig)
    shortcut: ShortcutConfig = option(help="the shortcut stage", factory=ShortcutConfig)
    meanflow: MeanFlowConfig = option(help="the meanflow stage", factory=MeanFlowConfig)
    # lerobot-train's evaluation during training: --env.type=TYPE --env.<field>=... (any LeRobot env, kept as
    # given and parsed by LeRobot's EnvConfig), every env_eval_freq steps, eval.n_episodes episodes.
    env: dict[str, Any] | None = option(None, "closed-loop evaluation during training in this LeRobot env: "
                                      "--env.type=TYPE --env.<field>=VALUE (lerobot-train's flags)")
    env_eval_freq: int = option(20_000, "with --env.type: evaluate every N steps and at the end (lerobot-train's)")
    eval: TrainEvalConfig = option(help="evaluation during training", factory=lambda: TrainEvalConfig())

    def __post_init__(self) -> None:
        check_choice("stage", self.stage, STAGES)
        self._check_env()
        check_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        for tracker in self.log_with:
            check_choice("log_with", tracker, TRACKERS, " (wandb: --wandb.enable=true)" if tracker == "wandb" else "")
        if self.stage != "flow_matching" and not self.teacher.path:
            raise ConfigError(
                f"stage {self.stage!r} needs a teacher: set --teacher.path=<k-RF checkpoint dir or Hub repo id>."
            )
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
            at_most(name, getattr(self, name), MAX_COUNT)
        if self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0 (0 = final checkpoint only), got {self.save_every}.")
        if self.save_every and not self.save_checkpoint:
            raise ConfigError(
                f"save_every={self.save_every} asks for checkpoints but save_checkpoint is false; "
                "drop one of the two flags."
            )
        self._check_reuse()
        if self.num_steps is not None and self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}.")
        check_seed(self.seed)
        check_revision("hub_revision", self.hub_revision)
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (e.g. 0.999) or null for no EMA, got {self.ema_decay}.")
        if self.stage in ("shortcut", "meanflow") and self.flow.executed_weight != 1.0:
            raise ConfigError(f"flow.executed_weight is for the flow_matching, reflow and distill losses; the {self.stage} "
                              "stage's loss has no per-action weights: drop it (or set it to 1).")  # fmt: skip
        if self.couplings.path and self.stage == "flow_matching":
            raise ConfigError("couplings.path is for reflow / distill stages; flow_matching trains on the dataset.")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError(
                "push_to_hub needs hub_model_id (namespace/name), e.g. --hub_model_id=you/toy or --policy.repo_id=you/toy-2rf."
            )
        check_repo_template("hub_repo_template", self.hub_repo_template)

    def _check_env(self) -> None:
        if self.env_eval_freq < 1:
            raise ConfigError(f"env_eval_freq must be >= 1, got {self.env_eval_freq}.")

    def _check_reuse(self) -> None:
        # Checkpoints fall on the first update of a batch, so a resumed run needs no couplings it did not save.
        r = self.coupling_reuse
        if r < 1:
            raise ConfigError(f"coupling_reuse must be >= 1 (1 = one update per batch), got {r}.")
        for name in ("steps", "save_every"):
            if getattr(self, name) % r:
                raise ConfigError(
                    f"{name}={getattr(self, name)} is not a multiple of coupling_reuse={r}: each batch of couplings "
                    f"serves {r} updates and checkpoints fall between batches; set {name} to a multiple of {r}."
                )

    @property
    def final_num_steps(self) -> int:
        return self.num_steps if self.num_steps is not None else RECOMMENDED_NUM_STEPS[self.stage]

    def couplings_seen(self, steps: int, num_processes: int) -> int:
        """Couplings drawn (online: made) in the first `steps` updates: a batch of them serves `coupling_reuse`."""
        fresh_batches = -(-steps // self.coupling_reuse) * self.gradient_accumulation_steps  # ceil: a batch starts
        return fresh_batches * self.batch_size * num_processes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as draccus encodes it (the policy with its `type`): a recipe for `--config_path`."""
        return draccus.encode(self)


# Settings that name local paths: stored resolved, so `--config_path=<a run's train_config.json>` reproduces the
# run from any directory. A value that is no local path (a Hub id) is kept as given.
PATH_KEYS = (("output_dir",), ("dataset", "root"), ("teacher", "path"), ("couplings", "path"), ("policy", "pretrained_path"))


def resolved_paths(data: dict[str, Any]) -> dict[str, Any]:
    """`TrainConfig.to_dict()` with every local path in `PATH_KEYS` made absolute (the output dir always)."""
    data = json.loads(json.dumps(data))  # a deep copy
    for *parents, leaf in PATH_KEYS:
        node = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value and (leaf == "output_dir" or Path(value).exists()):
            node[leaf] = str(Path(value).resolve())
    return data


def save_config(config: TrainConfig, path: Path, record: dict[str, Any] | None = None) -> None:
    """Write `config` (plus `record`, e.g. `optim_used`, ignored when read back) as JSON: a recipe for --config_path."""
    data = {**resolved_paths(config.to_dict()), **(record or {})}
    write_text(path, json.dumps(data, indent=2, sort_keys=True))
