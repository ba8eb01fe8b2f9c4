"""Closed loop in any LeRobot env (`hf-reflow eval --env.type=...`): checkpoints by step count, paired.

The env is built by LeRobot's own `make_env` from an `EnvConfig` (its registered types: `metaworld`,
`pusht`, `libero`, ..., and plugins such as our `metaworld_detour`), and each step goes through LeRobot's
observation conversion (`preprocess_observation`), the env's processors and the policy's, as in
`lerobot-eval`. What differs from `lerobot-eval` is the noise: every stage and step count meets the same
episode seeds with the same noise per (episode, chunk) (`PolicyController`), so cells pair up episode by
episode. Outcomes: success (`info["is_success"]`), collision where the env reports one (`collided`), else
timeout (hand stalls are only known in our Meta-World env).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.envs.factory import make_env, make_env_pre_post_processors
from lerobot.envs.utils import close_envs, env_to_policy_features, preprocess_observation
from lerobot.utils.constants import ACTION

from hf_reflow.artifacts.checkpoints import CheckpointCache
from hf_reflow.errors import ConfigError
from hf_reflow.evaluation.closed_loop import (
    PolicyController,
    compute_per_env_step,
    episode_seeds,
    pool,
    replanning,
    summarise,
    with_replanning,
)
from hf_reflow.metrics import EvalRow
from hf_reflow.parsing import parse_env_config


def attach_env_closed_loop(rows: list[EvalRow], env_cfg: Any, *, episodes: int,
                           n_action_steps: list[int] | None = None) -> list[EvalRow]:  # fmt: skip
    """Closed-loop results in `env_cfg`'s env (pooled, and `per_task` per LeRobot suite / task id) for rows with
    checkpoint + num_steps, at every `n_action_steps` value (`with_replanning`, as `attach_closed_loop`)."""
    if not rows or episodes < 1:
        return rows
    cache, seeds = CheckpointCache(), episode_seeds(episodes)
    configs = {path: cache.get(path).config for path in dict.fromkeys(row["checkpoint"] for row in rows)}
    for path, config in configs.items():
        check_policy_fits_env(config, env_cfg, path)
    rows = with_replanning(rows, n_action_steps, configs)
    try:
        envs = make_env(env_cfg, n_envs=1)
    except Exception as e:  # a missing simulator, no OpenGL, a task the env does not know
        raise ConfigError(
            f"cannot make the LeRobot env {env_cfg.type!r} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            f"install its simulator (e.g. pip install 'lerobot[{env_cfg.type}]') and check --env.task."
        ) from None
    try:
        for row in rows:
            loaded = cache.get(row["checkpoint"])
            env_pre, env_post = make_env_pre_post_processors(env_cfg, loaded.config)
            per_task = {}
            with loaded.adapter.inference_steps(row["num_steps"]), replanning(loaded.policy, row["n_action_steps"]) as stride:
                controller = PolicyController(loaded.policy, loaded.preprocessor, loaded.postprocessor, None)
                for name, vec in _tasks(envs):
                    runs = [_episode(vec, controller, seed, env_pre, env_post) for seed in seeds]
                    per_task[name] = summarise([{**run, "n_action_steps": stride} for run in runs])
            row.update(pool(list(per_task.values())), per_task=per_task, env_type=env_cfg.type,
                       first_episode_seed=seeds[0])  # fmt: skip
            row.update(compute_per_env_step(row))
    finally:
        close_envs(envs)
    return rows


def training_evaluator(env_settings: dict[str, Any], *, episodes: int, num_steps: int) -> Callable[[Path, int], dict[str, float]]:
    """The evaluation during training (lerobot-train's `--env.*` + `--env_eval_freq`): `(checkpoint, step) ->
    metrics`, the student at `num_steps` steps over the same `episodes` episode seeds every time (paired across steps)."""
    env_cfg = parse_env_config([f"--env.{key}={value}" for key, value in env_settings.items()])

    def evaluate(checkpoint: Path, step: int) -> dict[str, float]:
        (row,) = attach_env_closed_loop([{"checkpoint": str(checkpoint), "num_steps": num_steps}], env_cfg, episodes=episodes)
        return {"eval/pc_success": 100 * row["success_rate"], "eval/n_episodes": float(row["episodes"]),
                "eval/timeout_rate": row["timeout_rate"], "eval/collision_rate": row["collision_rate"]}  # fmt: skip

    return evaluate


def check_policy_fits_env(config: Any, env_cfg: Any, path: str) -> None:
    """Every observation the policy reads must come from the env, at the policy's shape (images: (C, H, W))."""
    offered = {key: tuple(f.shape) for key, f in env_to_policy_features(env_cfg).items()}
    wanted = {key: tuple(f.shape) for key, f in config.input_features.items()}
    wrong = {key: shape for key, shape in wanted.items() if offered.get(key) != shape}
    if wrong:
        raise ConfigError(
            f"{path!r} reads {wrong} but the {env_cfg.type} env gives {offered}; evaluate it in an env with those "
            "observations (e.g. --env.obs_type=...), or a checkpoint trained on this env's features."
        )


def _tasks(envs: dict[str, dict[int, Any]]) -> list[tuple[str, Any]]:
    """(name, vector env) per LeRobot suite and task id: the suite alone for a single-task env."""
    return [(suite if len(tasks) == 1 else f"{suite}/{task_id}", vec)
            for suite, tasks in envs.items() for task_id, vec in tasks.items()]  # fmt: skip


def _episode(vec: Any, controller: PolicyController, seed: int, env_pre: Any, env_post: Any) -> dict[str, Any]:
    """One episode of a 1-env vector env, stepped as `lerobot-eval` steps it; the episode record."""
    controller.start(seed)
    controller.reset()
    observation, _ = vec.reset(seed=[seed])
    task = _task_text(vec)
    success, collided, steps, limit = False, False, 0, int(vec.call("_max_episode_steps")[0])
    while steps < limit:
        steps += 1
        batch = env_pre({**preprocess_observation(observation), "task": task})
        action = controller.act(batch)  # (action_dim,)
        action = env_post({ACTION: torch.from_numpy(action)[None]})[ACTION].cpu().numpy()  # (1, action_dim)
        observation, _reward, terminated, truncated, info = vec.step(action)
        final = info.get("final_info", info)  # autoreset: the finished episode's info
        if terminated[0] or truncated[0]:
            success = bool(np.asarray(final.get("is_success", [False]))[0])
            collided = bool(np.asarray(final.get("collided", [False]))[0])
            break
    outcome = "success" if success else "collision" if collided else "timeout"
    return {"episode_seed": seed, "success": success, "collided": collided and not success, "outcome": outcome,
            "side_taken": None, "steps": steps}  # fmt: skip


def _task_text(vec: Any) -> list[str]:
    """The instruction `lerobot-eval` gives the policy: the env's `task_description`, else `task`, else ""."""
    for name in ("task_description", "task"):
        try:
            return list(vec.call(name))
        except (AttributeError, NotImplementedError):
            continue
    return [""]
