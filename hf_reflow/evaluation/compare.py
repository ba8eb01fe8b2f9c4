"""Side-by-side comparison of k-RF policies on one observation: the logic behind the Gradio Space.

For every policy x step count, from one noise tensor shared by all policies (same seed), it computes the
action chunk, the ODE path x_t from noise to action, the latency per chunk, the straightness and the
error vs the same policy's 10-step chunk; it projects the paths to 2-D and runs short closed-loop
rollouts. No UI here: `space/app.py` draws what this module returns.

Chains: a folder written by `hf-reflow pipeline` holds `pipeline.json` listing its stages (paths
relative to the folder) and its dataset; any policy can also be given as a local path or Hub repo id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hf_reflow import flow
from hf_reflow.artifacts.checkpoints import LoadedCheckpoint
from hf_reflow.data import video_backend
from hf_reflow.envs import toy
from hf_reflow.errors import ConfigError, DataError
from hf_reflow.evaluation.closed_loop import PolicyController, metaworld_episodes, play_toy
from hf_reflow.evaluation.offline import REFERENCE_STEPS, latency_ms
from hf_reflow.policies.base import sample_policy
from hf_reflow.sampling import seeded_noise

MAX_COMPARE_STEPS = 100
DEFAULT_STEP_COUNTS = (1, 2, 4, 10)
DEFAULT_CHAIN_DIR = "outputs/metaworld"
PIPELINE_FILE = "pipeline.json"
ENVS: tuple[str, ...] = ("metaworld", "toy")


# --------------------------------------------------------------------------- chains


@dataclass(frozen=True)
class PolicySpec:
    """A policy to compare: a display name and a local checkpoint path or Hub repo id."""

    name: str
    source: str


@dataclass
class Chain:
    """The stages of a k-RF chain plus the data and env they were trained for."""

    stages: list[PolicySpec]
    dataset_root: str | None = None
    dataset_repo_id: str | None = None
    env: str = "metaworld"
    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3"])


def read_chain(directory: str | Path) -> Chain:
    """The chain described by `directory/pipeline.json` (stage paths are relative to `directory`)."""
    directory = Path(directory)
    file = directory / PIPELINE_FILE
    if not file.is_file():
        raise ConfigError(
            f"{str(directory)!r} has no {PIPELINE_FILE}; pass the output dir of `hf-reflow pipeline` "
            "or list the policies explicitly (local paths or Hub repo ids)."
        )
    try:
        data = json.loads(file.read_text())
        stages = [PolicySpec(s["name"], _relative_to(directory, s["path"])) for s in data["stages"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{str(file)!r} is not a valid pipeline file ({type(e).__name__}: {e}).") from None
    dataset = data.get("dataset") or {}
    root = dataset.get("root")
    return Chain(
        stages=stages,
        dataset_root=_relative_to(directory, root) if root else None,
        dataset_repo_id=dataset.get("repo_id"),
        env=data.get("env", "metaworld"),
        tasks=list(data.get("tasks") or ["reach-v3"]),
    )


def _relative_to(directory: Path, path: str) -> str:
    """`path` resolved against `directory` unless it is absolute (a Hub id has no local meaning)."""
    candidate = Path(path)
    return str(candidate if candidate.is_absolute() else directory / candidate)


def default_chain(directory: str | Path = DEFAULT_CHAIN_DIR) -> Chain:
    """The chain `make demo` / `hf-reflow pipeline` wrote at `directory`; there is no built-in Hub chain,
    so without one a `ConfigError` says in one line how to get or name one."""
    if (Path(directory) / PIPELINE_FILE).is_file():
        return read_chain(directory)
    raise ConfigError(
        f"no chain to show: {str(directory)!r} has no {PIPELINE_FILE}; run `make demo` (or `hf-reflow pipeline`) to "
        "train one there, or pass --chain=<pipeline output dir> or --policies=<local paths or Hub ids, comma-separated>."
    )


def parse_policy_lines(text: str) -> list[PolicySpec]:
    """Policies from text, one per line (or comma-separated): `path_or_repo` or `name=path_or_repo`."""
    specs = []
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item:
            continue
        name, _, source = item.rpartition("=")
        source = source.strip()
        specs.append(PolicySpec(name.strip() or source, source))
    return specs


def parse_step_counts(text: str | list[int]) -> list[int]:
    """Step counts from `"1,2,4,10"`; each an integer in 1..MAX_COMPARE_STEPS, duplicates dropped."""
    items = text if isinstance(text, list) else [s for s in str(text).replace(" ", ",").split(",") if s]
    counts = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(f"step counts must be integers like 1,2,4,10; received {item!r}.") from None
        if not 1 <= value <= MAX_COMPARE_STEPS:
            raise ConfigError(f"each step count must be in 1..{MAX_COMPARE_STEPS}; received {value}.")
        if value not in counts:
            counts.append(value)
    if not counts:
        raise ConfigError("give at least one step count, e.g. 1,2,4,10.")
    return counts


# --------------------------------------------------------------------------- observations


@dataclass
class Observation:
    """One observation to compare on, with the expert's actions from it.

    Attributes:
        raw: unnormalised observation, batched (B = 1): `observation.*` tensors and `task` (list of str).
        expert_action: (T, action_dim) the demonstration's (or scripted expert's) next actions, T >= 1.
        image: (H, W, 3) uint8 camera frame, or None.
        label: where it came from, for titles.
    """

    raw: dict[str, Any]
    expert_action: np.ndarray
    image: np.ndarray | None
    label: str


_DATASETS: dict[tuple[str | None, str | None], Any] = {}


def open_dataset(root: str | None, repo_id: str | None) -> Any:
    """A LeRobotDataset (frames only, no chunking), opened once per (root, repo_id)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    key = (root, repo_id)
    if key not in _DATASETS:
        try:
            _DATASETS[key] = LeRobotDataset(repo_id or "local/dataset", root=root, video_backend=video_backend())
        except Exception as e:
            raise DataError(
                f"cannot open the dataset (root={root!r}, repo_id={repo_id!r}): {type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}. Pass a LeRobotDataset folder or Hub dataset id."
            ) from None
    return _DATASETS[key]


