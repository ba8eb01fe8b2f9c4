"""Typed configuration of every command: one dataclass per command, decoded by draccus.

`TrainConfig`, `PipelineConfig`, `EvaluateConfig`, `ToyDataConfig`, `MetaWorldDataConfig`,
`CouplingsGenerateConfig`, `PushConfig` and `SpaceConfig` carry a help string on every field
(`metadata={"help": ...}`, as TRL's configs) that `hf-reflow <command> --help` lists. A recipe
(`--config_path=recipe.yaml`, lerobot-train's flag, or `--config`) is YAML whose keys are the fields (a
run's `train_config.json` is one too); flags use LeRobot's dotted style (`--teacher.path=outputs/1rf`,
`--optim.lr=5e-5`) and win key by key. `hf_reflow.parsing` turns both into draccus's input.

The student's `policy` is a LeRobot `PreTrainedConfig`, resolved at parse time as lerobot-train resolves
`--policy.path` (`policy_config` below): a checkpoint's config.json (`--policy.path`, or the teacher of a
student initialised from it) or a new config of `--policy.type`, with the `--policy.<field>` flags decoded
against that type's config class. Unknown keys, ill-typed values and unknown policy fields fail here, before
any model or dataset loads, with one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import draccus
from lerobot.configs import parser as lerobot_parser
from lerobot.configs.policies import PreTrainedConfig
from lerobot.transforms.transforms import ImageTransformsConfig

from hf_reflow.errors import ConfigError
from hf_reflow.flow import LOSSES, TIME_SAMPLERS, shortcut_levels
from hf_reflow.hub import Hub, revision_problem
from hf_reflow.parsing import (
    DEFAULT_POLICY_TYPE,
    RECORD_KEYS,
    HelpRequested,
    Pair,
    check_policy_keys,
    command_line,
    decode,
    decode_policy,
    flatten,
    parse_env_config,
    policy_config_class,
    rename,
    render_help,
    wants_help,
)
from hf_reflow.policies.factory import supported_policy_types
from hf_reflow.sampling import SOLVERS
from hf_reflow.stages import RECOMMENDED_NUM_STEPS, STAGES, stage_k

# Re-exported: the CLI, the run dir and the pipeline import them from here.
__all__ = ["RECOMMENDED_NUM_STEPS", "RECORD_KEYS", "STAGES", "HelpRequested", "render_help", "stage_k"]

TRACKERS = ("tensorboard", "trackio")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("warmup_cosine", "cosine_decay_with_warmup", "constant")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# `--name` of the seed guide or of lerobot-train -> the TrainConfig key it sets.
ALIASES = {
    "teacher_model_path": "teacher.path",
    "reflow_num_inference_steps": "teacher.num_inference_steps",
    "save_freq": "save_every",
    "log_freq": "log_every",
    "num_workers": "dataset.num_workers",
    "policy.repo_id": "hub_model_id",
    "policy.push_to_hub": "push_to_hub",
    # lerobot-train's optimizer / scheduler flags: the same settings as `optim.*` (a null one takes the preset)
    **{f"optimizer.{k}": f"optim.{k}" for k in ("type", "lr", "weight_decay", "betas", "eps", "grad_clip_norm")},
    "scheduler.type": "optim.scheduler",
    "scheduler.num_warmup_steps": "optim.warmup_steps",
    "scheduler.num_decay_steps": "optim.decay_steps",
    "scheduler.peak_lr": "optim.lr",
}
# lerobot-train flags (`TrainPipelineConfig`) hf-reflow does not honour, refused by name with what to do instead
# (never accepted and ignored). Every other lerobot-train field is accepted: tests/test_configs.py walks them all.
LEROBOT_TRAIN_REFUSED = {
    **dict.fromkeys(("eval.batch_size", "eval.use_async_envs"), "the evaluation during training runs one env in "
                    "the training process; drop the flag"),
    **dict.fromkeys(("eval.recording", "eval.recording_repo_id", "eval.recording_private"),
                    "no episode recording during training; drop the flag (lerobot-eval --eval.recording=true records)"),
    "eval_steps": "no held-out loss during training; `hf-reflow eval --policy.path=RUN --dataset.root=DIR` measures a checkpoint offline",
    "max_eval_samples": "no held-out loss during training; `hf-reflow eval --num_samples=N` measures a checkpoint offline",
    "dataset.eval_split": "no held-out split during training; evaluate on held-out episodes afterwards with `hf-reflow eval`",
    "peft": "every stage trains all of the student's weights (no PEFT / LoRA adapters); drop the --peft.* flags",
    "use_policy_training_preset": "the optimizer and schedule always start from the policy's preset, and each "
    "--optimizer.* / --scheduler.* / --optim.* field given replaces that field; drop the flag",
    "scheduler.decay_lr": "set the final learning rate as a ratio of the peak: --optim.min_lr_ratio=DECAY_LR/LR",
    "scheduler.min_lr_ratio": "set the final learning rate as a ratio of the peak with --optim.min_lr_ratio",
    **dict.fromkeys(("scheduler.name", "scheduler.num_cycles", "scheduler.num_vqvae_training_steps"),
                    f"the schedules are {', '.join(SCHEDULERS)} (--scheduler.type / --optim.scheduler)"),
    **dict.fromkeys(("optimizer.momentum", "optimizer.dampening", "optimizer.nesterov"),
                    "SGD (--optimizer.type=sgd) runs with LeRobot's SGDConfig defaults for momentum, dampening and nesterov"),
    **dict.fromkeys(("optimizer.optimizer_groups", "optimizer.soft_prompt_lr_scale", "optimizer.soft_prompt_warmup_lr_scale"),
                    "one learning rate for every trained parameter (no parameter groups); set it with --optimizer.lr"),
    "reward_model": "reward models are not part of reflow; train with a policy only",
    "sample_weighting": "every frame is weighted equally; drop the flag (or pass --dataset.episodes=[...] for a subset)",
    "rename_map": "observation keys are read as the dataset names them; rename the dataset's features or pick a policy "
    "whose input_features match (--policy.input_features)",
    "checkpoint_path": "continue a run with --resume=true --output_dir=RUN (its newest checkpoint)",
    "save_checkpoint": "the final checkpoint is always written; --save_every=N (save_freq) adds intermediate ones",
    "save_checkpoint_to_hub": "push the final checkpoint and its model card with --push_to_hub=true --hub_model_id=NAMESPACE/NAME",
    "prefetch_factor": "only the DataLoader's worker count is settable: --num_workers (dataset.num_workers)",
    "persistent_workers": "only the DataLoader's worker count is settable: --num_workers (dataset.num_workers)",
    "dataloader_multiprocessing_context": "only the DataLoader's worker count is settable: --num_workers (dataset.num_workers)",
    "tolerance_s": "frames are read by index (the chunk's delta timestamps); drop the flag",
    "job": "no job settings; name the run with --job_name",
    "dataset.repo_type": "datasets are read as Hub datasets (or a local --dataset.root); drop the flag",
    "dataset.revision": "the dataset is read at its main revision; download the one you want (`hf download REPO "
    "--repo-type=dataset --revision=REV --local-dir=DIR`) and pass --dataset.root=DIR",
    "dataset.use_imagenet_stats": "images are normalised with the dataset's own stats (meta/stats.json); drop the flag",
    "dataset.return_uint8": "frames are read as float, as the policies' processors expect; drop the flag",
    "dataset.depth_output_unit": "depth cameras are not read; drop the flag",
    "dataset.streaming": "datasets are read from the local cache (downloaded once), not streamed; drop the flag",
}


def refuse_lerobot_train_flags(keys: list[str]) -> None:
    """A lerobot-train flag hf-reflow does not honour fails by name, saying what to do instead."""
    for key in keys:
        refused = next((k for k in LEROBOT_TRAIN_REFUSED if key == k or key.startswith(k + ".")), None)
        if refused:
            raise ConfigError(f"lerobot-train's --{key} is not supported by hf-reflow: {LEROBOT_TRAIN_REFUSED[refused]}.")
# Set with an alias unless given: lerobot-train pushes to exactly `policy.repo_id`, not a per-stage name.
_ALIAS_DEFAULTS = {"policy.repo_id": {"hub_repo_template": "{hub_model_id}"}}


COUPLING_STATES = ("demonstrations", "closed_loop")


def _at_least(name: str, value: int | float | None, low: int | float) -> None:
    """Refuse `value` below `low` (None passes: the field's default applies)."""
    if value is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}.")


