"""`hf-reflow` command line: thin wrappers that parse, build and call one function.

    hf-reflow dataset toy --root=data/toy --episodes=200
    hf-reflow train --config_path=recipes/toy/1rf.yaml --output_dir=outputs/toy_1rf
    hf-reflow train --config_path=recipes/toy/2rf.yaml --teacher.path=outputs/toy_1rf --output_dir=outputs/toy_2rf
    hf-reflow train --help                                  # every option, its type, default and meaning
    hf-reflow eval --policy.path=outputs/toy_1rf,outputs/toy_2rf --dataset.root=data/toy --num_steps=1,2,4,10 --env=toy
    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml -m hf_reflow train --config_path=...

Every command parses into a typed dataclass of `hf_reflow.configs` (one parser); `--help` lists its options.
User errors print one line (`hf-reflow: error: ...`) and exit with code 2, without a traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from hf_reflow.atomic import write_text
from hf_reflow.errors import ConfigError, ReflowError, RenamedSettingWarning
from hf_reflow.metrics import CONSOLE_COLUMNS, EvalRow

USAGE = """usage: hf-reflow <command> [--config_path=RECIPE.yaml] [--key=value ...]   (hf-reflow <command> --help: its options)

commands:
  train     train one stage (flow_matching = 1-RF, reflow = k+1-RF, distill, redistill, shortcut, meanflow): --config_path=recipe.yaml + overrides
  pipeline  the whole k-RF chain on Meta-World + report: --config_path=recipes/metaworld/default.yaml
  dataset   write demonstrations as a LeRobotDataset: `hf-reflow dataset metaworld|toy --root=DIR --episodes=N`
  eval      evaluate checkpoints by step count: --policy.path=A[,B] --dataset.root=DIR --num_steps=1,2,4,10
  push      push a checkpoint (+ model card) to the Hub: --checkpoint=DIR --repo_id=user/name-2rf [--eval=results.json]
            or stored couplings as a Hub dataset: --couplings=DIR --repo_id=user/name-couplings
  couplings generate reflow couplings once: generate --teacher.path=CKPT --dataset.root=DIR --output=DIR
  space     serve the Gradio Space on 127.0.0.1: --chain=outputs/metaworld [--port=7860]; --bundle=DIR to deploy;
            --push --repo_id=user/space [--chain=DIR or Hub ids] [--private] to push it as a Gradio Space
