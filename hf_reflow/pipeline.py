"""The k-RF chain in one command: Meta-World demonstrations -> 1-RF -> reflow rounds -> distilled -> eval.

    hf-reflow pipeline --config_path=recipes/metaworld/default.yaml

Layout of `output_dir/`:
    recipe.json                         the resolved recipe (a different recipe's run is refused)
    data/demos/, data/heldout/          LeRobotDatasets: training demos, held-out expert episodes on
                                        evaluation layouts (offline metrics); data/*.json their summaries
    seed<s>/<name>/                     one training run per stage and seed (name: 1rf, 2rf, 3rf, 2rf-distill, 2rf-redistill)
    seed<s>/states/<name>/              the closed-loop states of stage <name> that a later stage trains at
    seed<s>/couplings/<name>/           stage <name>'s stored (noise, teacher end point) couplings
    seed<s>/<name>/eval.json            that stage's evaluation, cached by evaluation settings
    results.json, report.md, *.png      every row, the summary with 95 % CIs, plots
    pipeline.json                       the chain (stage names and checkpoint paths) for the Space

Re-running skips finished stages and evaluations; `--force=true` redoes everything; `--from_run=<run>` takes
(hard links) whatever another run made exactly as this one would (`artifacts/reuse.py`). With
`--push.hub_model_id=you/mw` (+ `--push.space_id=you/space`) the first seed's stages, then a Space showing
them, are pushed after the report; write access to every repo is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_reflow import space
from hf_reflow.artifacts import reuse
from hf_reflow.artifacts.content import weights_sha256
from hf_reflow.artifacts.run_lock import LOCK_FILE, run_lock
from hf_reflow.atomic import TEMPORARY_MARK, write_text
from hf_reflow.configs import COUPLINGS_BLOCK_SIZE, PIPELINE_STAGES, VLM_DIR, DatasetConfig, PipelineConfig
from hf_reflow.errors import ConfigError, HubError
from hf_reflow.evaluation import report
from hf_reflow.evaluation.chain import evaluate_chain
from hf_reflow.evaluation.closed_loop import controllers_of
from hf_reflow.hub import SPACE_SDK, Hub
from hf_reflow.parsing import stage_config
from hf_reflow.policies import smolvlm
from hf_reflow.publish.publish import push_checkpoint, push_couplings, push_demonstrations, repo_for_stage
from hf_reflow.refs import PRETRAINED_DIR, checkpoint_folder
from hf_reflow.stages import LEAF_STAGES, run_name, stage_k, stage_label
from hf_reflow.training.couplings import generate
from hf_reflow.training.trainer import ReflowTrainer

# Recipe sections whose change makes an existing run a different run (eval settings may change freely,
# seeds and stages may be extended: finished ones are reused).
_RUN_DEFINING = ("data", "vlm", "train", *PIPELINE_STAGES, "num_couplings", "coupling_states", "rollout_layout_sets")


@dataclass(frozen=True)
class Stage:
    """One link of the chain: its kind, its k (the teacher's k for a distilled / shortcut student), its folder
    name, and its teacher's folder name (the k-RF it learns from; None for the 1-RF)."""

    kind: str
    k: int
    name: str
    teacher: str | None = None

    @property
    def label(self) -> str:
        return stage_label(self.kind, self.k)


def chain(stages: list[str]) -> list[Stage]:
    """[flow_matching, reflow, distill, shortcut] -> 1rf, 2rf, 2rf-distill, 2rf-shortcut.

    A distill or shortcut stage learns from the last k-RF before it and is a leaf: the next reflow
    round still takes that k-RF as its teacher. A redistill stage also needs that k-RF's distill stage
    before it: it learns at the states that distilled student visits.
    """
    out, k, teacher = [], 0, None  # teacher: the last k-RF's folder
    for kind in stages:
        if kind in LEAF_STAGES:
            if k == 0:
                raise ConfigError(f"a {kind} stage needs a teacher: put it after flow_matching or reflow.")
            if kind == "redistill" and run_name("distill", k) not in {s.name for s in out}:
                raise ConfigError(f"a redistill stage learns at the states its k-RF's distilled student visits: put a "
                                  f"distill stage before it, after the same reflow stage; got stages {stages}.")  # fmt: skip
            out.append(Stage(kind, k, run_name(kind, k), teacher))
        else:
            k = stage_k(kind, k)
            out.append(Stage(kind, k, run_name(kind, k), teacher))
            teacher = out[-1].name
    if len({s.name for s in out}) != len(out):
        raise ConfigError(f"stages {stages} train the same student of one k-RF twice; keep one distill / shortcut per k.")
    return out


def _log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


def check_output_dir(cfg: PipelineConfig, out: Path) -> None:
    """Refuse an output dir holding a different recipe's run; with `force`, clear it."""
    saved = out / "recipe.json"
    if cfg.force and out.exists():
        if any(out.iterdir()) and not saved.is_file():
            raise ConfigError(
                f"--force would delete {str(out)!r}, which is not a pipeline run; choose another output_dir."
            )
        shutil.rmtree(out)
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not saved.is_file():
        raise ConfigError(
            f"output_dir {str(out)!r} is not empty and holds no pipeline run; choose another output_dir."
        )
    mine, defaults = dataclasses.asdict(cfg), dataclasses.asdict(PipelineConfig())
    if saved.is_file():
        theirs = json.loads(saved.read_text())  # a key added since that run was made holds its default
        # A stage kind's section defines the run only once such a stage was trained: adding a shortcut
        # stage (and its section) to a finished chain trains it without redoing the rest.
        trained = set(theirs.get("stages", []))
        defining = [k for k in _RUN_DEFINING if k not in PIPELINE_STAGES or k in trained]
        changed = [k for k in defining if theirs.get(k, defaults.get(k)) != mine.get(k)]
        if changed:
            raise ConfigError(
                f"output_dir {str(out)!r} holds a different recipe's run (differs in {', '.join(changed)}); "
                "use another --output_dir, or --force=true to delete it and start over."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text(saved, json.dumps({k: v for k, v in mine.items() if k != "force"}, indent=2))


def source_run(cfg: PipelineConfig, out: Path) -> Path | None:
    """`from_run` checked: another pipeline run's folder (None without one)."""
    if cfg.from_run is None:
        return None
    source = Path(cfg.from_run)
    if not (source / "recipe.json").is_file():
        raise ConfigError(f"from_run {cfg.from_run!r} holds no pipeline run (no recipe.json); pass a finished run's output_dir.")
    if source.resolve() == out.resolve():
        raise ConfigError(f"from_run {cfg.from_run!r} is this run's output_dir; pass another run's output_dir.")
    return source


def _same_section(source: Path, cfg: PipelineConfig, name: str) -> bool:
    """The source run's recipe has the same `name` section (data, vlm) as this one."""
    theirs = json.loads((source / "recipe.json").read_text()).get(name)
    return theirs == json.loads(json.dumps(dataclasses.asdict(getattr(cfg, name))))


def remove_partial_datasets(folder: Path) -> None:
    """Delete the `.<name>.tmp-*` folders a killed dataset writer left (`.partial-*`: those of older versions;
    the caller holds the run lock)."""
    for stale in [*Path(folder).glob(f".*{TEMPORARY_MARK}-*"), *Path(folder).glob(".*.partial-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def write_datasets(cfg: PipelineConfig, out: Path, source: Path | None = None) -> tuple[Path, Path]:
    """Training demos (demonstration layouts) and held-out expert episodes (evaluation layouts); `source`'s when
    it wrote them with the same `data` settings."""
    from datasets.utils.logging import disable_progress_bar
    from tqdm.auto import tqdm

    from hf_reflow.envs import metaworld

    disable_progress_bar()  # LeRobot's per-episode `datasets.map` bars; the pipeline logs one line per dataset
    demos, heldout = out / "data" / "demos", out / "data" / "heldout"
    remove_partial_datasets(out / "data")
    d = cfg.data
    common = dict(tasks=d.tasks, mode=d.mode, images=d.images, image_size=d.image_size, expert_aim=d.expert_aim)
    for root, episodes, seed, layout, hold in (
        (demos, d.episodes, d.seed, metaworld.DEMO_LAYOUT_SEED, d.hold_steps),
        (heldout, d.heldout_episodes, d.seed + 1, metaworld.EVAL_LAYOUT_SEED, 0),  # the expert as evaluated
    ):
        if source is not None and _same_section(source, cfg, "data") and reuse.link_folder(
            source / "data" / root.name, root, complete="meta/info.json"
        ):
            _log(f"dataset {root} linked from {source} (same data settings)")
            continue
        if (root / "meta" / "info.json").is_file():
            _log(f"dataset {root} exists, reusing it")
            continue
        _log(f"writing {episodes} expert episodes per task ({', '.join(d.tasks)}, {d.mode}) to {root}")
        with tqdm(total=episodes * len(d.tasks), desc=root.name, unit="ep") as bar:
            summary = metaworld.write_dataset(
                root,
                episodes_per_task=episodes,
                seed=seed,
                layout_seed=layout,
                log=lambda _: bar.update(1),
                hold_steps=hold,
                **common,
            )
        write_text(root.parent / f"{root.name}.json", json.dumps(summary, indent=2, default=float))
        _log(
            f"  {summary['episodes_written']}/{summary['episodes_attempted']} episodes kept "
            f"({summary['episodes_failed']} failed expert episodes dropped), {summary['frames']} frames, "
            f"sides {summary['side_counts']}, {summary['seconds']:.0f} s"
        )
    return demos, heldout


def write_backbone(cfg: PipelineConfig, out: Path, source: Path | None = None) -> None:
    """The from-scratch SmolVLM backbone `vlm.build` asks for, written once to `output_dir/vlm` (every seed's
    1-RF reads it), its tokenizer trained on the tasks' instructions; `source`'s when made with the same `vlm`."""
    from hf_reflow.envs import metaworld

    folder = out / VLM_DIR
    if cfg.vlm.build and source is not None and all(_same_section(source, cfg, k) for k in ("vlm", "data")):
        reuse.link_folder(source / VLM_DIR, folder, complete=smolvlm.SIZE_FILE)
    if not cfg.vlm.build or (folder / smolvlm.SIZE_FILE).is_file():
        return
    prompts = [metaworld.task_prompt(task, cfg.data.mode) for task in cfg.data.tasks]
    smolvlm.write_smolvlm_folder(folder, cfg.vlm.size, texts=prompts)
    _log(f"SmolVLM backbone ({cfg.vlm.size.text_layers} text layers x {cfg.vlm.size.text_hidden}, random weights) -> {folder}")


def train_chain(cfg: PipelineConfig, out: Path, seed: int, demos: Path, source: Path | None = None) -> list[tuple[Stage, Path]]:
    """Train (or skip, when finished) every stage for one seed; returns (stage, checkpoint) pairs. A stage, its
    states and couplings that `source` (`from_run`) made exactly as this run would are linked from it."""
    done, trained = [], {}  # trained: stage folder name -> its final checkpoint
    theirs = source / f"seed{seed}" if source is not None else None
    for stage in chain(cfg.stages):
        teacher = trained[stage.teacher] if stage.teacher else None
        run_dir = out / f"seed{seed}" / stage.name
        finished = checkpoint_folder(run_dir / PRETRAINED_DIR) is not None
        frames, couplings, actor = demos, None, states_actor(cfg, stage)
        if stage.kind != "flow_matching" and cfg.num_couplings > 0:
            couplings = str(out / f"seed{seed}" / "couplings" / stage.name)
        if actor is not None:
            frames = out / f"seed{seed}" / "states" / actor
            if theirs is not None and not finished:  # kept only if the same weights visited them (below)
                reuse.link_folder(theirs / "states" / actor, frames, complete="meta/info.json")
            if not finished and write_closed_loop_states(cfg, trained[actor], frames, seed, stage) and couplings:
                shutil.rmtree(couplings, ignore_errors=True)  # made at the states just replaced
        train_cfg = stage_config(cfg, 
            stage.kind, seed=seed, output_dir=str(run_dir), teacher=teacher, dataset_root=str(frames), couplings=couplings
        )
        if couplings is not None and not finished:
            if theirs is not None:
                link_couplings(cfg, train_cfg.teacher, frames, theirs / "couplings" / stage.name, couplings, seed)
            generate_couplings(cfg, teacher, frames, couplings, seed, stage)
        if theirs is not None and not finished and reuse.link_run(theirs / stage.name, train_cfg):
            _log(f"seed {seed} {stage.label}: linked from {theirs / stage.name} (same settings and inputs)")
            finished = True
        _log(
            f"seed {seed} {stage.label} ({stage.kind}): {'finished, skipping' if finished else 'training'} -> {run_dir}"
        )
        # resume=True: the trainer checks the settings match and returns a finished run untouched.
        checkpoint = ReflowTrainer(train_cfg).train()
        done.append((stage, checkpoint))
        trained[stage.name] = str(checkpoint)
    return done


def states_actor(cfg: PipelineConfig, stage: Stage) -> str | None:
    """The folder of the stage whose closed-loop states are `stage`'s training frames (`seed<s>/states/<it>`),
    None for the demonstrations: the k-RF's distilled student for redistill; with `coupling_states: closed_loop`,
    the teacher of every later stage (one set of states per teacher)."""
    if stage.kind == "redistill":
        return run_name("distill", stage.k)
    return stage.teacher if cfg.coupling_states == "closed_loop" else None


def write_closed_loop_states(cfg: PipelineConfig, policy: str, root: Path, seed: int, stage: Stage) -> bool:
    """The states the frozen `policy` (a teacher, or a distilled student for `redistill`) visits acting in closed
    loop (at its saved step count, paired noise per episode and chunk) on the demonstrations' layouts and episode
    seeds (then as many on each further training layout set, `rollout_layout_sets`), every episode kept. Made once
    per policy weights (`<root>.json` records them; states another version of the policy visited are made again);
    returns whether they were made now."""
    from hf_reflow.envs import metaworld  # Meta-World is an optional extra

    record, sha = root.parent / f"{root.name}.json", weights_sha256(policy)
    if (root / "meta" / "info.json").is_file() and record.is_file() and json.loads(record.read_text()).get("weights_sha256") == sha:
        return False
    remove_partial_datasets(root.parent)
    shutil.rmtree(root, ignore_errors=True)  # interrupted, or visited by weights the policy no longer has
    d, sets = cfg.data, cfg.rollout_layout_sets
    _log(f"seed {seed} {stage.label}: {d.episodes} closed-loop episodes per task{f' on each of {sets} layout sets' if sets > 1 else ''}"
         f" of {policy} -> {root}")  # fmt: skip
    summary = metaworld.write_dataset(
        root, tasks=d.tasks, episodes_per_task=d.episodes, mode=d.mode, seed=d.seed, layout_seed=metaworld.DEMO_LAYOUT_SEED,
        layout_sets=sets, images=d.images, image_size=d.image_size, policy=controllers_of(policy),
    )  # fmt: skip
    write_text(record, json.dumps({"policy": policy, "weights_sha256": sha, **summary}, indent=2, default=float))
    _log(f"  {summary['frames']} states, {summary['episodes_failed']}/{summary['episodes_attempted']} episodes failed")
    return True


def generate_couplings(
    cfg: PipelineConfig, teacher: str, demos: Path, output: str, seed: int, stage: Stage
) -> None:
    """`num_couplings` (noise, teacher end point) pairs made once (resumable), for one reflow / distill stage."""
    train_cfg = stage_config(cfg, 
        stage.kind, seed=seed, output_dir="<unused>", teacher=teacher, dataset_root=str(demos)
    )
    _log(f"seed {seed} {stage.label}: {cfg.num_couplings} couplings from {teacher} -> {output}")
    generate(output, train_cfg.teacher, train_cfg.dataset, num_couplings=cfg.num_couplings, seed=seed,
             block_size=COUPLINGS_BLOCK_SIZE)


def link_couplings(cfg: PipelineConfig, teacher: Any, frames: Path, src: Path, dst: str, seed: int) -> None:
    """Another run's couplings linked to `dst` when its teacher (same weights), frames and settings made them."""
    if reuse.link_couplings(src, Path(dst), teacher=teacher, frames=frames, num_couplings=cfg.num_couplings, seed=seed,
                            block_size=COUPLINGS_BLOCK_SIZE):  # fmt: skip
        _log(f"seed {seed}: couplings linked from {src}")


ONE_SEED_NOTE = (
    "One training seed: these numbers show this run, not the recipe. Seed-to-seed spread is several points, "
    "so a single seed can rank two stages either way, and one seed's interval can touch the 'equal' line "
    "by chance; the paired tables over 3 and 6 seeds are in docs/results.md (run yours with --seeds=[0,1,2] "
    "or more)."
)


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the results dict also written to `results.json`."""
    from hf_reflow.envs import metaworld
    out = Path(cfg.output_dir)
    chain(cfg.stages)  # a bad chain or task name fails before anything is written
    for task in cfg.data.tasks:
        metaworld.task_prompt(task, cfg.data.mode)
    targets = check_push(cfg)  # write access to every repo, before anything is written or trained
    source = source_run(cfg, out)
    check_output_dir(cfg, out)
    with run_lock(out):  # one pipeline per output dir (each stage also locks its own run dir)
        demos, heldout = write_datasets(cfg, out, source)
        write_backbone(cfg, out, source)
        trained = {seed: train_chain(cfg, out, seed, demos, source) for seed in cfg.seeds}
        rows = evaluate_chain(
            trained, DatasetConfig(repo_id="local/metaworld", root=str(heldout)), cfg.eval, tasks=cfg.data.tasks,
            mode=cfg.data.mode, log=_log,
        )  # fmt: skip
        write_chain_index(out, cfg, trained[cfg.seeds[0]], demos)
        results = report.write(out, cfg, rows, log=_log)
    print(report.format_summary(results["summary"]))
    _log(f"report: {out / 'report.md'}  results: {out / 'results.json'}")
    print(report.speedup_line(results["speedup_at_equal_success"]))
    if len(cfg.seeds) == 1:
        print(ONE_SEED_NOTE)
    if targets:
        push_chain(cfg, out, demos, trained[cfg.seeds[0]], rows, targets)
    return results


def check_push(cfg: PipelineConfig) -> list[str]:
    """With `push.hub_model_id`: each stage's repo (and `push.space_id`'s Space) created now, write access
    confirmed; returns the stage repos in chain order ([] when nothing is pushed)."""
    if not cfg.push.hub_model_id:
        return []
    p = cfg.push
    repos = [repo_for_stage(p.hub_repo_template, p.hub_model_id, k=s.k, stage=s.kind) for s in chain(cfg.stages)]
    if len(set(repos)) != len(repos):
        raise ConfigError(f"push.hub_repo_template {p.hub_repo_template!r} names the same repo for several stages "
                          f"({', '.join(repos)}); use {{k}} and {{suffix}}, e.g. '{{hub_model_id}}-{{k}}rf{{suffix}}'.")  # fmt: skip
    hub = Hub()
    for repo in repos:
        hub.check_push_access(repo, private=p.private, create=True)
    datasets = [demonstrations_repo(cfg), *states_repos(cfg, repos).values(), *couplings_repos(cfg, repos).values()]
    for repo in datasets:
        hub.check_push_access(repo, repo_type="dataset", private=p.private, create=True)
    if p.space_id:
        hub.check_push_access(p.space_id, repo_type="space", private=p.private, create=True, space_sdk=SPACE_SDK)
    _log(f"will push {', '.join(repos)}, the datasets {', '.join(datasets)}"
         f"{f' and the Space {p.space_id}' if p.space_id else ''} after evaluation")  # fmt: skip
    return repos


def demonstrations_repo(cfg: PipelineConfig) -> str:
    """The Hub dataset the pipeline's demonstrations are pushed to: `{hub_model_id}-demos`."""
    return f"{cfg.push.hub_model_id}-demos"


def stage_repos(cfg: PipelineConfig, repos: list[str]) -> dict[str, str]:
    """Stage folder name -> its model repo (`repos` is in chain order, as `check_push` returns it)."""
    return {s.name: repo for s, repo in zip(chain(cfg.stages), repos, strict=True)}


def couplings_repos(cfg: PipelineConfig, repos: list[str]) -> dict[str, str]:
    """Stage folder name -> the Hub dataset its stored couplings are pushed to (`{stage repo}-couplings`)."""
    if cfg.num_couplings <= 0:
        return {}
    by_name = stage_repos(cfg, repos)
    return {s.name: f"{by_name[s.name]}-couplings" for s in chain(cfg.stages) if s.kind != "flow_matching"}


def states_repos(cfg: PipelineConfig, repos: list[str]) -> dict[str, str]:
    """States folder (its actor's stage folder) -> the Hub dataset those closed-loop states are pushed to,
    `{actor's repo}-states` (e.g. `you/mw-2rf-distilled-states`: where the distilled student went)."""
    by_name = stage_repos(cfg, repos)
    actors = {states_actor(cfg, s) for s in chain(cfg.stages)} - {None}
    return {actor: f"{by_name[actor]}-states" for actor in sorted(actors)}


def push_chain(cfg: PipelineConfig, out: Path, demos: Path, stages: list[tuple[Stage, Path]], rows: list[dict],
               repos: list[str]) -> None:  # fmt: skip
    """Push the first seed's demonstrations, then its stages in chain order, each after its closed-loop training
    states (redistill, `coupling_states: closed_loop`) and stored couplings,
    then the Space: every card names its data and teacher by Hub id and commit, and holds its evaluation rows.
    A failure says how to retry: rerun, nothing retrains."""
    hub, seed, shown = Hub(), cfg.seeds[0], []
    try:
        result = push_demonstrations(hub, demos, demonstrations_repo(cfg), private=cfg.push.private)
        _log(f"pushed the demonstrations -> {result.url}{'' if result.created else ' (unchanged)'}")
        couplings, states = couplings_repos(cfg, repos), states_repos(cfg, repos)
        by_name = stage_repos(cfg, repos)
        for (stage, checkpoint), repo in zip(stages, repos, strict=True):
            actor = states_actor(cfg, stage)
            if actor is not None:  # its frames, before the couplings and the card that name them
                folder = out / f"seed{seed}" / "states" / actor
                message = f"Upload the closed-loop states {by_name[actor]} visits (LeRobotDataset, failed episodes kept)"
                result = push_demonstrations(hub, folder, states[actor], private=cfg.push.private, commit_message=message)
                _log(f"pushed the {stage.label} training states -> {result.url}{'' if result.created else ' (unchanged)'}")
            if stage.name in couplings:  # before the stage (whose card names them), after its pushed teacher
                folder = out / f"seed{seed}" / "couplings" / stage.name
                result = push_couplings(hub, folder, couplings[stage.name], private=cfg.push.private)
                _log(f"pushed the {stage.label} couplings -> {result.url}{'' if result.created else ' (unchanged)'}")
            mine = sorted((r for r in rows if r.get("seed") == seed and r.get("run") == stage.name), key=lambda r: r["num_steps"])
            result = push_checkpoint(hub, checkpoint, repo, private=cfg.push.private, eval_rows=mine)
            _log(f"pushed {stage.label} -> {result.url}{'' if result.created else ' (unchanged)'}")
            shown.append((stage.label, repo))
        if cfg.push.space_id:
            hub_chain = space.HubChain(stages=shown, env="metaworld", tasks=list(cfg.data.tasks))
            result = space.push(cfg.push.space_id, hub_chain, private=cfg.push.private, hub=hub)
            _log(f"pushed the Space -> {space.space_url(hub, cfg.push.space_id)}{'' if result.created else ' (unchanged)'}")
    except HubError as e:
        raise HubError(f"{e} Every stage and the report are saved; rerun the same command to retry the push "
                       "(finished stages and evaluations are skipped, unchanged files make no commit).") from None


def write_chain_index(out: Path, cfg: PipelineConfig, stages: list[tuple[Stage, Path]], demos: Path) -> None:
    """`pipeline.json`: the first seed's chain with paths relative to `out` (read by the Space)."""
    index = {
        "env": "metaworld",
        "tasks": cfg.data.tasks,
        "mode": cfg.data.mode,
        "dataset": {"root": str(demos.relative_to(out)), "repo_id": "local/metaworld"},
        "stages": [
            {
                "name": s.label,
                "stage": s.kind,
                "k": s.k,
                # lexical, not resolved: a stage dir may be a link to another run's (reused stages)
                "path": Path(os.path.relpath(p, out)).as_posix(),
            }
            for s, p in stages
        ],
        "results": "results.json",
    }
    write_text(out / "pipeline.json", json.dumps(index, indent=2))
