"""Gradio Space: compare the action chunks and ODE paths of k-RF policies across step counts.

    python space/app.py --chain=outputs/metaworld          # the chain `hf-reflow pipeline` wrote
    python space/app.py                                    # the same: outputs/metaworld (`make demo`)
    python app.py                                          # a pushed Space: the Hub chain in chain.json
    python space/app.py --policies=a/1rf,b/2rf --dataset-root=data/metaworld --env=metaworld
    hf-reflow space --chain=outputs/metaworld

Serves on 127.0.0.1 (a Space sets GRADIO_SERVER_NAME). The logic lives in `hf_reflow.evaluation.compare`;
this file only lays out the page and turns errors into messages shown in it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # figures.py, and hf_reflow/ when bundled beside this file
for _root in () if (HERE / "hf_reflow").is_dir() else (HERE.parent, HERE.parents[1]):
    if (_root / "hf_reflow" / "__init__.py").is_file():  # a checkout (space/ links to hf_reflow/space_app/)
        sys.path.insert(1, str(_root))
        break

import figures  # noqa: E402
import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from hf_reflow.artifacts.checkpoints import CheckpointCache  # noqa: E402
from hf_reflow.errors import CheckpointError, ConfigError, ReflowError  # noqa: E402
from hf_reflow.evaluation import compare  # noqa: E402
from hf_reflow.evaluation.closed_loop import image_size_of  # noqa: E402
from hf_reflow.space import CHAIN_FILE, read_chain_file  # noqa: E402

logger = logging.getLogger("hf_reflow.space")
SOURCES = ("dataset", "env reset")
INTRO = """# hf-reflow: straight flows, fewer steps
Pick k-RF stages of a Reflow chain, an observation and step counts. Every policy starts from the
**same noise** (one seed), so differences come from the policies. Reflowed stages should give nearly
the same chunk at 1 step as at 10, and straight ODE paths."""


def _user_errors(handler):
    """Show any failure as a message in the page (gr.Error), never as a traceback."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except ReflowError as e:
            raise gr.Error(" ".join(str(e).split())) from None
        except Exception as e:  # a bug or an environment problem: say what it was, log the traceback
            logger.exception("space handler failed")
            raise gr.Error(f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None

    return wrapped


def _as_chain(chain: str | Path | list[str] | compare.Chain | None) -> compare.Chain:
    if chain is None and (HERE / CHAIN_FILE).is_file():  # a pushed Space: its chain as Hub ids
        return read_chain_file(HERE / CHAIN_FILE)
    if chain is None:
        return compare.default_chain()
    if isinstance(chain, compare.Chain):
        return chain
    if isinstance(chain, list | tuple):
        return compare.Chain(stages=compare.parse_policy_lines("\n".join(chain)))
    return compare.read_chain(chain)


class SpaceApp:
    """The page's state: the chain, the per-process policy cache and the handlers the page calls.

    A visitor chooses among the chain's stages only: whatever a visitor names is never loaded, unless the
    operator started the server with `allow_any_policy` (then any local path or Hub id a visitor types is
    loaded, still under the processor allow-list; for a private server only).
    """

    def __init__(self, chain: compare.Chain, cache: CheckpointCache, *, allow_any_policy: bool = False) -> None:
        self.chain, self.cache = chain, cache
        self.sources = {spec.name: spec.source for spec in chain.stages}
        self.allow_any_policy = allow_any_policy

    def _source(self, name: str) -> str:
        """The checkpoint behind a stage name; a name outside the chain only with `allow_any_policy`."""
        if name in self.sources:
            return self.sources[name]
        if not self.allow_any_policy:
            raise ConfigError(
                f"this Space shows only its chain's stages ({', '.join(self.sources) or 'none'}); the operator can "
                "allow other policies by starting it with --allow_any_policy=true."
            )
        return name

    def _load(self, source: str):
        """A stage's checkpoint; a visitor-named one fails with a message that says nothing of the server's files."""
        if source in self.sources.values():
            return self.cache.get(source)
        try:
            return self.cache.get(source)
        except CheckpointError:
            raise ConfigError(f"could not load {source[:200]!r}: it is no checkpoint this server can read.") from None

    @property
    def has_dataset(self) -> bool:
        return bool(self.chain.dataset_root or self.chain.dataset_repo_id)

    def _specs(self, stages: list[str] | None, extra: str) -> list[compare.PolicySpec]:
        specs = [
            compare.PolicySpec(name, self.sources[name]) for name in stages or [] if name in self.sources
        ]
        others = compare.parse_policy_lines(extra or "")
        for spec in others:
            self._source(spec.source)  # refused unless the operator allows other policies
        specs += others
        if not specs:
            raise ConfigError(
                "no policy picked: tick a stage of the chain or type a Hub repo id / local path."
            )
        return specs

    def _observation(
        self, source: str, episode, frame, task: str, env_seed, horizon: int, image_size: int | None
    ):
        if source == "dataset":
            if not self.has_dataset:
                raise ConfigError("this chain names no dataset: choose 'env reset' as the observation.")
            dataset = compare.open_dataset(self.chain.dataset_root, self.chain.dataset_repo_id)
            return compare.dataset_observation(
                dataset, _int("episode", episode), _int("frame", frame), horizon
            )
        seed = _int("env seed", env_seed)
        return compare.env_observation(
            self.chain.env, task, seed, horizon, image_size=image_size, image_required=image_size is not None
        )

    def compare(
        self,
        stages,
        extra,
        source,
        episode,
        frame,
        task,
        env_seed,
        steps_text,
        noise_seed,
        progress=gr.Progress(),  # noqa: B008 (Gradio injects it)
    ):
        step_counts = compare.parse_step_counts(steps_text)
        specs = self._specs(stages, extra)
        loaded = []
        for i, spec in enumerate(specs):
            progress(i / (2 * len(specs)), desc=f"loading {spec.name}")
            loaded.append(self._load(spec.source))
        horizon = max(policy.adapter.action_shape[0] for policy in loaded)
        image_size = next((size for p in loaded if (size := image_size_of(p.config))), None)
        observation = self._observation(source, episode, frame, task, env_seed, horizon, image_size)
        comparisons = []
        for i, (spec, policy) in enumerate(zip(specs, loaded, strict=True)):
            progress(0.5 + i / (2 * len(specs)), desc=f"sampling {spec.name}")
            comparisons.append(
                compare.compare_policy(
                    policy, spec.name, observation, step_counts, seed=_int("noise seed", noise_seed)
                )
            )
        table = pd.DataFrame(compare.table_rows(comparisons))
        status = f"Compared {len(specs)} policies on {observation.label}, noise seed {int(noise_seed)}."
        return (
            observation.image,
            figures.chunk_figure(comparisons, observation.expert_action, step_counts),
            figures.path_figure(comparisons, step_counts),
            table,
            status,
        )

    def rollout(self, policy, steps, task, seed, max_steps, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        if not policy:
            raise ConfigError("pick a policy for the rollout (a stage name, Hub repo id or local path).")
        progress(0.1, desc=f"loading {policy}")
        loaded = self._load(self._source(policy))
        progress(0.3, desc="rolling out")
        result = compare.rollout(
            loaded,
            self.chain.env,
            task,
            num_steps=_int("steps", steps),
            seed=_int("seed", seed),
            max_steps=_int("max steps", max_steps),
        )
        title = f"{policy} at {int(steps)} step(s)"
        summary = f"**{title}**: {'success' if result.success else 'collision' if result.collided else 'no success'} in {result.steps} env steps."
        return figures.rollout_figure(result, title), result.frames, summary


SEED_RANGE = (0, 2**32 - 1)  # what numpy / torch seeding accepts


def _int(name: str, value, low: int = 0, high: int = SEED_RANGE[1]) -> int:
    """A whole number in low..high from a page field (every field here is a count, index or seed)."""
    try:
        number = float(value)
        whole = number == int(number)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ConfigError(f"{name} must be a whole number; received {value!r}.")
    if not low <= int(number) <= high:
        raise ConfigError(f"{name} must be in {low}..{high}; received {int(number)}.")
    return int(number)


def build_demo(
    chain: str | Path | list[str] | compare.Chain | None = None,
    *,
    dataset_root: str | None = None,
    dataset_repo_id: str | None = None,
    env: str | None = None,
    cache: CheckpointCache | None = None,
    allow_any_policy: bool = False,
) -> gr.Blocks:
    """The page for a chain: a pipeline output dir, a list of paths / repo ids, or with None the Hub chain
    in chain.json beside this file (a pushed Space), else outputs/metaworld (`make demo`); with neither, a
    `ConfigError` says how to get a chain. `allow_any_policy` lets visitors load any path / Hub id (see
    `SpaceApp`); off by default and always off in a pushed Space."""
    chain = _as_chain(chain)
    chain.dataset_root = dataset_root or chain.dataset_root
    chain.dataset_repo_id = dataset_repo_id or chain.dataset_repo_id
    chain.env = env or chain.env
    app = SpaceApp(chain, cache or CheckpointCache(), allow_any_policy=allow_any_policy)
    with gr.Blocks(title="hf-reflow: compare k-RF policies") as demo:
        gr.Markdown(INTRO)
        inputs = _compare_inputs(app)
        outputs = _compare_outputs()
        inputs["button"].click(_user_errors(app.compare), inputs["values"], outputs, api_name="compare")
        _rollout_section(app)
    demo.space_app = app  # tests read the cache through this
    return demo


def _compare_inputs(app: SpaceApp) -> dict:
    names = list(app.sources)
    with gr.Row():
        with gr.Column():
            stages = gr.CheckboxGroup(names, value=names, label="k-RF stages of the chain")
            extra = gr.Textbox(
                lines=2,
                label="More policies (one per line: Hub repo id or local path, optionally name=...)",
                visible=app.allow_any_policy,
            )
        with gr.Column():
            source = gr.Radio(
                list(SOURCES), value=SOURCES[0] if app.has_dataset else SOURCES[1], label="Observation"
            )
            with gr.Row():
                episode = gr.Number(0, precision=0, label="dataset episode")
                frame = gr.Number(0, precision=0, label="frame")
            with gr.Row():
                task = gr.Dropdown(
                    app.chain.tasks, value=app.chain.tasks[0], label=f"{app.chain.env} task (env reset)"
                )
                env_seed = gr.Number(0, precision=0, label="env seed")
        with gr.Column():
            steps = gr.Textbox(",".join(map(str, compare.DEFAULT_STEP_COUNTS)), label="Step counts (1..100)")
            noise_seed = gr.Number(0, precision=0, label="noise seed (shared by all policies)")
            button = gr.Button("Compare", variant="primary", elem_id="compare-button")
    return {
        "values": [stages, extra, source, episode, frame, task, env_seed, steps, noise_seed],
        "button": button,
    }


def _compare_outputs() -> list:
    with gr.Row():
        camera = gr.Image(label="camera frame", height=200, elem_id="camera")
        status = gr.Markdown(elem_id="status")
    chunks = gr.Plot(label="action chunk per action dimension", elem_id="chunk-plot")
    paths = gr.Plot(label="ODE path from noise to action, in 2-D", elem_id="path-plot")
    table = gr.Dataframe(label="per policy x step count", elem_id="metrics-table")
    return [camera, chunks, paths, table, status]


def _rollout_section(app: SpaceApp) -> None:
    names = list(app.sources)
    with gr.Accordion("Closed-loop rollout (one policy, one step count)", open=False):
        with gr.Row():
            policy = gr.Dropdown(
                names, value=names[0] if names else None, allow_custom_value=app.allow_any_policy, label="policy"
            )
            steps = gr.Number(1, precision=0, label="steps per chunk")
            task = gr.Dropdown(app.chain.tasks, value=app.chain.tasks[0], label="task")
            seed = gr.Number(0, precision=0, label="episode seed")
            max_steps = gr.Number(120, precision=0, label="max env steps")
        button = gr.Button("Run rollout", elem_id="rollout-button")
        with gr.Row():
            plot = gr.Plot(label="hand trajectory", elem_id="rollout-plot")
            frames = gr.Gallery(label="frames", columns=4, height=240, elem_id="rollout-frames")
        summary = gr.Markdown(elem_id="rollout-summary")
    button.click(
        _user_errors(app.rollout),
        [policy, steps, task, seed, max_steps],
        [plot, frames, summary],
        api_name="rollout",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chain", default=None, help="output dir of `hf-reflow pipeline` (default: outputs/metaworld)"
    )
    parser.add_argument(
        "--policies", default=None, help="comma-separated local paths / Hub ids instead of a chain"
    )
    parser.add_argument("--dataset-root", default=None)
    parser.add_argument("--dataset-repo-id", default=None)
    parser.add_argument("--env", default=None, choices=compare.ENVS)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument(
        "--allow_any_policy", choices=("true", "false"), default="false",
        help="let visitors load any local path / Hub id, not only the chain (a private server only)",
    )
    args = parser.parse_args(argv)
    chain = args.policies.split(",") if args.policies else args.chain
    try:
        demo = build_demo(
            chain, dataset_root=args.dataset_root, dataset_repo_id=args.dataset_repo_id, env=args.env,
            allow_any_policy=args.allow_any_policy == "true",
        )
    except ReflowError as e:
        sys.exit(f"hf-reflow space: error: {' '.join(str(e).split())}")
    demo.queue().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=args.port)


if __name__ == "__main__":
    main()