def dataset_observation(dataset: Any, episode: int, frame: int, horizon: int) -> Observation:
    """Frame `frame` of episode `episode` and the demonstration's next `horizon` actions."""
    meta = dataset.meta
    if not 0 <= episode < meta.total_episodes:
        raise ConfigError(f"episode must be in 0..{meta.total_episodes - 1}; received {episode}.")
    start, stop = (int(meta.episodes[episode][k]) for k in ("dataset_from_index", "dataset_to_index"))
    if not 0 <= frame < stop - start:
        raise ConfigError(f"episode {episode} has frames 0..{stop - start - 1}; received frame {frame}.")
    item = dataset[start + frame]
    actions = dataset.hf_dataset.select(range(start + frame, min(start + frame + horizon, stop)))["action"]
    raw = {k: v.unsqueeze(0) for k, v in item.items() if k.startswith("observation.")}
    raw["task"] = [item["task"]]
    image = next((_to_uint8(item[k]) for k in meta.camera_keys if k in item), None)
    expert = torch.stack(list(actions)).numpy()  # (T, action_dim)
    return Observation(raw, expert, image, f"episode {episode}, frame {frame}")


def _to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def env_observation(
    env: str,
    task: str,
    seed: int,
    horizon: int,
    *,
    image_size: int | None = None,
    image_required: bool = False,
) -> Observation:
    """A fresh env reset from `seed` (evaluation layouts) and the scripted expert's next `horizon` actions.

    Meta-World also renders the camera frame (`image_size`, default the env's) for display and for
    policies that read images; when rendering fails that is an error only if `image_required`.
    """
    if env == "toy":
        episode = toy.expert_episode(seed)
        raw = {"observation.state": torch.from_numpy(episode.states[:1]), "task": [toy.TASK]}
        return Observation(raw, episode.actions[:horizon], None, f"toy reset, seed {seed}")
    if env != "metaworld":
        raise ConfigError(f"env must be one of {', '.join(ENVS)}; received {env!r}.")
    from hf_reflow.envs import metaworld as mw

    size = image_size or mw.DEFAULT_IMAGE_SIZE
    with mw.make_env(task, layout_seed=mw.EVAL_LAYOUT_SEED, max_steps=horizon, image_size=size) as world:
        try:
            episode = mw.rollout_expert(
                task, seed, layout_seed=mw.EVAL_LAYOUT_SEED, max_steps=horizon, images=True, env=world
            )
        except RuntimeError as e:  # no offscreen OpenGL
            if image_required:
                raise DataError(f"the policies read camera images but rendering failed: {e}") from None
            episode = mw.rollout_expert(
                task, seed, layout_seed=mw.EVAL_LAYOUT_SEED, max_steps=horizon, env=world
            )
        prompt = world.description
    raw = {"observation.state": torch.from_numpy(episode.states[:1]), "task": [prompt]}
    image = None
    if episode.images is not None:
        image = episode.images[0]
        raw[mw.IMAGE_KEY] = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255
    return Observation(raw, episode.actions, image, f"{task} reset, seed {seed}")