"""


def cmd_train(args: list[str]) -> int:
    from hf_reflow.parsing import parse_train_config

    config = parse_train_config(args)  # every key checked before anything loads
    from hf_reflow.publish.publish import check_stage_push, push_stage_from_main_process
    from hf_reflow.training.trainer import ReflowTrainer

    # As TRL's scripts: the repo and write access are checked before training, the push comes after it.
    repo_id = check_stage_push(config) if config.push_to_hub else None
    evaluate = None
    if config.env is not None:  # lerobot-train's evaluation during training
        from hf_reflow.evaluation.lerobot_envs import training_evaluator

        evaluate = training_evaluator(config.env, episodes=config.eval.n_episodes, num_steps=config.final_num_steps)
    final = ReflowTrainer(config, evaluate=evaluate).train()
    if repo_id is not None:
        push_stage_from_main_process(config, final, repo_id)
    print(f"final checkpoint: {final}")
    return 0


def cmd_pipeline(args: list[str]) -> int:
    from hf_reflow.parsing import parse_pipeline_config

    config = parse_pipeline_config(args)
    from hf_reflow.pipeline import run

    run(config)
    return 0


def cmd_dataset(args: list[str]) -> int:
    from hf_reflow.configs import MetaWorldDataConfig, ToyDataConfig
    from hf_reflow.parsing import HelpRequested, render_help

    sources = {"metaworld": _dataset_metaworld, "toy": _dataset_toy}
    if args and args[0] in ("-h", "--help"):
        raise HelpRequested(
            render_help(MetaWorldDataConfig, "dataset metaworld") + "\n\n" + render_help(ToyDataConfig, "dataset toy")
        )
    if not args or args[0] not in sources:
        raise ConfigError(
            "`hf-reflow dataset` needs a source: metaworld or toy "
            "(e.g. hf-reflow dataset metaworld --tasks=reach-v3,push-v3 --episodes=100 --root=data/metaworld)."
        )
    return sources[args[0]](args[1:])


def _dataset_toy(args: list[str]) -> int:
    from hf_reflow.configs import ToyDataConfig
    from hf_reflow.parsing import parse_config

    cfg = parse_config(ToyDataConfig, args, command="dataset toy")
    from hf_reflow.envs import toy

    root = toy.write_dataset(cfg.root, episodes=cfg.episodes, seed=cfg.seed, repo_id=cfg.repo_id)
    print(f"dataset written: {root}")
    return 0


def _dataset_metaworld(args: list[str]) -> int:
    from hf_reflow.configs import MetaWorldDataConfig
    from hf_reflow.parsing import parse_config

    cfg = parse_config(MetaWorldDataConfig, args, command="dataset metaworld")
    from hf_reflow.envs import metaworld
    from hf_reflow.evaluation.closed_loop import controllers_of

    policy = controllers_of(cfg.policy_path) if cfg.policy_path else None  # loaded and checked before any rollout
    summary = metaworld.write_dataset(
        cfg.root, tasks=cfg.tasks, episodes_per_task=cfg.episodes, mode=cfg.mode, seed=cfg.seed,
        layout_seed=metaworld.DEMO_LAYOUT_SEED if cfg.layout == "demo" else metaworld.EVAL_LAYOUT_SEED, layout_sets=cfg.layout_sets,
        images=cfg.images, image_size=cfg.image_size, repo_id=cfg.repo_id, policy=policy, hold_steps=cfg.hold_steps,
        expert_aim=cfg.expert_aim,
    )  # fmt: skip
    kept = "all kept (policy rollouts)" if policy else "failed expert episodes dropped"
    print(
        f"dataset written: {summary['root']} ({summary['episodes_written']}/{summary['episodes_attempted']} episodes, "
        f"{summary['episodes_failed']} failed, {kept}, {summary['frames']} frames, sides {summary['side_counts']})"
    )
    return 0


def cmd_eval(args: list[str]) -> int:
    from hf_reflow.configs import EvaluateConfig
    from hf_reflow.parsing import parse_config, parse_env_config, split_env_args

    env_args, args = split_env_args(args)
    cfg = parse_config(EvaluateConfig, args, command="eval")
    env_cfg = parse_env_config(env_args) if env_args else None  # any LeRobot env, as lerobot-eval's --env.*
    if env_cfg is not None and cfg.env != "none":
        raise ConfigError(f"--env={cfg.env} and --env.type={env_cfg.type} both name an env; keep one.")
    if cfg.env == "metaworld":
        from hf_reflow.envs.metaworld import valid_task_names

        unknown = [t for t in cfg.tasks if t not in valid_task_names(cfg.mode)]
        if unknown or not cfg.tasks:
            raise ConfigError(
                f"unknown Meta-World task(s) {unknown or cfg.tasks} for mode {cfg.mode}; valid: "
                f"{', '.join(valid_task_names(cfg.mode))}."
            )
    from hf_reflow.data import load_metadata
    from hf_reflow.evaluation.evaluate import EvalSettings, EvalTarget, evaluate

    load_metadata(cfg.dataset)  # a clear error before any checkpoint loads
    settings = EvalSettings(step_counts=cfg.num_steps, num_samples=cfg.num_samples, seed=cfg.seed, episodes=cfg.episodes,
                            env=cfg.env, tasks=tuple(cfg.tasks), mode=cfg.mode, workers=cfg.workers,
                            n_action_steps=cfg.n_action_steps, env_config=env_cfg)  # fmt: skip
    rows = evaluate([EvalTarget(path) for path in cfg.policy.path], cfg.dataset, settings)
    print(format_table(rows))
    if cfg.output:
        write_text(Path(cfg.output), json.dumps(rows, indent=2))
        print(f"results: {cfg.output}")
    return 0


def cmd_push(args: list[str]) -> int:
    from hf_reflow.configs import PushConfig
    from hf_reflow.parsing import parse_config

    cfg = parse_config(PushConfig, args, command="push")
    from hf_reflow.hub import Hub
    from hf_reflow.publish import publish
    from hf_reflow.publish.eval_rows import load_eval_rows

    rows = load_eval_rows(cfg.eval, cfg.checkpoint) if cfg.eval else None  # local, first
    hub = Hub()
    hub.check_push_access(cfg.repo_id, repo_type="model" if cfg.checkpoint else "dataset", private=cfg.private)
    common = {"private": cfg.private, "revision": cfg.revision, "commit_message": cfg.commit_message}
    if cfg.couplings:
        result = publish.push_couplings(hub, cfg.couplings, cfg.repo_id, license=cfg.license, **common)
    elif cfg.dataset:
        result = publish.push_demonstrations(hub, cfg.dataset, cfg.repo_id, license=cfg.license, **common)
    else:
        result = publish.push_checkpoint(
            hub, cfg.checkpoint, cfg.repo_id, eval_rows=rows, license=cfg.license, set_new_version=cfg.set_new_version,
            **common,
        )
    print(f"{'pushed' if result.created else 'unchanged, no new commit'}: {result.url}")
    return 0


def cmd_couplings(args: list[str]) -> int:
    from hf_reflow.configs import CouplingsGenerateConfig
    from hf_reflow.parsing import HelpRequested, parse_config, render_help

    if args and args[0] in ("-h", "--help"):
        raise HelpRequested(render_help(CouplingsGenerateConfig, "couplings generate"))
    if not args or args[0] != "generate":
        raise ConfigError(
            "`hf-reflow couplings` needs a subcommand: generate (e.g. hf-reflow couplings generate "
            "--teacher.path=outputs/toy/1rf --dataset.root=data/toy --output=couplings/toy)."
        )
    cfg = parse_config(CouplingsGenerateConfig, args[1:], command="couplings generate")
    from accelerate import PartialState

    from hf_reflow.training.couplings import generate

    root = generate(
        cfg.output, cfg.teacher, cfg.dataset, num_couplings=cfg.num_couplings, block_size=cfg.block_size,
        batch_size=cfg.batch_size, seed=cfg.seed,
    )  # fmt: skip
    state = PartialState()  # the one `generate` used: under a distributed launch, every process wrote its shards
    if state.is_main_process:
        print(f"couplings written: {root} ({state.num_processes} process{'es' if state.num_processes > 1 else ''})")
    return 0


SPACE_SWITCHES = ("--push", "--private")  # `hf-reflow space --push --private`: bare switches mean true


def cmd_space(args: list[str]) -> int:
    from hf_reflow.configs import SpaceConfig
    from hf_reflow.parsing import parse_config

    args = [f"{arg}=true" if arg in SPACE_SWITCHES and (i + 1 == len(args) or args[i + 1].startswith("--")) else arg
            for i, arg in enumerate(args)]  # fmt: skip
    cfg = parse_config(SpaceConfig, args, command="space")
    from hf_reflow import space

    if cfg.bundle:  # a deployable folder showing the chain (as Hub ids: what a Space can download)
        from hf_reflow.hub import Hub

        chain = space.hub_chain(cfg.chain, cfg.policies, env=cfg.env, dataset_repo_id=cfg.dataset.repo_id)
        folder = space.build(cfg.bundle, space.with_env(chain, Hub()))
        print(f"Space written: {folder} showing {', '.join(chain.models)} ({chain.env})")
        return 0
    if cfg.push:
        from hf_reflow.hub import Hub, check_repo_id

        check_repo_id(cfg.repo_id)
        chain = space.hub_chain(cfg.chain, cfg.policies, env=cfg.env, dataset_repo_id=cfg.dataset.repo_id)
        hub = Hub()
        result = space.push(cfg.repo_id, chain, private=cfg.private, hub=hub)
        print(f"{'pushed' if result.created else 'unchanged, no new commit'}: {space.space_url(hub, cfg.repo_id)} "
              f"showing {', '.join(chain.models)}")  # fmt: skip
        return 0
    demo = space.load_app().build_demo(
        cfg.policies or cfg.chain, dataset_root=cfg.dataset.root, dataset_repo_id=cfg.dataset.repo_id, env=cfg.env,
        allow_any_policy=cfg.allow_any_policy,
    )
    demo.queue().launch(server_name="127.0.0.1", server_port=cfg.port)
    return 0


def format_table(rows: list[EvalRow]) -> str:
    """A plain-text table of evaluation rows."""
    columns = [c for c in CONSOLE_COLUMNS if any(c in r for r in rows)]

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
    warnings.showwarning = _show_warning


_SHOW_WARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings' signature)
    """A renamed setting is the user's to fix: one line, no source location; other warnings as Python shows them."""
    if issubclass(category, RenamedSettingWarning):
        print(f"hf-reflow: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


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
    from hf_reflow.parsing import HelpRequested

    command = COMMANDS.get(argv[0])
    try:
        if command is None:
            raise ConfigError(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}.")
        return command(argv[1:])
    except HelpRequested as e:
        print(e)
        return 0
    except ReflowError as e:
        print(f"hf-reflow: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's, not ours: a full disk, a permission, a read-only file system
        print(f"hf-reflow: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside training (training says where its last checkpoint is)
        print(f"hf-reflow: interrupted ({argv[0]}); rerun the same command to start it again.", file=sys.stderr)
        return 130


def _os_error(error: OSError) -> str:
    """One line for an operating-system error: what failed, where, and what to do."""
    detail = " ".join(str(error).split())[:300]  # a library's FileNotFoundError may carry the path only here
    where = f" ({error.filename})" if error.filename else f" ({detail})" if detail else ""
    if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        advice = "out of disk space or file too large; free disk space (or raise the file-size limit) and rerun"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "no permission to write there; choose another path or fix its permissions"
    else:
        advice = "check the path and rerun"
    return f"{error.strerror or type(error).__name__}{where}: {advice}."


if __name__ == "__main__":
    sys.exit(main())
