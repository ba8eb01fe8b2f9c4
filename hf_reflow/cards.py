"""Model cards for k-RF checkpoints, rendered from the packaged Jinja template with `ModelCard.from_template`.

Pure text: the facts come from the checkpoint's `reflow.json` / `config.json`, the lineage found by
`hf_reflow.hub.Hub.lineage` and the rows `hf-reflow eval --output=` writes. Nothing here talks to
the Hub (`hf_reflow.hub` does), and nothing here calls `RepoCard.validate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_reflow.errors import HubError

TEMPLATES = Path(__file__).parent / "templates"
HUB_URL = "https://huggingface.co"
# Columns of the evaluation table and of `model-index`, as `hf-reflow eval --output=` names them.
EVAL_METRICS = {
    "success_rate": "success rate",
    "straightness": "straightness",
    "error_vs_10step": "error vs 10 steps",
    "latency_ms": "latency (ms)",
}


def stage_label(info: dict[str, Any]) -> str:
    """`2-RF`, `2-RF distilled (1 step)`, ... from a `reflow.json`."""
    k = info.get("k", "?")
    return f"{k}-RF distilled (1 step)" if info.get("distilled") else f"{k}-RF"


def tags(info: dict[str, Any], policy_type: str) -> list[str]:
    """Hub tags: reflow, rectified-flow, lerobot, the policy type, `<k>-rf` (and `distilled`)."""
    out = ["reflow", "rectified-flow", "lerobot", "robotics", policy_type, f"{info.get('k', 1)}-rf"]
    return out + (["distilled"] if info.get("distilled") else [])


def hub_datasets(info: dict[str, Any]) -> list[str]:
    """The training dataset as a Hub id, when it came from the Hub (a local `root` has no Hub id)."""
    dataset = info.get("dataset") or {}
    return [dataset["repo_id"]] if dataset.get("repo_id") and not dataset.get("root") else []


def load_eval_rows(path: str | Path, checkpoint: str | Path) -> list[dict[str, Any]]:
    """Rows of an `hf-reflow eval --output=` file that belong to `checkpoint`, sorted by step count.

    A file written for several checkpoints is filtered by each row's `checkpoint`; rows without one
    are taken as they are.
    """
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HubError(
            f"cannot read eval results {str(path)!r} ({e}); pass the JSON `hf-reflow eval --output=` wrote."
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "nfe" in r for r in rows):
        raise HubError(
            f"eval results {str(path)!r} must be a list of rows with `nfe`, as `hf-reflow eval --output=` writes."
        )
    target = _final_folder(checkpoint)
    mine = [r for r in rows if "checkpoint" not in r or _final_folder(r["checkpoint"]) == target]
    if not mine:
        found = sorted({str(r["checkpoint"]) for r in rows})
        raise HubError(
            f"eval results {str(path)!r} have no rows for checkpoint {str(checkpoint)!r} (they cover {', '.join(found)}); "
            "evaluate this checkpoint or pass the matching results file."
        )
    return sorted(mine, key=lambda r: r["nfe"])


def _final_folder(path: str | Path) -> Path:
    """A run dir and its `pretrained_model/` name the same checkpoint."""
    path = Path(path)
    return (
        (path / "pretrained_model").resolve()
        if (path / "pretrained_model" / "config.json").is_file()
        else path.resolve()
    )


def eval_results(rows: list[dict[str, Any]], *, model_name: str, dataset: str) -> list[Any]:
    """`model-index` entries: one `EvalResult` per (step count, metric) present in the rows."""
    from huggingface_hub import EvalResult

    results = []
    for row in rows:
        for key, name in EVAL_METRICS.items():
            if row.get(key) is None:
                continue
            results.append(
                EvalResult(
                    task_type="robotics",
                    task_name="Robot action chunk generation",
                    dataset_type=row.get("dataset") or dataset,
                    dataset_name=row.get("env") or row.get("task") or dataset,
                    metric_type=key,
                    metric_name=f"{name}, {row['nfe']} step{'s' if row['nfe'] != 1 else ''}",
                    metric_value=row[key],
                    metric_config=f"nfe={row['nfe']}",
                )
            )
    return results


def model_card(
    *,
    repo_id: str,
    info: dict[str, Any],
    policy_config: dict[str, Any],
    lineage: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None = None,
    license: str = "apache-2.0",
) -> Any:
    """The `ModelCard` of one k-RF stage (`lineage` oldest first; its last entry is the direct teacher)."""
    from huggingface_hub import ModelCard, ModelCardData

    policy_type = policy_config.get("type", "unknown")
    base = lineage[-1].get("repo_id") if lineage else None
    dataset = (info.get("dataset") or {}).get("repo_id") or "unknown"
    data = ModelCardData(
        library_name="lerobot",
        pipeline_tag="robotics",
        license=license,
        tags=tags(info, policy_type),
        datasets=hub_datasets(info) or None,
        base_model=base,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(eval_rows, model_name=repo_id.split("/")[-1], dataset=dataset)
        if eval_rows
        else None,
    )
    if base:
        data.base_model_relation = "finetune"
    values = _template_values(repo_id, info, policy_config, lineage, eval_rows or [])
    return ModelCard.from_template(data, template_path=str(TEMPLATES / "model_card.md"), **values)


def _template_values(repo_id, info, policy_config, lineage, eval_rows) -> dict[str, Any]:
    num_steps = int(
        info.get("num_steps")
        or policy_config.get("num_steps")
        or policy_config.get("num_inference_steps")
        or 10
    )
    distilled, k = bool(info.get("distilled")), info.get("k", 1)
    return {
        "title": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "stage_label": stage_label(info),
        "stage": info.get("stage", "unknown"),
        "k": k,
        "what": _what(info),
        "policy_type": policy_config.get("type", "unknown"),
        "steps_field": "num_inference_steps" if "num_inference_steps" in policy_config else "num_steps",
        "num_steps": num_steps,
        "steps_advice": "this one was distilled for 1 step." if distilled else (
            "a 1-RF usually needs ~10; reflowed stages keep most of their accuracy at 1-2 (see the table)."
        ),
        "hf_reflow_version": info.get("hf_reflow_version", ""),
        "teacher_link": link(lineage[-1]) if lineage else "none (trained on demonstrations)",
        "couplings_seen": (
            f"{info['couplings_seen']:,}" + (f" (stored: `{info['couplings_dataset']}`)" if info.get("couplings_dataset") else " (made online)")
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
        "lineage": [{**row, "link": link(row), "commit": _commit_text(row)} for row in lineage],
        "eval_rows": [{**{m: _fmt(row.get(m)) for m in EVAL_METRICS}, "nfe": row["nfe"]} for row in eval_rows],
    }  # fmt: skip


def _what(info: dict[str, Any]) -> str:
    stage = info.get("stage")
    if stage == "flow_matching":
        return "flow matching on demonstrations (1-Rectified Flow), the teacher of the reflow stages."
    if stage == "distill":
        return "distilled from its teacher's ODE end points at t = 1 only (InstaFlow-style), for one-step sampling."
    return "trained by reflow on (noise, teacher ODE end point) couplings of its teacher, so its paths are straighter."


def _dataset_text(info: dict[str, Any]) -> str:
    dataset = info.get("dataset") or {}
    if hub_datasets(info):
        return f"[{dataset['repo_id']}]({HUB_URL}/datasets/{dataset['repo_id']})"
    return f"a local LeRobotDataset (`{dataset.get('repo_id', 'unknown')}`)"


def link(row: dict[str, Any]) -> str:
    """Markdown link to a lineage entry's Hub repo, or its local path when it was never pushed."""
    if row.get("repo_id"):
        return f"[{row['repo_id']}]({HUB_URL}/{row['repo_id']})"
    return f"`{row.get('path', 'unknown')}` (local, not on the Hub)"