MAX_SEED = 2**32 - 1  # numpy's and CUDA's seeding take 32 bits
MAX_COUNT = 100_000_000  # steps, episodes, couplings: beyond this a run would not end in any sensible time
MAX_ODE_STEPS = 1000  # Euler steps per chunk


def _at_most(name: str, value: int | float | None, high: int | float, hint: str = "") -> None:
    """Refuse `value` above `high` (None passes)."""
    if value is not None and value > high:
        raise ConfigError(f"{name} must be <= {high:,}{hint}, got {value:,}.")


def _seed(value: int | None) -> None:
    _at_least("seed", value, 0)
    _at_most("seed", value, MAX_SEED, " (32 bits)")


def _check_new_folder(flag: str, path: str) -> None:
    """A folder to write a new dataset into: absent or empty, never a file."""
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is a file" if not folder.is_dir() else "already holds files"
        raise ConfigError(f"{flag} {path!r} {what}; pass a new (or empty) folder for the dataset.")


def _output_file(flag: str, path: str | None) -> None:
    """A file to write at the end: its folder must exist now, not after every metric is computed."""
    if path and not Path(path).parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: its folder {str(Path(path).parent)!r} does not exist; create it first.")


def _choice(name: str, value: str, valid: tuple[str, ...], hint: str = "") -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}{hint}.")


N_ACTION_STEPS_HELP = (
    "closed loop: evaluate every cell re-planning after each of these many actions, e.g. 8,4,2 (each <= the "
    "policy's chunk_size); null: each policy's own n_action_steps"
)


def _n_action_steps(values: list[int] | None) -> None:
    if values is not None and (not values or any(not isinstance(n, int) or not 1 <= n <= 1000 for n in values)):
        raise ConfigError(f"n_action_steps must list action counts >= 1, e.g. --n_action_steps=8,4,2; got {values!r}.")


EXPERT_AIM_HELP = (
    "demonstrations only: what the expert puts on the goal. hand = Meta-World's stock experts; fingertips = reach's "
    "success point (the fingertips, 4.5 cm below the hand the observation reports) goes onto the goal, so the "
    "demonstrations cross the 5 cm tolerance still moving (other tasks: unchanged). Evaluation is unchanged"
)
EXPERT_AIMS = ("hand", "fingertips")  # hf_reflow.envs.metaworld.EXPERT_AIMS (envs sit below configs: checked equal in tests)
HOLD_STEPS_HELP = (
    "demonstrations only: the expert goes on this many env steps after its first success (within the horizon), "
    "so they show the last centimetres done with margin; 0 = they end at the first success. Evaluation is unchanged"
)


def _revision(name: str, value: str | None) -> None:
    problem = revision_problem(value)
    if problem:
        raise ConfigError(f"{name} {str(value)[:200]!r} is not a valid Hub revision: {problem}; use e.g. main, v1.0 or a commit hash.")


def _opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with its `--help` string."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DatasetConfig:
    """Where the demonstrations come from (any LeRobotDataset)."""

    repo_id: str = _opt("local/dataset", "Hub dataset id, or any name when `root` holds the dataset")
    root: str | None = _opt(None, "local LeRobotDataset folder; null: the Hugging Face cache / Hub")
    episodes: list[int] | None = _opt(None, "subset of episode indices; null: all")
    num_workers: int = _opt(0, "DataLoader worker processes")
    in_memory: str = _opt("auto", "auto (small datasets without images) | always | never: hold the frames in memory")
    video_backend: str | None = _opt(None, "video decoder: torchcodec | pyav; null: torchcodec when its FFmpeg loads, else pyav")
    image_transforms: ImageTransformsConfig = _opt(
        help="lerobot-train's image augmentation (LeRobot's ImageTransforms): --dataset.image_transforms.enable=true",
        factory=ImageTransformsConfig,
    )

    def __post_init__(self) -> None:
        _choice("dataset.in_memory", self.in_memory, ("auto", "always", "never"))
        if self.video_backend is not None:
            _choice("dataset.video_backend", self.video_backend, ("torchcodec", "pyav"))
        if self.num_workers < 0:
            raise ConfigError(f"dataset.num_workers must be >= 0, got {self.num_workers}.")
        if self.episodes is not None and not self.episodes:
            raise ConfigError("dataset.episodes is an empty list; list episode indices, e.g. [0,1,2], or null for all.")
        for episode in self.episodes or []:
            _at_least("each of dataset.episodes", episode, 0)


