"""The other commands: eval, dataset, couplings, push, space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hf_reflow.configs.fields import (
    MAX_COUNT,
    at_least,
    at_most,
    check_choice,
    check_new_folder,
    check_output_file,
    check_revision,
    check_seed,
    option,
)
from hf_reflow.configs.pipeline import DemoSettings, StepCountEval
from hf_reflow.configs.train import DatasetConfig, TeacherConfig
from hf_reflow.errors import ConfigError


@dataclass
class EvalPolicyConfig:
    """The checkpoints to evaluate."""

    path: list[str] = option(help="checkpoint dirs / run dirs / Hub ids, comma-separated (required)", factory=list)


@dataclass
class EvaluateConfig(StepCountEval):
    """`hf-reflow eval`: offline metrics (and closed loop with --env) of checkpoints at each step count."""

    policy: EvalPolicyConfig = option(help="the checkpoints", factory=EvalPolicyConfig)
    dataset: DatasetConfig = option(help="held-out observations (and the toy env's goals)", factory=DatasetConfig)
    env: str = option("none", "closed loop: none | toy | metaworld; or any LeRobot env with lerobot-eval's "
                    "--env.type=TYPE --env.<field>=... (e.g. --env.type=metaworld_detour --env.task=push-v3)")
    seed: int = option(0, "seed of noise and episodes")
    output: str | None = option(None, "write the rows as JSON here")
    tasks: list[str] = option(help="metaworld: tasks to roll out", factory=lambda: ["reach-v3", "push-v3"])
    mode: str = option("multimodal", "metaworld: multimodal (detour left / right of an obstacle) | scripted")
    HELP_EXTRA: ClassVar[tuple[str, ...]] = (
        "  --env.type=TYPE  (str)",
        "      closed loop in any LeRobot env type (lerobot-eval's flag; plugins' types too), e.g. metaworld_detour",
        "  --env.<field>=VALUE",
        "      a field of that env type's LeRobot config, e.g. --env.task=push-v3",
    )

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if not self.policy.path:
            raise ConfigError("--policy.path is required (one checkpoint, or several separated by commas).")
        check_choice("env", self.env, ("none", "toy", "metaworld"))
        super().__post_init__()
        if self.env == "metaworld":
            DemoSettings(tasks=self.tasks, mode=self.mode)  # checks the mode
        check_output_file("--output", self.output)


@dataclass
class ToyDataConfig:
    """`hf-reflow dataset toy`: the 2-D bimodal toy demonstrations as a LeRobotDataset."""

    root: str | None = option(None, "folder to write the dataset into (required)")
    episodes: int = option(200, "expert episodes")
    seed: int = option(0, "seed of the episodes")
    repo_id: str = option("local/toy", "dataset repo id written into its metadata")

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if not self.root:
            raise ConfigError("--root is required: the folder to write the dataset into.")
        check_new_folder("--root", self.root)
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}.")
        at_most("episodes", self.episodes, 1_000_000)


@dataclass
class MetaWorldDataConfig(DemoSettings):
    """`hf-reflow dataset metaworld`: Meta-World expert demonstrations as a LeRobotDataset."""

    root: str | None = option(None, "folder to write the dataset into (required)")
    repo_id: str = option("local/metaworld", "dataset repo id written into its metadata")
    layout: str = option("demo", "demo (training layouts) | eval (held-out layouts)")
    layout_sets: int = option(
        1, "demo layouts only: roll out `episodes` per task on each of this many Meta-World layout sets (MT1 seeds 0, "
        "the demonstrations', to N-1; 50 layouts per set and task), e.g. a teacher's closed-loop states on more layouts"
    )
    policy_path: str | None = option(
        None, "roll out this checkpoint (local or Hub id) instead of the expert, keeping every episode: the states "
        "a frozen teacher visits in closed loop, for reflow couplings (`hf-reflow couplings generate` on them)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.root:
            raise ConfigError("--root is required: the folder to write the dataset into.")
        check_new_folder("--root", self.root)
        check_choice("layout", self.layout, ("demo", "eval"), " (demo: training layouts, eval: held-out layouts)")
        at_least("layout_sets", self.layout_sets, 1)
        if self.layout == "eval" and self.layout_sets != 1:
            raise ConfigError(f"layout=eval is one layout set (the evaluation layouts), got layout_sets={self.layout_sets}; "
                              "use layout_sets=1, or layout=demo for more training layouts.")  # fmt: skip


COUPLINGS_BLOCK_SIZE = 1024  # couplings per stored shard, the default of every command that makes them


@dataclass
class CouplingsGenerateConfig:
    """`hf-reflow couplings generate`: (noise, teacher end point) couplings written once as a dataset."""

    teacher: TeacherConfig = option(help="the frozen teacher (path required)", factory=TeacherConfig)
    dataset: DatasetConfig = option(help="observations to condition on", factory=DatasetConfig)
    output: str | None = option(None, "folder to write the couplings into (required)")
    num_couplings: int = option(10_000, "couplings to generate")
    block_size: int = option(COUPLINGS_BLOCK_SIZE, "couplings per stored block")
    batch_size: int = option(256, "teacher batch size")
    seed: int = option(0, "seed of noise and observation order")

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if not self.teacher.path or not self.output:
            raise ConfigError("--teacher.path=CHECKPOINT (local or Hub id) and --output=DIR are required.")
        for name in ("num_couplings", "block_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
            at_most(name, getattr(self, name), MAX_COUNT)
        if self.dataset.root and Path(self.output).resolve().is_relative_to(Path(self.dataset.root).resolve()):
            raise ConfigError(
                f"--output={self.output!r} lies inside the dataset --dataset.root={self.dataset.root!r}, whose files it "
                "would mix with; write the couplings to a folder of their own."
            )


@dataclass
class PushConfig:
    """`hf-reflow push`: a checkpoint (+ model card) as a Hub model, stored couplings or local demonstrations
    (a LeRobotDataset) as a Hub dataset. Push the data first: the model card then names it by Hub id."""

    checkpoint: str | None = option(None, "checkpoint or run dir to push as a model")
    couplings: str | None = option(None, "couplings folder to push as a dataset")
    dataset: str | None = option(None, "local LeRobotDataset folder (e.g. the demonstrations) to push as a dataset")
    repo_id: str | None = option(None, "namespace/name (required)")
    eval: str | None = option(None, "results JSON (hf-reflow eval --output) for the model card")
    private: bool = option(False, "create the repo private")
    revision: str | None = option(None, "branch to push to (created if missing); null: main")
    commit_message: str | None = option(None, "commit message; null: a generated one")
    license: str | None = option(None, "license in the card; null: the starting checkpoint's, else apache-2.0")
    set_new_version: bool = option(False, "also point the teacher's card to this repo with new_version")

    def __post_init__(self) -> None:
        check_revision("revision", self.revision)
        if not self.repo_id or sum(bool(p) for p in (self.checkpoint, self.couplings, self.dataset)) != 1:
            raise ConfigError(
                "push needs --repo_id=namespace/name and one of --checkpoint=DIR (a model), --couplings=DIR or "
                "--dataset=DIR (a dataset), e.g. --checkpoint=outputs/toy/2rf --repo_id=you/toy-2rf."
            )
        whats = {"--checkpoint": "checkpoint", "--couplings": "couplings folder", "--dataset": "dataset folder"}
        for flag, path in zip(whats, (self.checkpoint, self.couplings, self.dataset), strict=True):
            if path and not Path(path).is_dir():
                raise ConfigError(f"no {whats[flag]} at {path!r} ({flag} must be a local folder to push).")
        if self.eval and not self.checkpoint:
            raise ConfigError("--eval is for a model card: use it with --checkpoint=DIR.")
        if self.eval and not Path(self.eval).is_file():
            raise ConfigError(f"cannot read eval results: --eval file {self.eval!r} not found; pass the JSON written by `hf-reflow eval --output=...`.")


@dataclass
class SpaceDatasetConfig:
    """Observations the Space samples from; null: the chain's."""

    root: str | None = option(None, "local LeRobotDataset folder")
    repo_id: str | None = option(None, "dataset repo id")


@dataclass
class SpaceConfig:
    """`hf-reflow space`: serve the Gradio Space on 127.0.0.1, write it out for deployment, or push it to the Hub."""

    chain: str | None = option(None, "a pipeline output dir (its pipeline.json lists the stages)")
    policies: list[str] | None = option(None, "checkpoints to compare instead of a chain, comma-separated")
    dataset: SpaceDatasetConfig = option(help="observations", factory=SpaceDatasetConfig)
    env: str | None = option(None, "closed-loop env: toy | metaworld; null: from the chain")
    port: int | None = option(None, "server port (1..65535); null: Gradio's default")
    allow_any_policy: bool = option(False, "let visitors load any local path / Hub id, not only the chain's stages (a private server only)")
    bundle: str | None = option(None, "write a deployable Space showing --chain (Hub ids, as --push) to this folder instead of serving")
    push: bool = option(False, "push a Gradio Space showing the chain (Hub ids: pushed stages or --chain=a/x-1rf,a/x-2rf) to repo_id")
    repo_id: str | None = option(None, "the Space to push to, namespace/name (with --push=true)")
    private: bool = option(False, "create the Space private (with --push=true)")

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
