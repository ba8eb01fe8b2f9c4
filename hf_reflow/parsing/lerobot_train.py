"""lerobot-train's flags and the seed guide's names: aliases to our keys, and the ones refused by name."""

from __future__ import annotations

from hf_reflow.configs.fields import SCHEDULERS
from hf_reflow.errors import ConfigError

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
    "use_policy_training_preset": "optim.use_policy_preset",
    "rename_map": "dataset.rename_map",
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
    "checkpoint_path": "continue a run with --resume=true --output_dir=RUN (its newest checkpoint)",
    "save_checkpoint_to_hub": "push the final checkpoint and its model card with --push_to_hub=true --hub_model_id=NAMESPACE/NAME",
    "prefetch_factor": "only the DataLoader's worker count is settable: --num_workers (dataset.num_workers)",
    "persistent_workers": "only the DataLoader's worker count is settable: --num_workers (dataset.num_workers)",
    "dataloader_multiprocessing_context": "only the DataLoader's worker count is settable: --num_workers (dataset.num_workers)",
    "tolerance_s": "frames are read by index (the chunk's delta timestamps); drop the flag",
    "job": "no job settings; name the run with --job_name",
    "dataset.repo_type": "datasets are read as Hub datasets (or a local --dataset.root); drop the flag",
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