@dataclass
class TeacherConfig:
    """The frozen k-RF teacher whose ODE end points become the student's targets (reflow, distill)."""

    path: str | None = _opt(None, "Hub repo id or local checkpoint / run dir (the guide's teacher_model_path)")
    revision: str | None = _opt(None, "Hub revision (branch, tag or commit) of the teacher")
    num_inference_steps: int = _opt(10, "the teacher's ODE steps per coupling (the guide's reflow_num_inference_steps)")
    solver: str = _opt("euler", "euler (LeRobot's grid) | heun: the teacher's ODE solver")
    shared_backbone: bool | None = _opt(
        None,
        "null (auto): a teacher whose frozen VLM equals the student's (SmolVLA with train_expert_only, student "
        "initialised from it) uses the student's VLM module and the VLM prefix is computed once per batch; "
        "true: the same, but an error when it cannot be shared; false: the teacher keeps its own VLM copy",
    )
    compile: bool = _opt(
        False, "torch.compile the teacher's velocity call (first batches pay the compile; same couplings within 1e-5)"
    )

    def __post_init__(self) -> None:
        _choice("teacher.solver", self.solver, SOLVERS)
        _revision("teacher.revision", self.revision)
        if self.num_inference_steps < 1:
            raise ConfigError(f"teacher.num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        _at_most("teacher.num_inference_steps", self.num_inference_steps, MAX_ODE_STEPS)


@dataclass
class CouplingsConfig:
    """Stored reflow couplings (`hf-reflow couplings generate`) used instead of online generation."""

    path: str | None = _opt(None, "couplings folder or Hub dataset repo id; null: couplings made online per batch")
    revision: str | None = _opt(None, "Hub revision of the couplings dataset")

    def __post_init__(self) -> None:
        _revision("couplings.revision", self.revision)


@dataclass
class FlowConfig:
    """How training times are drawn and velocity errors are scored."""

    time_sampler: str = _opt("beta", f"training-time distribution: {' | '.join(TIME_SAMPLERS)} (beta: SmolVLA's)")
    loss: str = _opt("mse", f"velocity loss: {' | '.join(LOSSES)}")
    logit_mean: float = _opt(0.0, "logit_normal sampler: mean")
    logit_std: float = _opt(1.0, "logit_normal sampler: standard deviation")
    u_shaped_a: float = _opt(4.0, "u_shaped sampler: concentration at both ends (Lee et al. 2024)")

    def __post_init__(self) -> None:
        _choice("flow.time_sampler", self.time_sampler, TIME_SAMPLERS)
        _choice("flow.loss", self.loss, LOSSES)
        for name in ("logit_std", "u_shaped_a"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"flow.{name} must be > 0, got {getattr(self, name)}.")


@dataclass
class OptimConfig:
    """Optimizer and LR schedule. A field left null takes the policy's own LeRobot preset
    (`policy.config.get_optimizer_preset()` / `get_scheduler_preset()`, what lerobot-train uses); a value
    given here wins. `train_config.json` records what was used (`optim_used`)."""

    lr: float | None = _opt(None, "peak learning rate; null: the preset's")
    weight_decay: float | None = _opt(None, "weight decay; null: the preset's")
    betas: list[float] | None = _opt(None, "Adam betas, e.g. [0.9, 0.95]; null: the preset's")
    eps: float | None = _opt(None, "Adam epsilon; null: the preset's")
    grad_clip_norm: float | None = _opt(None, "gradient-norm clipping (0 = off); null: the preset's")
    type: str | None = _opt(None, f"optimizer: {' | '.join(OPTIMIZERS)}; null: the preset's")
    scheduler: str | None = _opt(
        None,
        "LR schedule: warmup_cosine (linear warmup, then cosine to min_lr_ratio x lr at the last step) | "
        "cosine_decay_with_warmup (LeRobot's, pi0 / SmolVLA presets) | constant; null: the preset's",
    )
    warmup_steps: int | None = _opt(None, "linear-warmup steps; null: the preset's")
    decay_steps: int | None = _opt(None, "cosine_decay_with_warmup: decay steps; null: the preset's")
    min_lr_ratio: float | None = _opt(None, "final LR / peak LR of the cosine decay; null: the preset's")

    def __post_init__(self) -> None:
        if self.type is not None:
            _choice("optim.type", self.type, OPTIMIZERS)
        if self.scheduler is not None:
            _choice("optim.scheduler", self.scheduler, SCHEDULERS)
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
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass
class ShortcutConfig:
    """The `shortcut` stage: one network for 1 and 2 steps (Frans et al. 2024; SnapFlow, arXiv 2604.05656).

    The student starts as its teacher, plus a step-size input whose last layer is zero (so it reproduces
    the teacher exactly at step 0). Its loss: the flow loss on the teacher's couplings at the smallest
    step size (`min_step`, its plain flow) + `consistency_weight` x the self-consistency loss (one step
    of 2d = two steps of d of its own velocity, for 2d in 2 min_step .. 1).
    """

    min_step: float = _opt(0.125, "smallest step size, 1 / 2^n (its plain flow)")
    consistency_weight: float = _opt(1.0, "weight of the self-consistency loss")

    def __post_init__(self) -> None:
        try:
            if len(shortcut_levels(self.min_step)) < 2:
                raise ValueError("min_step 1 leaves nothing to distil")
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"shortcut.min_step must be 1 / 2^n with n >= 1, e.g. 0.125; got {self.min_step} ({e}).") from None
        if not math.isfinite(self.consistency_weight) or self.consistency_weight < 0:
            raise ConfigError(f"shortcut.consistency_weight must be finite and >= 0, got {self.consistency_weight}.")


@dataclass
class WandbConfig:
    """Weights & Biases, configured as lerobot-train's `--wandb.*` (main process only, Accelerate's tracker)."""

    enable: bool = _opt(False, "log to Weights & Biases (beside log_with's trackers)")
    project: str = _opt("hf-reflow", "W&B project")
    entity: str | None = _opt(None, "W&B entity (user or team); null: your default")
    notes: str | None = _opt(None, "W&B run notes")
    run_id: str | None = _opt(None, "W&B run id, e.g. to continue a run after --resume=true")
    mode: str | None = _opt(None, "online | offline (no network; `wandb sync` later) | disabled; null: WANDB_MODE or online")
    add_tags: bool = _opt(True, "tag the run policy:TYPE, seed:N, dataset:REPO_ID, stage:STAGE (lerobot-train's tags + the stage)")
    disable_artifact: bool = _opt(False, "false: log the final model.safetensors as a W&B model artifact, as lerobot-train does")

    def __post_init__(self) -> None:
        if self.mode is not None:
            _choice("wandb.mode", self.mode, ("online", "offline", "disabled"))


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

    n_episodes: int = _opt(50, "closed-loop episodes per evaluation (paired: the same episode seeds every time)")

    def __post_init__(self) -> None:
        if self.n_episodes < 1:
            raise ConfigError(f"eval.n_episodes must be >= 1, got {self.n_episodes}.")
        _at_most("eval.n_episodes", self.n_episodes, MAX_COUNT)


