"""Typed configuration of a training stage, parsed in exactly one place (`parse_train_config`).

A recipe is YAML whose keys are these dataclass fields; CLI overrides use LeRobot's dotted style
(`--teacher.path=outputs/1rf`, `--optim.lr=5e-5`). Unknown keys are rejected with the valid list.
The seed guide's names are accepted as aliases: `teacher_model_path` -> `teacher.path`,
`reflow_num_inference_steps` -> `teacher.num_inference_steps`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_reflow.errors import ConfigError
from hf_reflow.flow import LOSSES, TIME_SAMPLERS, shortcut_levels
from hf_reflow.sampling import SOLVERS

STAGES = ("flow_matching", "reflow", "distill", "shortcut")
# Step count written into each stage's final checkpoint unless `num_steps` says otherwise.
RECOMMENDED_NUM_STEPS = {"flow_matching": 10, "reflow": 2, "distill": 1, "shortcut": 1}


def stage_k(stage: str, teacher_k: int) -> int:
    """The k of a stage's model: 1 for flow matching, the teacher's k + 1 for a reflow round, and the
    teacher's own k for a distilled or shortcut student (the same couplings' flow, sampled in fewer steps)."""
    _choice("stage", stage, STAGES)
    return {"flow_matching": 1, "reflow": teacher_k + 1}.get(stage, teacher_k)
ALIASES = {
    "teacher_model_path": "teacher.path",
    "reflow_num_inference_steps": "teacher.num_inference_steps",
}


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {value!r}.")


@dataclass
class DatasetConfig:
    """Where the demonstrations come from."""

    repo_id: str = "local/dataset"  # Hub id, or any name when `root` holds the dataset
    root: str | None = None  # local LeRobotDataset folder; None = Hugging Face cache / Hub
    episodes: list[int] | None = None  # subset of episode indices; None = all
    num_workers: int = 0  # DataLoader workers
    in_memory: str = "auto"  # auto (small datasets without images) | always | never

    def __post_init__(self) -> None:
        _choice("dataset.in_memory", self.in_memory, ("auto", "always", "never"))


@dataclass
class TeacherConfig:
    """The frozen k-RF teacher whose ODE end points become the student's targets (reflow, distill)."""

    path: str | None = None  # Hub repo id or local checkpoint (the guide's teacher_model_path)
    revision: str | None = None
    num_inference_steps: int = 10  # the guide's reflow_num_inference_steps
    solver: str = "euler"
    # null (auto): a teacher whose frozen VLM equals the student's (SmolVLA with train_expert_only, student
    # initialised from it) uses the student's VLM module, and the VLM prefix is computed once per batch;
    # true: the same, but an error when it cannot be shared; false: the teacher keeps its own VLM copy.
    shared_backbone: bool | None = None

    def __post_init__(self) -> None:
        _choice("teacher.solver", self.solver, SOLVERS)
        if self.num_inference_steps < 1:
            raise ConfigError(f"teacher.num_inference_steps must be >= 1, got {self.num_inference_steps}.")


@dataclass
class CouplingsConfig:
    """Stored reflow couplings (`hf-reflow couplings generate`) used instead of online generation."""

    path: str | None = None  # couplings folder or Hub dataset repo id; None = couplings made online per batch
    revision: str | None = None


