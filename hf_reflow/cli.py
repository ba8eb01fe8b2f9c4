"""`hf-reflow` command line: thin wrappers that parse, build and call one function.

    hf-reflow dataset toy --root=data/toy --episodes=200
    hf-reflow train --config=recipes/toy/1rf.yaml --output_dir=outputs/toy_1rf
    hf-reflow train --config=recipes/toy/2rf.yaml --teacher.path=outputs/toy_1rf --output_dir=outputs/toy_2rf
    hf-reflow eval --policy.path=outputs/toy_1rf,outputs/toy_2rf --dataset.root=data/toy --nfe=1,2,4,10 --env=toy
    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml -m hf_reflow train --config=...

User errors print one line (`hf-reflow: error: ...`) and exit with code 2, without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from hf_reflow.errors import ConfigError, ReflowError

USAGE = """usage: hf-reflow <command> [--key=value ...]

commands:
  train     train one stage (flow_matching = 1-RF, reflow = k+1-RF, distill): --config=recipe.yaml + overrides
  pipeline  the whole k-RF chain on Meta-World + report: --config=recipes/metaworld/default.yaml
  dataset   write demonstrations as a LeRobotDataset: `hf-reflow dataset metaworld|toy --root=DIR --episodes=N`
  eval      evaluate checkpoints by step count: --policy.path=A[,B] --dataset.root=DIR --nfe=1,2,4,10
  push      push a checkpoint (+ model card) to the Hub: --checkpoint=DIR --repo_id=user/name-2rf [--eval=results.json]
            or stored couplings as a Hub dataset: --couplings=DIR --repo_id=user/name-couplings
  couplings generate reflow couplings once: generate --teacher.path=CKPT --dataset.root=DIR --output=DIR
  space     serve the Gradio Space on 127.0.0.1: --chain=outputs/metaworld [--port=7860]; --bundle=DIR to deploy