@dataclass
class TrainConfig:
    """One training stage: 1-RF (`flow_matching`), k+1-RF (`reflow`), one-step `distill` or `shortcut` (1-2 steps)."""

    stage: str = _opt("flow_matching", "flow_matching (1-RF) | reflow (k+1-RF) | distill (1-step student, t = 1) | shortcut")
    output_dir: str = _opt("outputs/run", "run directory (lerobot-train's layout: checkpoints/<step>, checkpoints/last)")
    seed: int = _opt(0, "seed of weights, noise, times and batch order")
    cudnn_deterministic: bool = _opt(False, "deterministic cuDNN kernels (lerobot-train's; GPU only; benchmark mode is never on)")
    steps: int = _opt(1000, "optimizer steps")
    batch_size: int = _opt(64, "per process and micro-step")
    gradient_accumulation_steps: int = _opt(1, "micro-steps per optimizer step")
    mixed_precision: str = _opt("no", "no | fp16 | bf16 (Accelerate)")
    num_steps: int | None = _opt(
        None, "inference steps saved in the final checkpoint; null: the stage's (10 for 1-RF, 2 for reflow, 1 for distill)"
    )
    coupling_reuse: int = _opt(
        1,
        "student updates per batch of (noise, target) pairs, each with fresh t: online reflow solves the teacher "
        "once per r updates (1: every update); steps and save_every must be multiples of it",
    )
    init_from_teacher: bool = _opt(True, "reflow / distill: the student starts from the teacher's weights")
    ema_decay: float | None = _opt(None, "EMA of the weights in the final checkpoint, e.g. 0.999; null: no EMA")
    save_every: int = _opt(0, "also checkpoint every N steps (lerobot-train's save_freq); 0: the final one only")
    log_every: int = _opt(50, "log metrics every N steps (lerobot-train's log_freq)")
    log_with: list[str] = _opt(help=f"local trackers: {', '.join(TRACKERS)} (wandb: --wandb.enable=true)", factory=lambda: ["tensorboard"])
    wandb: WandbConfig = _opt(help="Weights & Biases", factory=WandbConfig)
    job_name: str | None = _opt(None, "run name for the trackers (lerobot-train's job_name); null: the output dir's name")
    resume: bool = _opt(False, "continue the run in output_dir from its newest checkpoint, bitwise as if uninterrupted")
    push_to_hub: bool = _opt(False, "push the final checkpoint + model card (access checked before training); = policy.push_to_hub")
    hub_model_id: str | None = _opt(None, "namespace/name; the repo is hub_repo_template's (= policy.repo_id: exactly this repo)")
    hub_repo_template: str = _opt("{hub_model_id}-{k}rf{suffix}", "repo name per stage; may use {hub_model_id}, {k}, {stage}, {suffix} (-distilled)")
    hub_private: bool = _opt(False, "create the Hub repo private")
    hub_revision: str | None = _opt(None, "branch to push to (created if missing); null: main")
    hub_set_new_version: bool = _opt(False, "point the teacher's card to this stage with new_version")
    # Not a constructor argument: `policy_config` resolves it after the rest is decoded (and draccus, which
    # would register every LeRobot policy type's fields for it, taking ~0.3 s a parse, skips it).
    policy: PreTrainedConfig | None = field(default=None, init=False, metadata={"help": POLICY_HELP})
    dataset: DatasetConfig = _opt(help="the demonstrations", factory=DatasetConfig)
    teacher: TeacherConfig = _opt(help="the frozen teacher", factory=TeacherConfig)
    couplings: CouplingsConfig = _opt(help="stored couplings", factory=CouplingsConfig)
    flow: FlowConfig = _opt(help="flow-matching times and loss", factory=FlowConfig)
    optim: OptimConfig = _opt(help="optimizer and schedule", factory=OptimConfig)
    shortcut: ShortcutConfig = _opt(help="the shortcut stage", factory=ShortcutConfig)
    # lerobot-train's evaluation during training: --env.type=TYPE --env.<field>=... (any LeRobot env, kept as
    # given and parsed by LeRobot's EnvConfig), every env_eval_freq steps, eval.n_episodes episodes.
    env: dict[str, Any] | None = _opt(None, "closed-loop evaluation during training in this LeRobot env: "
                                      "--env.type=TYPE --env.<field>=VALUE (lerobot-train's flags)")
    env_eval_freq: int = _opt(20_000, "with --env.type: evaluate every N steps and at the end (lerobot-train's)")
    eval: TrainEvalConfig = _opt(help="evaluation during training", factory=lambda: TrainEvalConfig())

    def __post_init__(self) -> None:
        _choice("stage", self.stage, STAGES)
        self._check_env()
        _choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        for tracker in self.log_with:
            _choice("log_with", tracker, TRACKERS, " (wandb: --wandb.enable=true)" if tracker == "wandb" else "")
        if self.stage != "flow_matching" and not self.teacher.path:
            raise ConfigError(
                f"stage {self.stage!r} needs a teacher: set --teacher.path=<k-RF checkpoint dir or Hub repo id>."
            )
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
            _at_most(name, getattr(self, name), MAX_COUNT)
        if self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0 (0 = final checkpoint only), got {self.save_every}.")
        self._check_reuse()
        if self.num_steps is not None and self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}.")
        _seed(self.seed)
        _revision("hub_revision", self.hub_revision)
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (e.g. 0.999) or null for no EMA, got {self.ema_decay}.")
        if self.couplings.path and self.stage == "flow_matching":
            raise ConfigError("couplings.path is for reflow / distill stages; flow_matching trains on the dataset.")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError(
                "push_to_hub needs hub_model_id (namespace/name), e.g. --hub_model_id=you/toy or --policy.repo_id=you/toy-2rf."
            )
        try:
            self.hub_repo_template.format(hub_model_id="a/b", k=1, stage="reflow", suffix="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"hub_repo_template {self.hub_repo_template!r} is invalid ({e!r}); it may use {{hub_model_id}}, {{k}}, "
                "{stage} and {suffix}, e.g. '{hub_model_id}-{k}rf{suffix}'."
            ) from None

    def _check_env(self) -> None:
        if self.env_eval_freq < 1:
            raise ConfigError(f"env_eval_freq must be >= 1, got {self.env_eval_freq}.")
        if self.env is not None:
            parse_env_config([f"--env.{k}={v}" for k, v in self.env.items()])  # a wrong type or field fails now

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict (a parsed recipe), as a recipe file would be read."""
        return train_config(flatten(data))


# ---------------------------------------------------------------------------------------------
# The other commands: eval, dataset, couplings, push, space.


@dataclass
class EvalPolicyConfig:
    """The checkpoints to evaluate."""

    path: list[str] = _opt(help="checkpoint dirs / run dirs / Hub ids, comma-separated (required)", factory=list)


@dataclass
class EvaluateConfig:
    """`hf-reflow eval`: offline metrics (and closed loop with --env) of checkpoints at each step count."""

    policy: EvalPolicyConfig = _opt(help="the checkpoints", factory=EvalPolicyConfig)
    dataset: DatasetConfig = _opt(help="held-out observations (and the toy env's goals)", factory=DatasetConfig)
    nfe: list[int] = _opt(help="Euler step counts to evaluate, e.g. 1,2,4,10", factory=lambda: [1, 2, 4, 10])
    num_samples: int = _opt(64, "held-out observations for the offline metrics")
    env: str = _opt("none", "closed loop: none | toy | metaworld; or any LeRobot env with lerobot-eval's "
                    "--env.type=TYPE --env.<field>=... (e.g. --env.type=metaworld_detour --env.task=push-v3)")
    episodes: int = _opt(50, "closed-loop episodes (per task with metaworld or a LeRobot env)")
    seed: int = _opt(0, "seed of noise and episodes")
    output: str | None = _opt(None, "write the rows as JSON here")
    tasks: list[str] = _opt(help="metaworld: tasks to roll out", factory=lambda: ["reach-v3", "push-v3"])
    mode: str = _opt("multimodal", "metaworld: multimodal (detour left / right of an obstacle) | scripted")
    workers: int = _opt(0, "metaworld: rollout processes; 0 = one per CPU core")
    n_action_steps: list[int] | None = _opt(None, N_ACTION_STEPS_HELP)
    HELP_EXTRA: ClassVar[tuple[str, ...]] = (
        "  --env.type=TYPE  (str)",
        "      closed loop in any LeRobot env type (lerobot-eval's flag; plugins' types too), e.g. metaworld_detour",
        "  --env.<field>=VALUE",
        "      a field of that env type's LeRobot config, e.g. --env.task=push-v3",
    )

    def __post_init__(self) -> None:
        _seed(self.seed)
        _n_action_steps(self.n_action_steps)
        if not self.policy.path:
            raise ConfigError("--policy.path is required (one checkpoint, or several separated by commas).")
        _choice("env", self.env, ("none", "toy", "metaworld"))
        if not self.nfe or any(not 1 <= n <= MAX_ODE_STEPS for n in self.nfe):
            raise ConfigError(f"nfe must list step counts in 1..{MAX_ODE_STEPS}, e.g. --nfe=1,2,4,10; got {self.nfe}.")
        for name in ("num_samples", "episodes", "workers"):
            if getattr(self, name) < (1 if name == "num_samples" else 0):
                raise ConfigError(f"{name} must be >= {1 if name == 'num_samples' else 0}, got {getattr(self, name)}.")
            _at_most(name, getattr(self, name), MAX_COUNT)
        if self.env == "metaworld":
            DemoConfig(tasks=self.tasks, mode=self.mode)  # checks the mode
        _output_file("--output", self.output)


@dataclass
class ToyDataConfig:
    """`hf-reflow dataset toy`: the 2-D bimodal toy demonstrations as a LeRobotDataset."""

    root: str | None = _opt(None, "folder to write the dataset into (required)")
    episodes: int = _opt(200, "expert episodes")
    seed: int = _opt(0, "seed of the episodes")
    repo_id: str = _opt("local/toy", "dataset repo id written into its metadata")

    def __post_init__(self) -> None:
        _seed(self.seed)
        if not self.root:
            raise ConfigError("--root is required: the folder to write the dataset into.")
        _check_new_folder("--root", self.root)
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}.")
        _at_most("episodes", self.episodes, 1_000_000)


@dataclass
class MetaWorldDataConfig:
    """`hf-reflow dataset metaworld`: Meta-World expert demonstrations as a LeRobotDataset."""

    root: str | None = _opt(None, "folder to write the dataset into (required)")
    tasks: list[str] = _opt(help="Meta-World tasks, e.g. reach-v3,push-v3", factory=lambda: ["reach-v3", "push-v3"])
    episodes: int = _opt(100, "expert episodes attempted per task (failed ones are dropped and counted)")
    mode: str = _opt("multimodal", "multimodal (detour left / right of an obstacle) | scripted")
    seed: int = _opt(0, "seed of the episodes")
    images: bool = _opt(False, "also render a camera image per frame (for VLA policies)")
    image_size: int = _opt(96, "rendered image size in pixels")
    repo_id: str = _opt("local/metaworld", "dataset repo id written into its metadata")
    layout: str = _opt("demo", "demo (training layouts) | eval (held-out layouts)")
    hold_steps: int = _opt(0, HOLD_STEPS_HELP)
    expert_aim: str = _opt("hand", EXPERT_AIM_HELP)
    policy_path: str | None = _opt(
        None, "roll out this checkpoint (local or Hub id) instead of the expert, keeping every episode: the states "
        "a frozen teacher visits in closed loop, for reflow couplings (`hf-reflow couplings generate` on them)"
    )

    def __post_init__(self) -> None:
        _seed(self.seed)
        if not self.root:
            raise ConfigError("--root is required: the folder to write the dataset into.")
        _check_new_folder("--root", self.root)
        _choice("layout", self.layout, ("demo", "eval"), " (demo: training layouts, eval: held-out layouts)")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}.")
        DemoConfig(tasks=self.tasks, episodes=self.episodes, mode=self.mode, hold_steps=self.hold_steps,
                   expert_aim=self.expert_aim)  # the recipe's checks  # fmt: skip


@dataclass
class CouplingsGenerateConfig:
    """`hf-reflow couplings generate`: (noise, teacher end point) couplings written once as a dataset."""

    teacher: TeacherConfig = _opt(help="the frozen teacher (path required)", factory=TeacherConfig)
    dataset: DatasetConfig = _opt(help="observations to condition on", factory=DatasetConfig)
    output: str | None = _opt(None, "folder to write the couplings into (required)")
    num_couplings: int = _opt(10_000, "couplings to generate")
    block_size: int = _opt(1024, "couplings per stored block")
    batch_size: int = _opt(256, "teacher batch size")
    seed: int = _opt(0, "seed of noise and observation order")

    def __post_init__(self) -> None:
        _seed(self.seed)
        if not self.teacher.path or not self.output:
            raise ConfigError("--teacher.path=CHECKPOINT (local or Hub id) and --output=DIR are required.")
        for name in ("num_couplings", "block_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
            _at_most(name, getattr(self, name), MAX_COUNT)
        if self.dataset.root and Path(self.output).resolve().is_relative_to(Path(self.dataset.root).resolve()):
            raise ConfigError(
                f"--output={self.output!r} lies inside the dataset --dataset.root={self.dataset.root!r}, whose files it "
                "would mix with; write the couplings to a folder of their own."
            )


@dataclass
class PushConfig:
    """`hf-reflow push`: a checkpoint (+ model card) as a Hub model, or stored couplings as a Hub dataset."""

    checkpoint: str | None = _opt(None, "checkpoint or run dir to push as a model")
    couplings: str | None = _opt(None, "couplings folder to push as a dataset")
    repo_id: str | None = _opt(None, "namespace/name (required)")
    eval: str | None = _opt(None, "results JSON (hf-reflow eval --output) for the model card")
    private: bool = _opt(False, "create the repo private")
    revision: str | None = _opt(None, "branch to push to (created if missing); null: main")
    commit_message: str | None = _opt(None, "commit message; null: a generated one")
    license: str | None = _opt(None, "license in the card; null: the starting checkpoint's, else apache-2.0")
    set_new_version: bool = _opt(False, "also point the teacher's card to this repo with new_version")

    def __post_init__(self) -> None:
        _revision("revision", self.revision)
        if not self.repo_id or bool(self.checkpoint) == bool(self.couplings):
            raise ConfigError(
                "push needs --repo_id=namespace/name and one of --checkpoint=DIR (a model) or --couplings=DIR (a dataset), "
                "e.g. --checkpoint=outputs/toy/2rf --repo_id=you/toy-2rf."
            )
        for flag, path in (("--checkpoint", self.checkpoint), ("--couplings", self.couplings)):
            if path and not Path(path).is_dir():
                what = "checkpoint" if flag == "--checkpoint" else "couplings folder"
                raise ConfigError(f"no {what} at {path!r} ({flag} must be a local folder to push).")
        if self.eval and not Path(self.eval).is_file():
            raise ConfigError(f"cannot read eval results: --eval file {self.eval!r} not found; pass the JSON written by `hf-reflow eval --output=...`.")


@dataclass
class SpaceDatasetConfig:
    """Observations the Space samples from; null: the chain's."""

    root: str | None = _opt(None, "local LeRobotDataset folder")
    repo_id: str | None = _opt(None, "dataset repo id")