@dataclass
class FlowConfig:
    """How training times are drawn and velocity errors are scored."""

    time_sampler: str = "beta"
    loss: str = "mse"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    u_shaped_a: float = 4.0

    def __post_init__(self) -> None:
        _choice("flow.time_sampler", self.time_sampler, TIME_SAMPLERS)
        _choice("flow.loss", self.loss, LOSSES)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * lr`."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip_norm: float | None = 1.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}.")


@dataclass
class ShortcutConfig:
    """The `shortcut` stage: one network for 1 and 2 steps (Frans et al. 2024; SnapFlow, arXiv 2604.05656).

    The student starts as its teacher, plus a step-size input whose last layer is zero (so it reproduces
    the teacher exactly at step 0). Its loss: the flow loss on the teacher's couplings at the smallest
    step size (`min_step`, its plain flow) + `consistency_weight` x the self-consistency loss (one step
    of 2d = two steps of d of its own velocity, for 2d in 2 min_step .. 1).
    """

    min_step: float = 0.125
    consistency_weight: float = 1.0

    def __post_init__(self) -> None:
        try:
            if len(shortcut_levels(self.min_step)) < 2:
                raise ValueError("min_step 1 leaves nothing to distil")
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"shortcut.min_step must be 1 / 2^n with n >= 1, e.g. 0.125; got {self.min_step} ({e}).") from None
        if not math.isfinite(self.consistency_weight) or self.consistency_weight < 0:
            raise ConfigError(f"shortcut.consistency_weight must be finite and >= 0, got {self.consistency_weight}.")


@dataclass
class TrainConfig:
    """One training stage: 1-RF (`flow_matching`), k+1-RF (`reflow`), one-step `distill` or `shortcut` (1-2 steps)."""

    stage: str = "flow_matching"
    output_dir: str = "outputs/run"
    seed: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # per process and micro-step
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16 (Accelerate)
    num_steps: int | None = None  # inference steps saved in the final checkpoint; None = stage default
    init_from_teacher: bool = True  # reflow / distill: the student starts from the teacher's weights
    ema_decay: float | None = None  # e.g. 0.999; None disables EMA
    save_every: int = 0  # also checkpoint every N steps (0 = final only)
    log_every: int = 50
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, trackio
    resume: bool = False
    push_to_hub: bool = False  # push the final checkpoint + model card; access is checked before training
    hub_model_id: str | None = None  # namespace/name; each stage goes to hub_repo_template's repo
    hub_repo_template: str = "{hub_model_id}-{k}rf{suffix}"  # also {stage}; suffix: -distilled
    hub_private: bool = False
    hub_revision: str | None = None  # branch to push to (created if missing); None = main
    policy: dict[str, Any] = field(default_factory=lambda: {"type": "flow_mlp"})  # type / path + config fields
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    couplings: CouplingsConfig = field(default_factory=CouplingsConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)

    def __post_init__(self) -> None:
        _choice("stage", self.stage, STAGES)
        _choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        for tracker in self.log_with:
            _choice("log_with", tracker, ("tensorboard", "trackio"))
        if self.stage != "flow_matching" and not self.teacher.path:
            raise ConfigError(
                f"stage {self.stage!r} needs a teacher: set --teacher.path=<k-RF checkpoint dir or Hub repo id>."
            )
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_steps is not None and self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}.")
        if self.couplings.path and self.stage == "flow_matching":
            raise ConfigError("couplings.path is for reflow / distill stages; flow_matching trains on the dataset.")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id (namespace/name), e.g. --hub_model_id=you/toy.")
        try:
            self.hub_repo_template.format(hub_model_id="a/b", k=1, stage="reflow", suffix="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"hub_repo_template {self.hub_repo_template!r} is invalid ({e!r}); it may use {{hub_model_id}}, {{k}}, "
                "{stage} and {suffix}, e.g. '{hub_model_id}-{k}rf{suffix}'."
            ) from None

    @property
    def final_num_steps(self) -> int:
        return self.num_steps if self.num_steps is not None else RECOMMENDED_NUM_STEPS[self.stage]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict (a parsed recipe), rejecting unknown keys."""
        return _build(cls, data)


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a nested dict, rejecting keys it does not define."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"invalid value under {prefix.rstrip('.') or 'config'}: {e}") from None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check a scalar against its field type; numbers may arrive as strings (YAML reads `1e-4` as text)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    lists = [o for o in options if typing.get_origin(o) is list]
    if lists and isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [v.strip() for v in str(value).split(",") if v.strip()]  # --eval.nfe=1,2 or --seeds=0
    if lists and isinstance(value, list):
        (item,) = typing.get_args(lists[0]) or (Any,)
        return [_coerce(v, item, f"{name}[]") if item is not Any else v for v in value]
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{name} cannot be null.")
    for kind in (bool, int, float, str):
        if kind in options and isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
    if float in options and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if int in options and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if any(kind in options for kind in (bool, int, float, str)):
        wanted = " or ".join(k.__name__ for k in options if k is not type(None))
        raise ConfigError(f"{name} must be {wanted}; got {value!r}.")
    return value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, *, aliases: bool = True) -> None:
    if aliases:
        dotted = ALIASES.get(dotted, dotted)
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section.")
    node[leaf] = value


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """`--a.b=1 --c 2` -> [("a.b", 1), ("c", 2)], values parsed as YAML scalars/lists."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --key=value (e.g. --steps=500).")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value, e.g. --{key}=VALUE.")
            raw, i = args[i + 1], i + 1
        pairs.append((key.replace("-", "_"), yaml.safe_load(raw) if raw != "" else None))
        i += 1
    return pairs


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (aliases resolved later)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found; pass --config=<path to a YAML recipe>.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping of config keys.")
    return data


def parse_train_config(args: list[str]) -> TrainConfig:
    """Build a `TrainConfig` from `--config=recipe.yaml` (optional) plus dotted overrides."""
    overrides = parse_overrides(args)
    data: dict[str, Any] = {}
    for key, value in overrides:
        if key == "config":
            for k, v in _flatten(load_recipe(value)):
                _set_dotted(data, k, v)
    for key, value in overrides:
        if key != "config":
            _set_dotted(data, key, value)
    return _build(TrainConfig, data)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested recipe -> dotted pairs, so recipe sections merge with CLI overrides key by key."""
    pairs = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            pairs.extend(_flatten(value, f"{prefix}{key}."))
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# The k-RF pipeline (`hf-reflow pipeline`): demonstrations -> 1-RF -> reflow rounds -> distill -> eval.

PIPELINE_STAGES = ("flow_matching", "reflow", "distill", "shortcut")


@dataclass
class DemoConfig:
    """Meta-World expert demonstrations written as a LeRobotDataset by the pipeline."""

    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3"])
    episodes: int = 100  # expert episodes attempted per task (failed ones are dropped and counted)
    mode: str = "multimodal"  # multimodal (detour left/right of an obstacle) | scripted
    seed: int = 0
    images: bool = False  # also render a small camera image per frame (for VLA policies)
    image_size: int = 96
    heldout_episodes: int = 10  # expert episodes per task on evaluation layouts, for offline metrics

    def __post_init__(self) -> None:
        _choice("data.mode", self.mode, ("multimodal", "scripted"))
        if self.episodes < 1 or self.heldout_episodes < 1:
            raise ConfigError(
                f"data.episodes and data.heldout_episodes must be >= 1, got {self.episodes} and "
                f"{self.heldout_episodes}; e.g. --data.episodes=100."
            )


@dataclass
class EvalConfig:
    """Evaluation of every stage at every step count."""

    nfe: list[int] = field(default_factory=lambda: [1, 2, 4, 10])
    episodes: int = 50  # closed-loop episodes per task and cell (stage x step count)
    num_samples: int = 256  # held-out observations for the offline metrics
    workers: int = 0  # rollout processes; 0 = one per CPU core

    def __post_init__(self) -> None:
        if not self.nfe or any(not isinstance(n, int) or not 1 <= n <= 100 for n in self.nfe):
            raise ConfigError(f"eval.nfe must be a list of step counts in 1..100, got {self.nfe!r}.")
        if self.episodes < 0 or self.num_samples < 1:
            raise ConfigError(f"eval.episodes must be >= 0 and eval.num_samples >= 1, got {self.episodes}, {self.num_samples}.")


@dataclass
class PipelineConfig:
    """The whole k-RF chain. `stages` is the chain in order, e.g. [flow_matching, reflow, reflow, distill]
    for 1-RF -> 2-RF -> 3-RF -> distilled; each stage trains from the previous one as teacher.

    `train` holds `TrainConfig` fields shared by every stage; `flow_matching`, `reflow` and `distill`
    hold each stage's own fields on top (e.g. steps, optim.lr, flow.time_sampler).
    """

    output_dir: str = "outputs/metaworld"
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds; one chain per seed
    stages: list[str] = field(default_factory=lambda: ["flow_matching", "reflow", "distill"])
    force: bool = False  # redo finished stages (and the dataset) instead of skipping them
    # Reflow / distill targets: 0 = couplings made online for every batch by the frozen teacher; N > 0 =
    # N couplings generated once per stage (`hf-reflow couplings generate`), then trained on like data.
    num_couplings: int = 0
    data: DemoConfig = field(default_factory=DemoConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: dict[str, Any] = field(default_factory=dict)
    flow_matching: dict[str, Any] = field(default_factory=dict)
    reflow: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    shortcut: dict[str, Any] = field(default_factory=dict)

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
        if not self.seeds:
            raise ConfigError("seeds must list at least one training seed, e.g. [0] or [0, 1, 2].")
        for stage in PIPELINE_STAGES:  # unknown keys fail now, not after an hour of training
            self.stage_config(stage, seed=0, output_dir="<check>", teacher="<check>", dataset_root="<check>")

    def stage_config(
        self, stage: str, *, seed: int, output_dir: str, teacher: str | None, dataset_root: str, couplings: str | None = None
    ) -> TrainConfig:
        """The `TrainConfig` of one stage: `train` + the stage's section + what the pipeline decides."""
        data: dict[str, Any] = {}
        for section in (self.train, getattr(self, stage)):
            for key, value in _flatten(section):
                _set_dotted(data, key, value)
        for key, value in (("stage", stage), ("seed", seed), ("output_dir", output_dir), ("resume", True),
                           ("dataset.root", dataset_root), ("dataset.repo_id", "local/metaworld")):  # fmt: skip
            _set_dotted(data, key, value)
        if stage != "flow_matching":
            _set_dotted(data, "teacher.path", teacher)
        if couplings is not None:
            _set_dotted(data, "couplings.path", couplings)
        return _build(TrainConfig, data, prefix=f"{stage}.")


def parse_pipeline_config(args: list[str]) -> PipelineConfig:
    """Build a `PipelineConfig` from `--config=recipe.yaml` (optional) plus dotted overrides."""
    overrides = parse_overrides(args)
    data: dict[str, Any] = {}
    for key, value in overrides:
        if key == "config":
            for k, v in _flatten(load_recipe(value)):
                _set_dotted(data, k, v, aliases=False)
    for key, value in overrides:
        if key != "config":
            _set_dotted(data, key, value, aliases=False)
    return _build(PipelineConfig, data)