def check_observation(loaded: LoadedCheckpoint, name: str, observation: Observation) -> None:
    """Fail with a clear message when the policy reads a key the observation lacks, or another shape."""
    for key, feature in (loaded.policy.config.input_features or {}).items():
        if key not in observation.raw:
            raise DataError(
                f"policy {name!r} reads {key!r}, which this observation lacks (it has "
                f"{', '.join(k for k in observation.raw if k != 'task')}); pick a matching dataset or env."
            )
        have = tuple(observation.raw[key].shape[1:])
        if getattr(feature.type, "name", "") == "STATE" and have != tuple(feature.shape):
            raise DataError(
                f"policy {name!r} expects {key} of shape {tuple(feature.shape)}, the observation has {have}; "
                "it was trained on another dataset or env."
            )


# --------------------------------------------------------------------------- comparison


@dataclass
class Trajectory:
    """One policy at one step count, from the shared noise.

    Attributes:
        action: (chunk, action_dim) the chunk in action units (after the policy's postprocessor).
        path: (S + 1, chunk * action_dim) x_t at each solver step in the normalised space, path[0] = noise.
        times: (S + 1,) the t of each path entry, from 1 down to 0.
    """

    num_steps: int
    nfe: int  # velocity evaluations: num_steps for Euler, 2 * num_steps - 1 for Heun
    action: np.ndarray
    path: np.ndarray
    times: np.ndarray
    latency_ms: float
    straightness: float
    error_vs_10step: float  # MSE vs the same policy's REFERENCE_STEPS chunk, normalised space (as `hf-reflow eval`)
    error_vs_expert: float  # MSE vs the expert's next actions, action units


@dataclass
class PolicyComparison:
    """All step counts of one policy plus its 10-step reference (also in `runs` when asked for)."""

    name: str
    source: str
    stage: str
    k: int | None
    reference: Trajectory
    runs: list[Trajectory]


@torch.no_grad()
def _trajectory(
    loaded: LoadedCheckpoint,
    batch: dict[str, Any],
    noise: Tensor,
    num_steps: int,
    expert: np.ndarray,
    reference: Tensor | None,
    repeats: int,
) -> tuple[Trajectory, Tensor]:
    """Sample `num_steps` Euler steps with the path recorded; metrics against `reference` (normalised) and `expert`."""
    out = sample_policy(loaded.adapter, batch, noise, num_steps=num_steps, return_path=True)
    reference = out.action if reference is None else reference
    action_dim = loaded.policy.config.output_features["action"].shape[0]  # SmolVLA / pi0 pad to 32: trim
    chunk = loaded.postprocessor(out.action[..., :action_dim])[0].cpu().numpy()  # (chunk, action_dim), action units
    horizon = min(len(expert), len(chunk))
    trajectory = Trajectory(
        num_steps=num_steps,
        nfe=out.nfe,
        action=chunk,
        path=out.path[:, 0].flatten(1).cpu().numpy(),  # (S + 1, chunk * action_dim)
        times=out.times.cpu().numpy(),
        latency_ms=latency_ms(loaded.adapter, batch, noise, num_steps, repeats),
        straightness=float(flow.straightness(out.path, out.times)[0]),
        error_vs_10step=float((out.action - reference).pow(2).mean()),
        error_vs_expert=float(np.mean((chunk[:horizon] - expert[:horizon]) ** 2)),
    )
    return trajectory, out.action


def compare_policy(
    loaded: LoadedCheckpoint,
    name: str,
    observation: Observation,
    step_counts: list[int],
    *,
    seed: int,
    latency_repeats: int = 3,
) -> PolicyComparison:
    """The 10-step reference and every step count of one policy, all from the noise of `seed`."""
    check_observation(loaded, name, observation)
    with loaded.lock:
        batch = loaded.preprocessor(dict(observation.raw))
        # (1, chunk, action_dim), equal for every policy of equal action shape: the comparison is paired.
        noise = seeded_noise((1, *loaded.adapter.action_shape), seed)
        expert = observation.expert_action
        reference, ref_action = _trajectory(
            loaded, batch, noise, REFERENCE_STEPS, expert, None, latency_repeats
        )
        runs = [
            reference
            if steps == REFERENCE_STEPS
            else _trajectory(loaded, batch, noise, steps, expert, ref_action, latency_repeats)[0]
            for steps in step_counts
        ]
    stage = str(loaded.info.get("stage", "unknown"))
    return PolicyComparison(name, loaded.source, stage, loaded.info.get("k"), reference, runs)