@dataclass
class SpaceConfig:
    """`hf-reflow space`: serve the Gradio Space on 127.0.0.1, write it out for deployment, or push it to the Hub."""

    chain: str | None = _opt(None, "a pipeline output dir (its pipeline.json lists the stages)")
    policies: list[str] | None = _opt(None, "checkpoints to compare instead of a chain, comma-separated")
    dataset: SpaceDatasetConfig = _opt(help="observations", factory=SpaceDatasetConfig)
    env: str | None = _opt(None, "closed-loop env: toy | metaworld; null: from the chain")
    port: int | None = _opt(None, "server port (1..65535); null: Gradio's default")
    allow_any_policy: bool = _opt(False, "let visitors load any local path / Hub id, not only the chain's stages (a private server only)")
    bundle: str | None = _opt(None, "write a deployable Space showing --chain (Hub ids, as --push) to this folder instead of serving")
    push: bool = _opt(False, "push a Gradio Space showing the chain (Hub ids: pushed stages or --chain=a/x-1rf,a/x-2rf) to repo_id")
    repo_id: str | None = _opt(None, "the Space to push to, namespace/name (with --push=true)")
    private: bool = _opt(False, "create the Space private (with --push=true)")

    def __post_init__(self) -> None:
        if self.push and not self.repo_id:
            raise ConfigError("--push=true needs --repo_id=namespace/name of the Space, e.g. --repo_id=you/reflow-compare.")
        if self.repo_id and not self.push:
            raise ConfigError("--repo_id names the Space to push to; add --push=true (or drop --repo_id to serve locally).")
        if self.push and self.bundle:
            raise ConfigError("choose one of --push=true (push the Space) or --bundle=DIR (write it to a folder).")
        if self.push and self.dataset.root:
            raise ConfigError("a pushed Space cannot read a local --dataset.root; pass a Hub dataset as --dataset.repo_id.")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535; got {self.port}.")
        if self.allow_any_policy and (self.push or self.bundle):
            raise ConfigError("allow_any_policy is for a server you run yourself; a pushed or bundled Space loads only its chain.")


