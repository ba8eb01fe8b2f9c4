"""Model and dataset cards for k-RF stages and stored couplings, rendered with `ModelCard.from_template`.

The facts come from the checkpoint's `reflow.json` / `config.json` / `train_config.json`, its sources
(teacher lineage, the checkpoint it started from, couplings), read through a `hf_reflow.hub.Hub`, and
the rows `hf-reflow eval --output=` writes. Hub metadata names Hub ids only: `base_model` is the stage's
starting checkpoint, `datasets` the Hub datasets it was trained on (demonstrations, couplings), and
`model-index` is written only for results on a Hub dataset. The license is the starting checkpoint's.
Nothing here calls `RepoCard.validate` (it posts to huggingface.co whatever the endpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_reflow.artifacts.checkpoints import read_reflow_info
from hf_reflow.artifacts.couplings_store import check_complete
from hf_reflow.hub import read_push_record, web_url
from hf_reflow.metrics import CARD_METRICS, EvalRow, upgrade_row, wilson_interval
from hf_reflow.publish.lineage import (
    DEFAULT_LICENSE,
    base_source,
    card_license,
    hub_dataset,
    hub_datasets,
    hub_id,
    lineage,
    pushed_id,
    source,
)
from hf_reflow.refs import CheckpointRef
from hf_reflow.stages import LEAF_STAGES, stage_label

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
# The offline columns of the card's table that its `model-index` files under a Hub dataset.
OFFLINE_CARD_METRICS = {key: CARD_METRICS[key] for key in ("straightness", "error_vs_10step")}


def _label(info: dict[str, Any]) -> str:
    """`2-RF`, `2-RF distilled`, `2-RF shortcut` from a `reflow.json` (`stages.stage_label`)."""
    return stage_label(info.get("stage") or ("distill" if info.get("distilled") else None), info.get("k", "?"))


def tags(info: dict[str, Any], policy_type: str) -> list[str]:
    """Hub tags: reflow, rectified-flow, lerobot, the policy type, `<k>-rf` (and `distilled` / `shortcut`)."""
    out = ["reflow", "rectified-flow", "lerobot", "robotics", policy_type, f"{info.get('k', 1)}-rf"]
    leaf = info.get("stage") or ("distill" if info.get("distilled") else None)
    return out + ([LEAF_STAGES[leaf]] if leaf in LEAF_STAGES else [])


@dataclass
class StageCard:
    """A rendered model card and what the push needs beside it."""

    folder: Path
    card: Any
    label: str
    teacher_repo: str | None


def checkpoint_card(hub: Any, checkpoint: str | Path, repo_id: str, *, eval_rows: list[EvalRow] | None = None,
                    license: str | None = None) -> StageCard:  # fmt: skip
    """The card of a local checkpoint about to be pushed to `repo_id` (`license`: override)."""
    ref = CheckpointRef.of(checkpoint)
    folder, info, policy_config = ref.local(), read_reflow_info(ref), ref.config()
    teachers = lineage(hub, info)
    base = base_source(hub, folder, info, teachers)
    card = model_card(
        repo_id=repo_id, info=info, policy_config=policy_config, lineage=teachers,
        eval_rows=[upgrade_row(row) for row in eval_rows] if eval_rows else eval_rows,  # rows of any version
        license={"license": license} if license else card_license(hub, base), base_model=base.get("repo_id"),
        couplings_repo=pushed_id(info.get("couplings_dataset")),
    )  # fmt: skip
    label = f"{_label(info)} {policy_config.get('type', '')} policy ({info.get('num_steps', '?')} steps)"
    return StageCard(folder, card, label, teachers[-1].get("repo_id") if teachers else None)


# ---- model card ---------------------------------------------------------------------------------
def eval_results(rows: list[EvalRow], *, model_name: str, dataset: str | None) -> list[Any]:
    """`model-index` entries: closed-loop success under the environment it was measured in (env type, tasks,
    episodes, step count and 95 % interval), offline metrics under the Hub dataset they were measured on
    (the row's `dataset`, else `dataset`; none for a local one); latency (machine-bound) never."""
    results = []
    for row in rows:
        results += _closed_loop_results(row) + _offline_results(row, hub_id(row.get("dataset", dataset)))
    return results


def _steps_text(row: dict[str, Any]) -> str:
    return f"{row['num_steps']} step{'s' if row['num_steps'] != 1 else ''}{_replanning(row)}"


def _metric_config(row: dict[str, Any]) -> str:
    return f"num_steps={row['num_steps']}" + (f",n_action_steps={row['n_action_steps']}" if _replanning(row) else "")


def _closed_loop_results(row: dict[str, Any]) -> list[Any]:
    """Success in closed loop, filed under the env (as RL models on the Hub file theirs): `dataset.type` is
    the env type, `dataset.config` its tasks; the episode count, seed and Wilson interval in `metric.args`."""
    from huggingface_hub import EvalResult

    if not row.get("env_type") or row.get("success_rate") is None or not row.get("episodes"):
        return []
    tasks = ",".join(sorted(row.get("per_task") or {}))
    low, high = wilson_interval(int(row["successes"]), int(row["episodes"]))
    args = {"episodes": row["episodes"], "successes": row["successes"], "ci95": [round(low, 4), round(high, 4)],
            "first_episode_seed": row.get("first_episode_seed"), "env_mode": row.get("env_mode")}  # fmt: skip
    return [EvalResult(
        task_type="robotics", task_name="Closed-loop control", dataset_type=row["env_type"],
        dataset_name=f"{row['env_type']} ({tasks})" if tasks else row["env_type"], dataset_config=tasks or None,
        metric_type="success_rate", metric_name=f"success rate, {_steps_text(row)}, {row['episodes']} episodes",
        metric_value=row["success_rate"], metric_config=_metric_config(row),
        metric_args={k: v for k, v in args.items() if v is not None},
    )]  # fmt: skip


def _offline_results(row: dict[str, Any], dataset_id: str | None) -> list[Any]:
    """Straightness and error vs 10 steps, measured on held-out frames of a Hub dataset."""
    from huggingface_hub import EvalResult

    if dataset_id is None:
        return []
    return [
        EvalResult(task_type="robotics", task_name="Robot action chunk generation", dataset_type=dataset_id,
                   dataset_name=dataset_id, metric_type=key, metric_name=f"{name}, {_steps_text(row)}",
                   metric_value=row[key], metric_config=_metric_config(row))  # fmt: skip
        for key, name in OFFLINE_CARD_METRICS.items()
        if row.get(key) is not None
    ]


def _replanning(row: dict[str, Any]) -> str:
    """`, re-planning every N` for a row evaluated at another n_action_steps than its policy's own."""
    n, own = row.get("n_action_steps"), row.get("policy_n_action_steps")
    return f", re-planning every {n}" if n is not None and own is not None and n != own else ""


def model_card(
    *,
    repo_id: str,
    info: dict[str, Any],
    policy_config: dict[str, Any],
    lineage: list[dict[str, Any]],
    eval_rows: list[EvalRow] | None = None,
    license: dict[str, str] | str = DEFAULT_LICENSE,
    base_model: str | None = None,
    couplings_repo: str | None = None,
) -> Any:
    """The `ModelCard` of one k-RF stage (`lineage` oldest first; its last entry is the direct teacher).

    `base_model`: the Hub id it started from (teacher, or the 1-RF's `policy.path`); `license`: a
    license id or the card fields `license` / `license_name` / `license_link`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    policy_type = policy_config.get("type", "unknown")
    license = {"license": license} if isinstance(license, str) else license
    datasets = hub_datasets(info) + ([couplings_repo] if couplings_repo else [])
    results = eval_results(
        eval_rows or [], model_name=repo_id.split("/")[-1], dataset=next(iter(hub_datasets(info)), None)
    )
    data = ModelCardData(
        library_name="lerobot",
        pipeline_tag="robotics",
        **license,
        tags=tags(info, policy_type),
        datasets=datasets or None,
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )
    if base_model:
        data.base_model_relation = "finetune"
    values = _template_values(repo_id, info, policy_config, lineage, eval_rows or [])
    values.update(base_model=base_model, couplings_repo=couplings_repo, model_index=bool(results),
                  reproduce=reproduce_command(repo_id, info, lineage, base_model))  # fmt: skip
    return ModelCard.from_template(data, template_path=str(TEMPLATES / "model_card.md"), **values)


def _features(features: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"name": k, "type": str(f.get("type", "")).lower(), "shape": tuple(f.get("shape", ()))}
            for k, f in (features or {}).items()]  # fmt: skip


def _template_values(repo_id, info, policy_config, lineage, eval_rows) -> dict[str, Any]:
    num_steps = int(
        info.get("num_steps")
        or policy_config.get("num_steps")
        or policy_config.get("num_inference_steps")
        or 10
    )
    distilled, k = bool(info.get("distilled")), info.get("k", 1)
    dataset = hub_dataset(info)
    pinned = dataset and (dataset["commit"] or dataset["revision"])
    return {
        "title": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "stage_label": _label(info),
        "stage": info.get("stage", "unknown"),
        "k": k,
        "what": _what(info),
        "policy_type": policy_config.get("type", "unknown"),
        "steps_field": "num_inference_steps" if "num_inference_steps" in policy_config else "num_steps",
        "num_steps": num_steps,
        "inputs": _features(policy_config.get("input_features")),
        "outputs": _features(policy_config.get("output_features")),
        "chunk_size": policy_config.get("chunk_size", "?"),
        "n_action_steps": policy_config.get("n_action_steps", "?"),
        "dataset_arg": (f"--dataset.repo_id={dataset['repo_id']}" + (f" --dataset.revision={pinned}" if pinned else "")
                        if dataset else "--dataset.root=<a LeRobotDataset with the same features>"),
        "steps_advice": "this one was distilled for 1 step." if distilled else (
            "a 1-RF usually needs ~10; reflowed stages keep most of their accuracy at 1-2 (see the table)."
        ),
        "hf_reflow_version": info.get("hf_reflow_version", ""),
        "teacher_link": link(lineage[-1]) if lineage else "none (trained on demonstrations)",
        "couplings_seen": (
            f"{info['couplings_seen']:,}" + _couplings_text(info.get("couplings_dataset"))
            + (f", each for {info['coupling_reuse']} updates" if info.get("coupling_reuse", 1) > 1 else "")
            if info.get("couplings_seen") else "none (1-RF: dataset actions)"
        ),
        "teacher_steps": (
            f"{info['teacher_num_inference_steps']} ({info.get('teacher_solver', 'euler')})"
            if info.get("teacher_num_inference_steps") else "n/a"
        ),
        "train_steps": info.get("train_steps", "?"),
        "batch_size": info.get("batch_size", "?"),
        "lr": info.get("lr", "?"),
        "time_sampler": info.get("time_sampler", "?"),
        "loss": info.get("loss", "?"),
        "ema_decay": info.get("ema_decay") or "none",
        "seed": info.get("seed", "?"),
        "dataset_text": _dataset_text(info),
        "hub_url": web_url(),
        "lerobot_eval_envs": lerobot_eval_envs(eval_rows, policy_config),
        "lineage": [{**row, "link": link(row), "commit": _commit_text(row)} for row in lineage],
        "eval_rows": [{**{m: _fmt(row.get(m)) for m in CARD_METRICS}, "num_steps": row["num_steps"]} for row in eval_rows],
        "latency_device": ", ".join(sorted({row["latency_device"] for row in eval_rows if row.get("latency_device")}))
                          or "the evaluation machine",
        "closed_loop_env": next((f"{r['env_type']} ({', '.join(sorted(r.get('per_task') or {}))}), {r['episodes']} episodes "
                                 "per step count" for r in eval_rows if r.get("env_type") and r.get("episodes")), None),
    }  # fmt: skip


def lerobot_eval_envs(eval_rows: list[EvalRow], policy_config: dict[str, Any]) -> list[str]:
    """`lerobot-eval` env flags that replay the card's closed-loop episodes, one per task ([] = none measured)."""
    row = next((r for r in eval_rows if r.get("env_type") and r.get("per_task")), None)
    if row is None:
        return []
    cameras = [f for f in (policy_config.get("input_features") or {}).values() if str(f.get("type", "")).upper() == "VISUAL"]
    # a camera policy sees the env's frames rendered at the size it was trained on: (3, H, W) -> H
    extra = (f" --env.obs_type=pixels_agent_pos --env.image_size={cameras[0]['shape'][-1]}" if cameras else "") + (
        f" --env.mode={row['env_mode']}" if row.get("env_mode", "multimodal") != "multimodal" else "")
    episodes = next(iter(row["per_task"].values())).get("episodes", 50)
    return [f"--env.type={row['env_type']} --env.task={task}{extra} --seed={row['first_episode_seed']} "
            f"--eval.n_episodes={episodes}" for task in row["per_task"]]  # fmt: skip


def _what(info: dict[str, Any]) -> str:
    stage = info.get("stage")
    if stage == "flow_matching":
        return "flow matching on demonstrations (1-Rectified Flow), the teacher of the reflow stages."
    k = int(info.get("num_steps") or 1)
    times = "at t = 1 only (InstaFlow-style)" if k == 1 else f"at the {k} times its {k} Euler steps query"
    if stage == "distill":
        return f"distilled from its teacher's ODE end points {times}, for {k}-step sampling."
    if stage == "redistill":
        return (f"distilled from its teacher's ODE end points {times}, at the frames of its dataset: in a pipeline, "
                "the states a first distilled student of the same teacher visits when it acts (near misses included).")
    if stage == "shortcut":
        return ("a shortcut model (Frans et al. 2024) of its teacher: the teacher's flow plus a step-size input, trained "
                "on its couplings so that one large step lands where two smaller ones do, for 1-2 step sampling.")
    if stage == "meanflow":
        return ("a MeanFlow model (Geng et al. 2025) of its teacher: the teacher's flow plus a step-size input, trained "
                "on its couplings to give the average velocity over each step (the MeanFlow identity), for one-step sampling.")
    return "trained by reflow on (noise, teacher ODE end point) couplings of its teacher, so its paths are straighter."


def reproduce_command(repo_id: str, info: dict[str, Any], lineage: list[dict[str, Any]], base_model: str | None) -> str | None:
    """The commands that retrain this stage from the Hub alone: its `train_config.json` from this repo, with
    every local source replaced by its Hub id and commit (demonstrations, teacher, stored couplings).
    None when one of them was never pushed (the card then says what is missing)."""
    dataset, teacher = hub_dataset(info), lineage[-1] if lineage else None
    couplings = info.get("couplings_dataset")
    record = read_push_record(couplings) if couplings and Path(couplings).is_dir() else {"repo_id": hub_id(couplings)}
    if dataset is None or (teacher and not teacher.get("repo_id")) or (couplings and not record.get("repo_id")):
        return None
    folder = f"{repo_id.split('/')[-1]}-reproduce"
    flags = [f"--config_path={folder}/train_config.json", f"--output_dir={folder}/run", f"--dataset.repo_id={dataset['repo_id']}",
             "--dataset.root=null"] + _pin("dataset", dataset["commit"] or dataset["revision"])  # fmt: skip
    if teacher:
        flags += [f"--teacher.path={teacher['repo_id']}", *_pin("teacher", teacher.get("commit"))]
    elif base_model:  # a 1-RF fine-tuned from a Hub checkpoint
        flags += [f"--policy.path={base_model}"]
    if couplings:
        flags += [f"--couplings.path={record['repo_id']}", *_pin("couplings", record.get("commit"))]
    flags += ["--push_to_hub=false", "--wandb.enable=false", "--resume=false"]
    return f"hf download {repo_id} train_config.json --local-dir {folder}\nhf-reflow train " + " ".join(flags)


def _pin(source: str, revision: str | None) -> list[str]:
    return [f"--{source}.revision={revision}"] if revision else []


def _couplings_text(couplings: str | None) -> str:
    """Where a stage's stored couplings are: their Hub dataset once pushed, else that they stayed local."""
    if not couplings:
        return " (made online)"
    repo = pushed_id(couplings)
    return f" (stored: [{repo}]({web_url()}/datasets/{repo}))" if repo else " (stored locally, not on the Hub)"


def _dataset_text(info: dict[str, Any]) -> str:
    found = hub_dataset(info)
    if found:
        repo, commit = found["repo_id"], found["commit"]
        at = f" at [`{commit[:8]}`]({web_url()}/datasets/{repo}/commit/{commit})" if commit else (
            f" at revision `{found['revision']}`" if found["revision"] else "")
        return f"[{repo}]({web_url()}/datasets/{repo}){at}"
    return f"a local LeRobotDataset (`{(info.get('dataset') or {}).get('repo_id', 'unknown')}`)"


def link(row: dict[str, Any]) -> str:
    """Markdown link to a lineage entry's Hub repo, or its local path when it was never pushed."""
    if row.get("repo_id"):
        return f"[{row['repo_id']}]({web_url()}/{row['repo_id']})"
    return f"`{row.get('path', 'unknown')}` (local, not on the Hub)"


def _commit_text(row: dict[str, Any]) -> str:
    commit = row.get("commit")
    if commit and row.get("repo_id"):
        return f"[`{commit[:8]}`]({web_url()}/{row['repo_id']}/commit/{commit})"
    return "n/a"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- dataset card (stored couplings) ------------------------------------------------------------
def couplings_card(hub: Any, folder: Path, repo_id: str, *, license: str | None = None) -> tuple[Any, str]:
    """(the `DatasetCard` of a complete couplings folder about to be pushed to `repo_id`, a commit label)."""
    spec = check_complete(folder)
    teacher = source(hub, spec.teacher)
    teacher_name = teacher.get("repo_id") or spec.teacher
    card = dataset_card(
        repo_id=repo_id, spec=spec, teacher_repo=teacher.get("repo_id"), teacher_commit=teacher.get("commit"),
        license={"license": license} if license else card_license(hub, teacher),
    )  # fmt: skip
    return card, f"{spec.num_couplings} reflow couplings of {teacher_name}"


def dataset_card(
    *, repo_id: str, spec: Any, teacher_repo: str | None, license: dict[str, str] | str = DEFAULT_LICENSE,
    teacher_commit: str | None = None,
) -> Any:
    """The `DatasetCard` of a stored couplings folder (`spec`: its `CouplingsSpec`; `teacher_commit`: the
    teacher's pushed commit when it was pushed after the couplings were made)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    license = {"license": license} if isinstance(license, str) else license
    info = {"dataset": {"repo_id": spec.dataset_repo_id, "root": spec.dataset_root, "revision": spec.dataset_revision}}
    source_dataset = hub_dataset(info)  # the frames' Hub dataset, also when pushed from a local root since
    data = DatasetCardData(
        **license,
        task_categories=["robotics"],
        tags=["reflow", "rectified-flow", "lerobot", "couplings", spec.policy_type],
        source_datasets=[source_dataset["repo_id"]] if source_dataset else None,
        pretty_name=f"Reflow couplings of {teacher_repo or spec.teacher}",
        configs=[
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
        ],
    )
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        teacher=teacher_repo or spec.teacher,
        teacher_link=link({"repo_id": teacher_repo, "path": spec.teacher}),
        teacher_commit=spec.teacher_commit or teacher_commit or "unknown (never pushed)",
        teacher_sha256=spec.teacher_sha256,
        teacher_steps=spec.teacher_num_inference_steps,
        solver=spec.teacher_solver,
        num_couplings=f"{spec.num_couplings:,}",
        num_frames=spec.num_frames,
        num_blocks=spec.num_blocks,
        block_size=spec.block_size,
        chunk=spec.action_shape[0],
        action_dim=spec.action_shape[1],
        seed=spec.seed,
        dataset_text=_dataset_text(info),
        dataset_fingerprint=spec.dataset_fingerprint,
        dataset_arg=(f"--dataset.repo_id={source_dataset['repo_id']}"
                     + (f" --dataset.revision={source_dataset['commit']}" if source_dataset["commit"] else "")
                     if source_dataset else "--dataset.root=<the same LeRobotDataset>"),
    )
