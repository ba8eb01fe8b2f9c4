"""The run's Accelerator and its experiment trackers (TensorBoard, trackio, W&B as lerobot-train sets it up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lerobot.common.wandb_utils import get_wandb_run_id_from_filesystem

from hf_reflow.configs import TrainConfig
from hf_reflow.errors import ConfigError
from hf_reflow.refs import WEIGHTS


def make_accelerator(cfg: TrainConfig, output_dir: Path) -> Any:
    """The Accelerator of a run: device, precision, accumulation, and its trackers logging under `output_dir`."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    if "trackio" in cfg.log_with:  # trackio is local-first: keep its SQLite store in the run
        os.environ.setdefault("TRACKIO_DIR", str(output_dir / "logs" / "trackio"))
    trackers: list[Any] = list(cfg.log_with)
    if cfg.wandb.enable:
        trackers.append(wandb_tracker(cfg, output_dir))
    return Accelerator(
        cpu=cfg.policy.device == "cpu",  # lerobot-train's --policy.device=cpu
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def wandb_tracker(cfg: TrainConfig, output_dir: Path) -> Any:
    """Accelerate's W&B tracker, set up like lerobot-train's `--wandb.*`; it starts on the main process only."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("--wandb.enable=true needs wandb: pip install 'hf-reflow[tracking]' (or pip install wandb).") from None
    from accelerate.tracking import WandBTracker

    w = cfg.wandb
    # wandb writes under output_dir/wandb, where lerobot-train's runs keep theirs.
    kwargs = {"dir": str(output_dir), "name": cfg.job_name or output_dir.name, "notes": w.notes}
    kwargs.update({k: v for k, v in (("entity", w.entity), ("mode", w.mode)) if v is not None})
    if w.add_tags:  # lerobot-train's `cfg_to_group` tags, plus the stage
        kwargs["tags"] = [f"policy:{cfg.policy.type}", f"seed:{cfg.seed}", f"dataset:{cfg.dataset.repo_id}",
                          f"stage:{cfg.stage}"] + ([f"env:{cfg.env['type']}"] if cfg.env else [])  # fmt: skip
    run_id = w.run_id
    if run_id is None and cfg.resume and (output_dir / "wandb" / "latest-run").exists():
        run_id = get_wandb_run_id_from_filesystem(output_dir)  # --resume=true continues the same W&B run
    if run_id:
        kwargs.update(id=run_id, resume="allow")
    return WandBTracker(w.project, **kwargs)


def log_model_artifact(cfg: TrainConfig, output_dir: Path, accelerator: Any, final: Path) -> None:
    """The final weights as a W&B model artifact named as lerobot-train names its checkpoints' (tags joined)."""
    import wandb

    run = accelerator.get_tracker("wandb", unwrap=True)
    name = f"{cfg.job_name or output_dir.name}-{cfg.steps:06d}".replace("/", "_").replace(":", "_")
    artifact = wandb.Artifact(name, type="model")
    artifact.add_file(str(final / WEIGHTS))
    run.log_artifact(artifact)


def scalar_config(cfg: TrainConfig) -> dict[str, Any]:
    """Flat scalar hyper-parameters for the trackers (TensorBoard rejects lists and dicts)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix.rstrip(".")] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", cfg.to_dict())
    return flat