# ---------------------------------------------------------------------------------------------
# The k-RF pipeline (`hf-reflow pipeline`): demonstrations -> 1-RF -> reflow rounds -> distill -> eval.

PIPELINE_STAGES = ("flow_matching", "reflow", "distill", "shortcut")


@dataclass
class DemoConfig:
    """Meta-World expert demonstrations written as a LeRobotDataset by the pipeline."""

    tasks: list[str] = _opt(help="Meta-World tasks", factory=lambda: ["reach-v3", "push-v3"])
    episodes: int = _opt(100, "expert episodes attempted per task (failed ones are dropped and counted)")
    mode: str = _opt("multimodal", "multimodal (detour left/right of an obstacle) | scripted")
    seed: int = _opt(0, "seed of the episodes")
    images: bool = _opt(False, "also render a small camera image per frame (for VLA policies)")
    image_size: int = _opt(96, "rendered image size in pixels")
    heldout_episodes: int = _opt(10, "expert episodes per task on evaluation layouts, for offline metrics")
    hold_steps: int = _opt(0, HOLD_STEPS_HELP)
    expert_aim: str = _opt("hand", EXPERT_AIM_HELP)

    def __post_init__(self) -> None:
        _seed(self.seed)
        _choice("data.mode", self.mode, ("multimodal", "scripted"))
        _choice("data.expert_aim", self.expert_aim, EXPERT_AIMS)
        if self.episodes < 1 or self.heldout_episodes < 1:
            raise ConfigError(
                f"data.episodes and data.heldout_episodes must be >= 1, got {self.episodes} and "
                f"{self.heldout_episodes}; e.g. --data.episodes=100."
            )
        _at_most("data.episodes", self.episodes, 1_000_000)
        _at_least("data.hold_steps", self.hold_steps, 0)
        _at_most("data.hold_steps", self.hold_steps, 1000)
        _at_most("data.heldout_episodes", self.heldout_episodes, 1_000_000)


@dataclass
class EvalConfig:
    """Evaluation of every stage at every step count."""

    nfe: list[int] = _opt(help="Euler step counts", factory=lambda: [1, 2, 4, 10])
    episodes: int = _opt(50, "closed-loop episodes per task and cell (stage x step count)")
    num_samples: int = _opt(256, "held-out observations for the offline metrics")
    workers: int = _opt(0, "rollout processes; 0 = one per CPU core")
    n_action_steps: list[int] | None = _opt(None, N_ACTION_STEPS_HELP)

    def __post_init__(self) -> None:
        _n_action_steps(self.n_action_steps)
        if not self.nfe or any(not isinstance(n, int) or not 1 <= n <= 100 for n in self.nfe):
            raise ConfigError(f"eval.nfe must be a list of step counts in 1..100, got {self.nfe!r}.")
        if self.episodes < 0 or self.num_samples < 1:
            raise ConfigError(f"eval.episodes must be >= 0 and eval.num_samples >= 1, got {self.episodes}, {self.num_samples}.")
        _at_most("eval.episodes", self.episodes, 1_000_000)
        _at_most("eval.num_samples", self.num_samples, MAX_COUNT)


@dataclass
class PipelinePushConfig:
    """After evaluation, push the first seed's stages (cards, lineage, eval table) to the Hub, then a Gradio
    Space showing that chain; write access to every repo is checked before anything trains."""

    hub_model_id: str | None = _opt(None, "namespace/name the stage repos are named from (hub_repo_template); null: push nothing")
    hub_repo_template: str = _opt("{hub_model_id}-{k}rf{suffix}", "repo name per stage, as train's: {hub_model_id}, {k}, {stage}, {suffix} (-distilled, -shortcut)")
    space_id: str | None = _opt(None, "namespace/name of a Gradio Space showing the pushed chain; null: no Space")
    private: bool = _opt(False, "create the model repos and the Space private")

    def __post_init__(self) -> None:
        if self.space_id and not self.hub_model_id:
            raise ConfigError("push.space_id shows the pushed chain: also set push.hub_model_id=namespace/name.")
        for name in ("hub_model_id", "space_id"):
            value = getattr(self, name)
            if value is not None and not _REPO_ID.match(value):
                raise ConfigError(f"push.{name} must be namespace/name, got {value!r}.")
        try:
            self.hub_repo_template.format(hub_model_id="a/b", k=1, stage="reflow", suffix="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"push.hub_repo_template {self.hub_repo_template!r} is invalid ({e!r}); it may use {{hub_model_id}}, "
                "{k}, {stage} and {suffix}, e.g. '{hub_model_id}-{k}rf{suffix}'."
            ) from None