def _commit_text(row: dict[str, Any]) -> str:
    commit = row.get("commit")
    if commit and row.get("repo_id"):
        return f"[`{commit[:8]}`]({HUB_URL}/{row['repo_id']}/commit/{commit})"
    return "n/a"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def dataset_card(
    *, repo_id: str, spec: dict[str, Any], teacher_repo: str | None, license: str = "apache-2.0"
) -> Any:
    """The `DatasetCard` of a stored couplings folder (`spec` = its couplings.json)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    hub_dataset = spec["dataset_repo_id"] if not spec.get("dataset_root") else None
    data = DatasetCardData(
        license=license,
        task_categories=["robotics"],
        tags=["reflow", "rectified-flow", "lerobot", "couplings", spec.get("policy_type", "unknown")],
        source_datasets=[hub_dataset] if hub_dataset else None,
        pretty_name=f"Reflow couplings of {teacher_repo or spec['teacher']}",
    )
    teacher_row = {"repo_id": teacher_repo, "path": spec["teacher"]}
    info = {"dataset": {"repo_id": spec["dataset_repo_id"], "root": spec.get("dataset_root")}}
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        teacher=teacher_repo or spec["teacher"],
        teacher_link=link(teacher_row),
        teacher_steps=spec["teacher_num_inference_steps"],
        solver=spec["teacher_solver"],
        num_couplings=f"{spec['num_couplings']:,}",
        num_frames=spec["num_frames"],
        num_blocks=-(-spec["num_couplings"] // spec["block_size"]),
        block_size=spec["block_size"],
        chunk=spec["action_shape"][0],
        action_dim=spec["action_shape"][1],
        seed=spec["seed"],
        dataset=spec["dataset_repo_id"],
        dataset_text=_dataset_text(info),
    )
