"""Near-goal actions of each stage of a chain against Meta-World's stock expert at the same states.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/near_goal_actions.py outputs/metaworld/seed0 50 reach-v3 out.json

For each stage (1rf, 2rf at 1 and 10 steps; 2rf-distill at 1) it rolls out `episodes` evaluation episodes (the
pipeline's episode seeds and paired noise), and for every state 3-9 cm from the goal compares the action with
the stock expert's (`MultimodalExpert.scripted_action`): the component along the hand-to-goal direction, the
mean per-axis bias, on successful and failed episodes apart; and each failure's closest hand-to-goal distance.
It made the "Why reach misses by a centimetre" table of docs/results.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from hf_reflow.artifacts.checkpoints import load_checkpoint
from hf_reflow.envs import metaworld
from hf_reflow.evaluation import closed_loop
from hf_reflow.evaluation.closed_loop import PolicyController, replanning

STAGES = {"1rf": (1, 10), "2rf": (1, 10), "2rf-distill": (1,)}
NEAR_M = (0.03, 0.09)  # states this far from the goal (hand to observed goal) are compared


def rollout(loaded, task: str, seeds: tuple[int, ...]) -> list[dict]:
    """Per episode: success, hand-to-goal distance (T,), the executed actions and the expert's (T, 4), the
    unit direction from hand to goal (T, 3)."""
    expert = metaworld.MultimodalExpert(task)
    env = metaworld.make_env(task, layout_seed=metaworld.EVAL_LAYOUT_SEED, max_steps=metaworld.default_max_steps(task))
    episodes = []
    with replanning(loaded.policy, None):
        controller = PolicyController(loaded.policy, loaded.preprocessor, loaded.postprocessor,
                                      metaworld.task_prompt(task))  # fmt: skip
        for seed in seeds:
            controller.start(seed)
            states, actions = [], []

            def select(state, _states=states, _actions=actions):
                action = controller(state)
                _states.append(np.asarray(state)), _actions.append(np.asarray(action))
                return action

            select.reset = controller.reset  # fresh action queue per episode, as the evaluation does
            result = metaworld.rollout_policy(env, select, seed)
            S, A = np.stack(states), np.stack(actions)
            offset = S[:, 36:39] - S[:, :3]
            d = np.linalg.norm(offset, axis=1)
            episodes.append({"success": bool(result.success), "d": d, "A": A,
                             "E": np.stack([expert.scripted_action(s) for s in S]),
                             "u": offset / np.maximum(d[:, None], 1e-9)})  # fmt: skip
    env.close()
    return episodes


def near_goal(episodes: list[dict]) -> dict | None:
    """Mean forward action (along the hand-to-goal direction) of policy and expert, and the per-axis bias."""
    masks = [(e, (e["d"] > NEAR_M[0]) & (e["d"] < NEAR_M[1])) for e in episodes]
    picked = [(e["A"][m], e["E"][m], e["u"][m]) for e, m in masks if m.any()]
    if not picked:
        return None
    A, E, U = (np.concatenate(parts) for parts in zip(*picked, strict=True))
    return {"states": len(A), "forward_policy": float((A[:, :3] * U).sum(1).mean()),
            "forward_expert": float((E[:, :3] * U).sum(1).mean()),
            "bias_xyz": [float(x) for x in (A[:, :3] - E[:, :3]).mean(0)]}  # fmt: skip


def main(argv: list[str]) -> None:
    root, episodes, task, output = Path(argv[0]), int(argv[1]), argv[2], Path(argv[3])
    torch.set_num_threads(1)
    seeds, report = closed_loop.episode_seeds(episodes), {}
    for stage, step_counts in STAGES.items():
        loaded = load_checkpoint(str(root / stage / "pretrained_model"))
        for steps in step_counts:
            with loaded.adapter.inference_steps(steps):
                eps = rollout(loaded, task, seeds)
            failed = [e for e in eps if not e["success"]]
            report[f"{stage}@{steps}"] = {
                "success": float(np.mean([e["success"] for e in eps])),
                "near_goal_successes": near_goal([e for e in eps if e["success"]]),
                "near_goal_failures": near_goal(failed),
                "failures_closest_hand_goal_m": [float(e["d"].min()) for e in failed],
            }
            print(stage, steps, json.dumps(report[f"{stage}@{steps}"]), flush=True)
    output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: near_goal_actions.py CHAIN_DIR EPISODES TASK OUTPUT.json (CHAIN_DIR: e.g. outputs/metaworld/seed0)")
    main(sys.argv[1:])