_SECTION_HELP = "TrainConfig fields (any `hf-reflow train` option) for the {} stage, on top of `train`"


@dataclass
class PipelineConfig:
    """The whole k-RF chain. `stages` is the chain in order, e.g. [flow_matching, reflow, reflow, distill]
    for 1-RF -> 2-RF -> 3-RF -> distilled; each stage trains from the previous one as teacher.

    `train` holds `TrainConfig` fields shared by every stage; `flow_matching`, `reflow` and `distill`
    hold each stage's own fields on top (e.g. steps, optim.lr, flow.time_sampler).
    """

    output_dir: str = _opt("outputs/metaworld", "where the data, every stage's run and the report go")
    seeds: list[int] = _opt(help="training seeds; one chain per seed", factory=lambda: [0])
    stages: list[str] = _opt(help="the chain in order, flow_matching first", factory=lambda: ["flow_matching", "reflow", "distill"])
    force: bool = _opt(False, "redo finished stages (and the dataset) instead of skipping them")
    num_couplings: int = _opt(
        0,
        "reflow / distill targets: 0 = couplings made online for every batch by the frozen teacher; N > 0 = "
        "N couplings generated once per stage (`hf-reflow couplings generate`), then trained on like data",
    )
    coupling_states: str = _opt(
        "demonstrations",
        "the observations the teacher's couplings are made at: demonstrations (the dataset's frames) | closed_loop "
        "(the states the frozen teacher visits when it acts, on demonstration layouts: `data.episodes` rollouts "
        "per task, failures kept)",
    )
    data: DemoConfig = _opt(help="the demonstrations", factory=DemoConfig)
    eval: EvalConfig = _opt(help="evaluation of every stage", factory=EvalConfig)
    push: PipelinePushConfig = _opt(help="push the chain and a Space to the Hub", factory=PipelinePushConfig)
    train: dict[str, Any] = _opt(help="TrainConfig fields (any `hf-reflow train` option) shared by every stage", factory=dict)
    flow_matching: dict[str, Any] = _opt(help=_SECTION_HELP.format("flow_matching"), factory=dict)
    reflow: dict[str, Any] = _opt(help=_SECTION_HELP.format("reflow"), factory=dict)
    distill: dict[str, Any] = _opt(help=_SECTION_HELP.format("distill"), factory=dict)
    shortcut: dict[str, Any] = _opt(help=_SECTION_HELP.format("shortcut"), factory=dict)

    def __post_init__(self) -> None:
        for stage in self.stages:
            _choice("stages[]", stage, PIPELINE_STAGES)
        if not self.stages or self.stages[0] != "flow_matching" or "flow_matching" in self.stages[1:]:
            raise ConfigError(
                f"stages must start with flow_matching (the 1-RF) and use it once, got {self.stages}; "
                "e.g. [flow_matching, reflow, distill]."
            )
        if self.num_couplings < 0:
            raise ConfigError(f"num_couplings must be >= 0 (0 = online couplings), got {self.num_couplings}.")
        _at_most("num_couplings", self.num_couplings, MAX_COUNT)
        _choice("coupling_states", self.coupling_states, COUPLING_STATES)
        if not self.seeds:
            raise ConfigError("seeds must list at least one training seed, e.g. [0] or [0, 1, 2].")
        for seed in self.seeds:
            _at_least("each of seeds", seed, 0)
        self.check_stages()

    def check_stages(self) -> None:
        """Build every stage's config now (unknown keys fail before an hour of training). Later stages'
        policy settings are checked against the 1-RF's policy config, which stands in for their teachers."""
        check = {"seed": 0, "output_dir": "<check>", "dataset_root": "<check>"}
        first = self.stage_config("flow_matching", teacher=None, **check)
        stand_in = draccus.encode(first.policy, PreTrainedConfig)
        for stage in PIPELINE_STAGES[1:]:
            self.stage_config(stage, teacher="<check>", teacher_config=stand_in, **check)

    def stage_config(
        self, stage: str, *, seed: int, output_dir: str, teacher: str | None, dataset_root: str,
        couplings: str | None = None, teacher_config: dict[str, Any] | None = None,
    ) -> TrainConfig:  # fmt: skip
        """The `TrainConfig` of one stage: `train` + the stage's section + what the pipeline decides.
        `teacher_config` (a config.json's mapping) stands in for the teacher's when it does not exist yet."""
        decided = {"stage": stage, "seed": seed, "output_dir": output_dir, "resume": True,
                   "dataset.root": dataset_root, "dataset.repo_id": "local/metaworld"}  # fmt: skip
        if stage != "flow_matching":
            decided["teacher.path"] = teacher
        if couplings is not None:
            decided["couplings.path"] = couplings
        pairs = rename(flatten(self.train) + flatten(getattr(self, stage)), ALIASES)
        pairs += [Pair(key, value, raw=False) for key, value in decided.items()]
        try:
            return train_config(pairs, teacher_config=teacher_config)
        except ConfigError as e:
            raise ConfigError(f"stage {stage}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Parsing: the command line (+ recipe) of each command -> its dataclass.


def parse_config(cls: type, args: list[str], *, command: str) -> Any:
    """Build dataclass `cls` from `--config_path=recipe.yaml` (optional) plus dotted flags.

    `-h` / `--help` anywhere raises `HelpRequested` with the command's help text.
    """
    if wants_help(args):
        raise HelpRequested(render_help(cls, command))
    return decode(cls, command_line(args)).config


def parse_train_config(args: list[str]) -> TrainConfig:
    """A `TrainConfig` from `--config_path=recipe.yaml` (optional) plus flags, its policy resolved."""
    if wants_help(args):
        raise HelpRequested(render_help(TrainConfig, "train", aliases=ALIASES, policy_type=_help_policy_type(args)))
    pairs = command_line(args)
    given = {p.key for p in pairs}
    refuse_lerobot_train_flags(list(given))
    for alias, defaults in _ALIAS_DEFAULTS.items():
        if alias in given:
            pairs = [Pair(k, v, raw=False) for k, v in defaults.items() if k not in given] + pairs
    return train_config(rename(pairs, ALIASES))


def _help_policy_type(args: list[str]) -> str | None:
    """The policy type whose fields `--help` lists: `--policy.type`, else that of a local `--policy.path` or
    `--teacher.path` checkpoint (`--teacher_model_path` too)."""
    if lerobot_parser.parse_arg("policy.type", args):
        return lerobot_parser.parse_arg("policy.type", args)
    for key in ("policy.path", "teacher.path", "teacher_model_path"):
        path = lerobot_parser.parse_arg(key, args)
        if path and Path(path).exists():
            try:
                return read_checkpoint_config(path, key)["type"]
            except ConfigError:
                return None
    return None


def parse_pipeline_config(args: list[str]) -> PipelineConfig:
    """A `PipelineConfig` from `--config_path=recipe.yaml` (optional) plus flags; every stage checked."""
    return parse_config(PipelineConfig, args, command="pipeline")


def train_config(pairs: list[Pair], *, teacher_config: dict[str, Any] | None = None) -> TrainConfig:
    """Decode settings into a `TrainConfig`, then resolve its policy (`policy_config`)."""
    parsed = decode(TrainConfig, pairs)
    config = parsed.config
    config.policy = policy_config(config, parsed.policy_section, parsed.policy_args, teacher_config=teacher_config)
    return config


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
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


# ---- The student's policy: a checkpoint's config or a new one, with the `--policy.<field>` settings ------


def policy_config(
    cfg: TrainConfig, section: dict[str, Any], args: list[str], *, teacher_config: dict[str, Any] | None = None
) -> PreTrainedConfig:
    """The student's LeRobot policy config, as lerobot-train resolves `--policy.path` / `--policy.type`.

    The starting point is a checkpoint's config.json: `policy.path` for a 1-RF, the teacher's for a student
    initialised from it (the teacher is an implicit `policy.path`); else a new config of `policy.type` (the
    teacher's type for a new reflow student, flow_mlp for a 1-RF). The recipe's `policy:` keys and the
    `--policy.<field>` flags go on top, checked against that type's config class. `pretrained_path` records
    where the weights come from.
    """
    section = dict(section)
    flags = dict(arg[2:].partition("=")[::2] for arg in args)  # `--key=value` -> {key: value}
    path, wanted = (flags.pop(k, None) or section.get(k) for k in ("path", "type"))  # a flag wins over the recipe
    section.pop("path", None), section.pop("type", None)
    recorded = section.pop("pretrained_path", None)  # a run's train_config.json read back as a recipe
    if cfg.stage == "flow_matching":  # a student's recorded start is its teacher, given again by teacher.path
        path = path or recorded
    source, base, teacher = _starting_point(cfg, path, teacher_config)
    policy_type = _student_type(cfg, base.pop("type", None), wanted, teacher)
    cls = policy_config_class(policy_type)
    if policy_type not in supported_policy_types():  # a LeRobot type hf-reflow cannot sample or train
        raise ConfigError(
            f"policy.type {policy_type!r} has no hf-reflow adapter; choose one of {', '.join(supported_policy_types())} "
            "(or register one: hf_reflow.policies.factory.register_adapter)."
        )
    check_policy_keys(cls, policy_type, [*section, *flags])
    if base and "device" not in section and "device" not in flags:
        base["device"] = None  # a checkpoint's saved device is not this machine's: auto-select, as a new config
    try:
        policy = decode_policy(cls, {**base, **section}, [f"--{k}={v}" for k, v in flags.items()])
    except ConfigError as e:
        if not base:
            raise
        raise ConfigError(f"{e} (the student's config: the config.json of {source!r}, then the policy settings)") from None
    _check_device(policy, flags.get("device") or section.get("device"))
    if getattr(policy, "use_peft", False):
        # Training full weights and saving `use_peft: true` makes a checkpoint stock `make_policy` cannot load.
        raise ConfigError(
            f"policy.use_peft=true: hf-reflow trains every weight of the student (no PEFT / LoRA adapters), got "
            f"use_peft={policy.use_peft!r}{' from ' + repr(source) if source else ''}; drop --policy.use_peft or pass "
            "--policy.use_peft=false."
        )
    policy.pretrained_path = Path(source) if source else None
    return policy


def _check_device(policy: PreTrainedConfig, asked: str | None) -> None:
    """LeRobot falls back to the CPU, with a log line, when the device asked for is missing: refuse instead."""
    if asked and str(asked).split(":")[0] != str(policy.device).split(":")[0]:
        raise ConfigError(
            f"policy.device={asked!r} is not available on this machine (it would train on {policy.device!r}); "
            f"pass --policy.device={policy.device} or run where {asked} is available."
        )


def _starting_point(
    cfg: TrainConfig, path: str | None, teacher_config: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """(where the student's weights come from, the config.json it starts as, the teacher's config.json)."""
    if cfg.stage == "flow_matching":
        return path, (read_checkpoint_config(str(path), "policy.path") if path else {}), None
    if path:
        raise ConfigError(
            f"policy.path is for a flow_matching stage; a {cfg.stage} student starts from its teacher "
            f"(teacher.path), or new with init_from_teacher=false; drop --policy.path={path}."
        )
    teacher = teacher_config or read_checkpoint_config(cfg.teacher.path, "teacher.path", cfg.teacher.revision)
    if cfg.init_from_teacher:
        return cfg.teacher.path, dict(teacher), teacher
    return None, {}, teacher


def _student_type(cfg: TrainConfig, base_type: str | None, wanted: str | None, teacher: dict | None) -> str:
    """The student's policy type, refusing a `policy.type` that contradicts its starting checkpoint."""
    if base_type and wanted and wanted != base_type:
        whose = f"the teacher {cfg.teacher.path!r}" if cfg.stage != "flow_matching" else "the policy.path checkpoint"
        raise ConfigError(
            f"{whose} is a {base_type} policy, but policy.type is {wanted!r} and the student is initialised from it; "
            f"pass a {wanted} checkpoint, or drop policy.type (the student is a {base_type} copy of it)."
        )
    teacher_type = teacher.get("type") if teacher else None
    student = base_type or wanted or teacher_type or DEFAULT_POLICY_TYPE
    if teacher and student != teacher_type:  # a new student keeps the teacher's processors
        padded = teacher.get("max_action_dim")
        space = f" and its padded action space (max_action_dim={padded})" if padded else ""
        raise ConfigError(
            f"the teacher {cfg.teacher.path!r} is a {teacher_type} policy, but policy.type is {student!r}: a new "
            f"student (init_from_teacher=false) keeps the teacher's processors (tokenizer, prompt format, "
            f"normalisation stats){space}, so it must be a {teacher_type} policy; set --policy.type={teacher_type}."
        )
    return student


def read_checkpoint_config(path: str | None, flag: str, revision: str | None = None) -> dict[str, Any]:
    """The config.json of a checkpoint (its folder, a run dir, or a Hub repo id) as a mapping; that file only."""
    if not path:
        raise ConfigError(f"{flag} is empty; pass a checkpoint dir, a run dir or a Hub model id.")
    local = Path(path)
    found = next((f / "config.json" for f in (local, local / "pretrained_model") if (f / "config.json").is_file()), None)
    if found is not None:
        text = found.read_text()
    elif local.exists() or not _REPO_ID.match(str(path)):
        raise ConfigError(
            f"{flag} {path!r} holds no checkpoint (no config.json in it or in its pretrained_model/); pass a "
            "checkpoint dir, a run dir or a Hub model id."
        )
    else:
        text = Hub(retries=0).read_text(str(path), "config.json", revision=revision)
        if text is None:
            raise ConfigError(f"{flag} {path!r}: the Hub repo has no config.json; pass a LeRobot policy checkpoint.")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ConfigError(f"{flag} {path!r}: its config.json is not a LeRobot policy config (no \"type\").")
    return data