"""


def _options(args: list[str], allowed: dict[str, object]) -> dict[str, object]:
    """Parse `--key=value` options against `allowed` defaults (unknown keys rejected)."""
    from hf_reflow.configs import parse_overrides

    values = dict(allowed)
    for key, value in parse_overrides(args):
        if key not in allowed:
            raise ConfigError(f"unknown option --{key}; valid options: {', '.join('--' + k for k in allowed)}.")
        values[key] = value
    return values


def cmd_train(args: list[str]) -> int:
    from hf_reflow.configs import parse_train_config
    from hf_reflow.trainer import ReflowTrainer

    final = ReflowTrainer(parse_train_config(args)).train()
    print(f"final checkpoint: {final}")
    return 0


def cmd_pipeline(args: list[str]) -> int:
    from hf_reflow.configs import parse_pipeline_config
    from hf_reflow.pipeline import run

    run(parse_pipeline_config(args))
    return 0


def cmd_dataset(args: list[str]) -> int:
    sources = {"metaworld": _dataset_metaworld, "toy": _dataset_toy}
    if not args or args[0] not in sources:
        raise ConfigError(
            "`hf-reflow dataset` needs a source: metaworld or toy "
            "(e.g. hf-reflow dataset metaworld --tasks=reach-v3,push-v3 --episodes=100 --root=data/metaworld)."
        )
    return sources[args[0]](args[1:])


def _dataset_toy(args: list[str]) -> int:
    from hf_reflow.envs import toy

    opts = _options(args, {"root": None, "episodes": 200, "seed": 0, "repo_id": "local/toy"})
    if not opts["root"]:
        raise ConfigError("--root is required: the folder to write the dataset into.")
    root = toy.write_dataset(opts["root"], episodes=int(opts["episodes"]), seed=int(opts["seed"]), repo_id=opts["repo_id"])
    print(f"dataset written: {root}")
    return 0


def _dataset_metaworld(args: list[str]) -> int:
    from hf_reflow.configs import DemoConfig

    opts = _options(
        args,
        {"root": None, "tasks": "reach-v3,push-v3", "episodes": 100, "mode": "multimodal", "seed": 0,
         "images": False, "image_size": 96, "repo_id": "local/metaworld", "layout": "demo"},
    )  # fmt: skip
    if not opts["root"]:
        raise ConfigError("--root is required: the folder to write the dataset into.")
    if opts["layout"] not in ("demo", "eval"):
        raise ConfigError(f"--layout must be demo (training layouts) or eval (held-out layouts), got {opts['layout']!r}.")
    tasks = [t.strip() for t in str(opts["tasks"]).split(",") if t.strip()]
    DemoConfig(tasks=tasks, episodes=int(opts["episodes"]), mode=str(opts["mode"]))  # the recipe's checks
    from hf_reflow.envs import metaworld

    summary = metaworld.write_dataset(
        opts["root"], tasks=tasks, episodes_per_task=int(opts["episodes"]), mode=opts["mode"], seed=int(opts["seed"]),
        layout_seed=metaworld.DEMO_LAYOUT_SEED if opts["layout"] == "demo" else metaworld.EVAL_LAYOUT_SEED,
        images=bool(opts["images"]), image_size=int(opts["image_size"]), repo_id=str(opts["repo_id"]),
    )  # fmt: skip
    print(
        f"dataset written: {summary['root']} ({summary['episodes_written']}/{summary['episodes_attempted']} episodes, "
        f"{summary['episodes_failed']} failed expert episodes dropped, {summary['frames']} frames, "
        f"sides {summary['side_counts']})"
    )
    return 0


def cmd_eval(args: list[str]) -> int:
    from hf_reflow.configs import DatasetConfig
    from hf_reflow.data import load_metadata
    from hf_reflow.evaluate import evaluate_checkpoint

    opts = _options(
        args,
        {
            "policy.path": None, "dataset.root": None, "dataset.repo_id": "local/dataset", "nfe": "1,2,4,10",
            "num_samples": 64, "env": "none", "episodes": 50, "seed": 0, "output": None,
            "tasks": "reach-v3,push-v3", "mode": "multimodal", "workers": 0,
        },
    )  # fmt: skip
    if not opts["policy.path"]:
        raise ConfigError("--policy.path is required (one checkpoint, or several separated by commas).")
    if opts["env"] not in ("none", "toy", "metaworld"):
        raise ConfigError(f"--env must be none, toy or metaworld, got {opts['env']!r}.")
    tasks = [t.strip() for t in str(opts["tasks"]).split(",") if t.strip()]
    if opts["env"] == "metaworld":
        from hf_reflow.configs import DemoConfig

        DemoConfig(tasks=tasks, mode=str(opts["mode"]))  # checks the mode
        from hf_reflow.envs.metaworld import valid_task_names

        unknown = [t for t in tasks if t not in valid_task_names(opts["mode"])]
        if unknown or not tasks:
            raise ConfigError(
                f"unknown Meta-World task(s) {unknown or tasks} for mode {opts['mode']}; valid: "
                f"{', '.join(valid_task_names(opts['mode']))}."
            )
    nfes = [int(n) for n in str(opts["nfe"]).split(",")]
    data_cfg = DatasetConfig(repo_id=opts["dataset.repo_id"], root=opts["dataset.root"])
    load_metadata(data_cfg)  # a clear error before any checkpoint loads
    rows = []
    for path in str(opts["policy.path"]).split(","):
        rows += evaluate_checkpoint(
            path, data_cfg, nfes=nfes, num_samples=int(opts["num_samples"]), episodes=int(opts["episodes"]),
            env=opts["env"] if opts["env"] == "toy" else "none", seed=int(opts["seed"]),
        )  # fmt: skip
    if opts["env"] == "metaworld" and int(opts["episodes"]) > 0:
        from hf_reflow.evaluate import attach_closed_loop

        attach_closed_loop(
            rows, tasks=tasks, mode=str(opts["mode"]), episodes=int(opts["episodes"]), workers=int(opts["workers"])
        )
    print(format_table(rows))
    if opts["output"]:
        with open(opts["output"], "w") as f:
            json.dump(rows, f, indent=2)
        print(f"results: {opts['output']}")
    return 0


def cmd_push(args: list[str]) -> int:
    from hf_reflow import cards
    from hf_reflow.hub import Hub

    opts = _options(
        args,
        {"checkpoint": None, "couplings": None, "repo_id": None, "eval": None, "private": False, "revision": None,
         "commit_message": None, "license": "apache-2.0"},
    )  # fmt: skip
    if not opts["repo_id"] or bool(opts["checkpoint"]) == bool(opts["couplings"]):
        raise ConfigError(
            "push needs --repo_id=namespace/name and one of --checkpoint=DIR (a model) or --couplings=DIR (a dataset), "
            "e.g. --checkpoint=outputs/toy/2rf --repo_id=you/toy-2rf."
        )
    if not isinstance(opts["private"], bool):
        raise ConfigError(f"--private must be true or false, got {opts['private']!r}.")
    hub, repo_id = Hub(), str(opts["repo_id"])
    hub.check_push_access(repo_id)  # before reading anything else
    common = {k: opts[k] for k in ("private", "revision", "commit_message")}
    if opts["couplings"]:
        result = hub.push_couplings(opts["couplings"], repo_id, license=str(opts["license"]), **common)
    else:
        rows = cards.load_eval_rows(opts["eval"], opts["checkpoint"]) if opts["eval"] else None
        result = hub.push_checkpoint(
            opts["checkpoint"], repo_id, eval_rows=rows, license=str(opts["license"]), **common
        )
    print(f"{'pushed' if result.created else 'unchanged, no new commit'}: {result.url}")
    return 0


def cmd_couplings(args: list[str]) -> int:
    if not args or args[0] != "generate":
        raise ConfigError(
            "`hf-reflow couplings` needs a subcommand: generate (e.g. hf-reflow couplings generate "
            "--teacher.path=outputs/toy/1rf --dataset.root=data/toy --output=couplings/toy)."
        )
    from hf_reflow.configs import DatasetConfig, TeacherConfig
    from hf_reflow.offline_couplings import generate

    opts = _options(
        args[1:],
        {"teacher.path": None, "teacher.revision": None, "teacher.num_inference_steps": 10, "teacher.solver": "euler",
         "dataset.root": None, "dataset.repo_id": "local/dataset", "output": None, "num_couplings": 10_000,
         "block_size": 1024, "batch_size": 256, "seed": 0},
    )  # fmt: skip
    if not opts["teacher.path"] or not opts["output"]:
        raise ConfigError("--teacher.path=CHECKPOINT (local or Hub id) and --output=DIR are required.")
    teacher = TeacherConfig(
        path=str(opts["teacher.path"]), revision=opts["teacher.revision"],
        num_inference_steps=int(opts["teacher.num_inference_steps"]), solver=str(opts["teacher.solver"]),
    )  # fmt: skip
    root = generate(
        opts["output"], teacher, DatasetConfig(repo_id=str(opts["dataset.repo_id"]), root=opts["dataset.root"]),
        num_couplings=int(opts["num_couplings"]), block_size=int(opts["block_size"]),
        batch_size=int(opts["batch_size"]), seed=int(opts["seed"]),
    )  # fmt: skip
    print(f"couplings written: {root}")
    return 0


def cmd_space(args: list[str]) -> int:
    from hf_reflow import space

    opts = _options(
        args,
        {"chain": None, "policies": None, "dataset.root": None, "dataset.repo_id": None, "env": None,
         "port": None, "bundle": None},
    )  # fmt: skip
    if opts["bundle"]:
        print(f"Space written: {space.bundle(str(opts['bundle']))}")
        return 0
    policies = opts["policies"]
    if policies:  # YAML may have parsed "a,b" as a string or a one-element list
        policies = [str(p) for p in (policies if isinstance(policies, list) else str(policies).split(","))]
    demo = space.load_app().build_demo(
        policies or opts["chain"], dataset_root=opts["dataset.root"], dataset_repo_id=opts["dataset.repo_id"], env=opts["env"]
    )  # fmt: skip
    demo.queue().launch(server_name="127.0.0.1", server_port=int(opts["port"]) if opts["port"] else None)
    return 0


def format_table(rows: list[dict]) -> str:
    """A plain-text table of evaluation rows."""
    columns = [c for c in ("checkpoint", "k", "nfe", "success_rate", "collision_rate", "left_share",
                           "straightness", "error_vs_10step", "latency_ms") if any(c in r for r in rows)]  # fmt: skip

    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [columns] + [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table)


class _DropKnownNoise(logging.Filter):
    """Drop LeRobot's start-up warnings that say nothing about the user's run."""

    NOISE = ("No accelerated backend detected", "is not available. Switching to", "torchcodec")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropKnownNoise())


COMMANDS = {"train": cmd_train, "pipeline": cmd_pipeline, "dataset": cmd_dataset, "eval": cmd_eval}
COMMANDS["push"] = cmd_push
COMMANDS["couplings"] = cmd_couplings
COMMANDS["space"] = cmd_space


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _quiet_logs()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = COMMANDS.get(argv[0])
    try:
        if command is None:
            raise ConfigError(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}.")
        return command(argv[1:])
    except ReflowError as e:
        print(f"hf-reflow: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