def table_rows(comparisons: list[PolicyComparison]) -> list[dict[str, Any]]:
    """One row per policy x step count: latency, straightness, errors vs 10 steps and vs the expert."""
    return [
        {
            "policy": c.name,
            "stage": c.stage,
            "k": c.k if c.k is not None else "",
            "num_steps": run.num_steps,
            "nfe": run.nfe,
            "latency_ms": round(run.latency_ms, 3),
            "straightness": round(run.straightness, 5),
            "error_vs_10step": round(run.error_vs_10step, 5),
            "error_vs_expert": round(run.error_vs_expert, 5),
        }
        for c in comparisons
        for run in c.runs
    ]


def project_paths(comparison: PolicyComparison) -> dict[int, np.ndarray]:
    """2-D view of every path of one policy, keyed by step count (REFERENCE_STEPS included).

    x = progress along the chord from the noise to the 10-step end point (noise at 0, that end at 1),
    y = deviation from that chord along the direction in which the paths deviate most (top principal
    direction of the off-chord parts), in the same units. A straight path to the reference end lies on
    y = 0; a curved one bulges away from it.

    Returns:
        {steps: (S + 1, 2)}.
    """
    paths = {REFERENCE_STEPS: comparison.reference.path, **{run.num_steps: run.path for run in comparison.runs}}
    noise = comparison.reference.path[0]  # (D,)
    chord = noise - comparison.reference.path[-1]
    length = float(np.linalg.norm(chord)) or 1.0
    along = chord / length
    offsets = {steps: noise - path for steps, path in paths.items()}  # (S + 1, D), 0 at the noise
    residuals = np.concatenate([o - np.outer(o @ along, along) for o in offsets.values()])
    across = np.zeros_like(along)
    if np.abs(residuals).max() > 1e-9:
        across = np.linalg.svd(residuals, full_matrices=False)[2][0]
        ref_dev = offsets[REFERENCE_STEPS] @ across
        if ref_dev[np.argmax(np.abs(ref_dev))] < 0:
            across = -across  # the 10-step path bulges upwards
    return {steps: np.stack([o @ along, o @ across], axis=1) / length for steps, o in offsets.items()}


# --------------------------------------------------------------------------- closed loop


@dataclass
class RolloutResult:
    """A short closed-loop episode of one policy at one step count.

    Attributes:
        hand_xy: (T, 2) the hand (toy: the point) position at every state the policy acted on.
        obstacle_xy / obstacle_radius: the obstacle, in the same units; target_xy: the first target.
        frames: up to `max_frames` (H, W, 3) uint8 camera frames (Meta-World, when rendering works).
    """

    success: bool
    collided: bool
    steps: int
    hand_xy: np.ndarray
    obstacle_xy: np.ndarray
    obstacle_radius: float
    target_xy: np.ndarray
    frames: list[np.ndarray]


def rollout(
    loaded: LoadedCheckpoint,
    env: str,
    task: str,
    *,
    num_steps: int,
    seed: int,
    max_steps: int | None = None,
    frames: bool = True,
) -> RolloutResult:
    """Run the policy closed-loop at `num_steps` Euler steps per chunk for one evaluation episode.

    `max_steps`: the episode's step limit (Meta-World default: the task's own horizon).
    """
    parse_step_counts([num_steps])
    with loaded.lock, loaded.adapter.inference_steps(num_steps):
        if env == "toy":
            return _toy_rollout(loaded, seed)
        return _metaworld_rollout(loaded, task, seed, max_steps, frames)


def _toy_rollout(loaded: LoadedCheckpoint, seed: int) -> RolloutResult:
    start, goal = toy.layout(np.random.default_rng(seed))
    controller = PolicyController(loaded.policy, loaded.preprocessor, loaded.postprocessor, toy.TASK)
    result = play_toy(controller, seed)
    hand = np.stack(controller.hand)[:, :2]
    return RolloutResult(
        result.success, result.collided, result.steps, hand, (start + goal) / 2, toy.OBSTACLE_RADIUS, goal, []
    )


def _metaworld_rollout(
    loaded: LoadedCheckpoint, task: str, seed: int, max_steps: int | None, frames: bool
) -> RolloutResult:
    """The evaluation's episode runner (`metaworld_episodes`), one episode, with display frames."""
    from hf_reflow.envs import metaworld as mw

    max_steps = max_steps or mw.default_max_steps(task)
    every = max(1, max_steps // 8) if frames else None
    with metaworld_episodes(loaded, task, max_steps=max_steps, display_every=every) as episodes:
        result = episodes.play(seed)
        world, hand = episodes.env, np.stack(episodes.controller.hand)[:, :2]
        return RolloutResult(result.success, result.collided, result.steps, hand, world.obstacle_centre.copy(),
                             mw.OBSTACLE_RADIUS_M, world.target_xy.copy(), episodes.controller.frames)  # fmt: skip


