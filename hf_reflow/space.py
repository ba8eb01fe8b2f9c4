"""The Gradio Space from the command line: serve `space/app.py`, bundle it for deployment, or push it.

`space/` lives in the repository, not in the package, so all three need a checkout (an editable install).
A bundle is `space/`'s files plus the `hf_reflow` modules the app imports (`app_modules`), a folder that
deploys as a Space as is (`requirements.txt` lists the third-party packages, `packages.txt` the Debian ones
that MuJoCo's EGL rendering needs on a CPU Space).

A pushed Space shows a chain of Hub models: the bundle plus `chain.json` (the stages as Hub ids, read by
`app.py`) and a README header whose `models` and `preload_from_hub` list them, so the Hub links them
and the Space downloads them at build time. A local stage counts once it was pushed (its `hub.json`).

    hf-reflow space --push=true --repo_id=you/reflow-compare --chain=outputs/metaworld
    hf-reflow space --push=true --repo_id=you/reflow-compare --chain=1-RF=you/mw-1rf,2-RF=you/mw-2rf
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from hf_reflow.atomic import write_text
from hf_reflow.envs.shapes import ENV_SHAPES
from hf_reflow.errors import CheckpointError, ConfigError
from hf_reflow.evaluation import compare
from hf_reflow.hub import SPACE_SDK, Hub, check_repo_id, web_url
from hf_reflow.publish.lineage import hub_id
from hf_reflow.refs import CheckpointRef

logger = logging.getLogger(__name__)

SPACE_DIR = Path(__file__).resolve().parent / "space_app"  # `space/` in a checkout links here; the wheel ships it
SPACE_FILES = ("app.py", "figures.py", "README.md", "requirements.txt", "packages.txt")
CHAIN_FILE = "chain.json"  # the chain a pushed Space shows, as Hub ids (read by app.py)


def load_app() -> ModuleType:
    """Import `space/app.py` of this checkout as a module."""
    app_file = SPACE_DIR / "app.py"
    if not app_file.is_file():
        raise ConfigError(
            f"no Space app at {str(app_file)!r}: this hf-reflow install lacks its package data; reinstall it "
            "(`pip install hf-reflow` or `pip install -e .` from a checkout)."
        )
    spec = importlib.util.spec_from_file_location("hf_reflow_space_app", app_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundle(destination: str | Path) -> Path:
    """Write the Space's files and the `hf_reflow` modules its app imports (`app_modules`) to `destination`
    (which must not exist or be empty); `build` adds the chain it shows."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise ConfigError(f"{str(destination)!r} is not empty; choose a new --bundle folder or delete it.")
    destination.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, destination / name)
    package = Path(__file__).resolve().parent
    for file in app_modules():
        target = destination / "hf_reflow" / file.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    return destination


_MODULE_NAME = re.compile(r"hf_reflow(?:\.\w+)*")


def app_modules() -> list[Path]:
    """The files of `hf_reflow` that `space/app.py` needs: its imports followed through every import statement
    (function-level ones too) and every module named in a string (the policy factory's lazy adapters, gym entry
    points), with the `__init__.py` of each package on the way. Training, publishing and test helpers stay out."""
    package = Path(__file__).resolve().parent
    todo, found = [SPACE_DIR / "app.py", SPACE_DIR / "figures.py"], set()
    while todo:
        for name in _hf_reflow_names(ast.parse(todo.pop().read_text(encoding="utf-8"))):
            for file in _module_files(package, name):
                if file not in found:
                    found.add(file)
                    todo.append(file)
    return sorted(found)


def _hf_reflow_names(tree: ast.AST) -> list[str]:
    """Dotted names under `hf_reflow` a module imports, or names as a string (`pkg.mod` / `pkg.mod:Class`)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.append(node.value.split(":")[0])
    return [n for n in names if _MODULE_NAME.fullmatch(n)]


def _module_files(package: Path, name: str) -> list[Path]:
    """`hf_reflow.a.b[.attr]` -> hf_reflow/__init__.py, a/__init__.py, a/b.py (or b/__init__.py): as far as
    the name is a module."""
    files, folder = [package / "__init__.py"], package
    for part in name.split(".")[1:]:
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
            files.append(folder / "__init__.py")
        elif (folder / f"{part}.py").is_file():
            files.append(folder / f"{part}.py")
            break
        else:  # an attribute of the module above
            break
    return files


# ---- the chain a pushed Space shows -------------------------------------------------------------
@dataclass
class HubChain:
    """Stages as (display name, Hub model id), plus the env, its tasks and an optional Hub dataset."""

    stages: list[tuple[str, str]]
    env: str | None = None  # None: read from the models' own config (`with_env`)
    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3"])
    dataset_repo_id: str | None = None

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(repo for _, repo in self.stages))

    def to_json(self) -> str:
        return json.dumps(
            {"env": self.env, "tasks": self.tasks, "dataset_repo_id": self.dataset_repo_id,
             "stages": [{"name": name, "repo_id": repo} for name, repo in self.stages]}, indent=2,
        )  # fmt: skip


def read_chain_file(file: str | Path) -> Any:
    """A pushed Space's `chain.json` as a `compare.Chain` of Hub ids (what `app.py` shows)."""
    try:
        data = json.loads(Path(file).read_text())
        stages = [compare.PolicySpec(s["name"], s["repo_id"]) for s in data["stages"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{str(file)!r} is not a valid Space chain file ({type(e).__name__}: {e})."
        ) from None
    return compare.Chain(
        stages=stages, dataset_repo_id=data.get("dataset_repo_id"), env=data.get("env") or "metaworld",
        tasks=list(data.get("tasks") or ["reach-v3"]),
    )  # fmt: skip


def hub_chain(chain: str | None = None, policies: list[str] | None = None, *, env: str | None = None,
              dataset_repo_id: str | None = None) -> HubChain:  # fmt: skip
    """The chain to push as Hub ids: `policies`, else `chain` (a pipeline output dir, or `name=repo`
    items separated by commas), else `outputs/metaworld`. A local stage must have been pushed (its
    `hub.json` names the repo); otherwise one `ConfigError` names every unpushed stage."""
    from_file = None  # a pipeline output dir, whose pipeline.json records the env
    if policies:
        specs = compare.parse_policy_lines("\n".join(policies))
    elif chain and (Path(chain) / compare.PIPELINE_FILE).is_file():
        from_file = chain
    elif chain:
        specs = compare.parse_policy_lines(chain)
    elif (Path(compare.DEFAULT_CHAIN_DIR) / compare.PIPELINE_FILE).is_file():
        from_file = compare.DEFAULT_CHAIN_DIR
    else:
        raise ConfigError(
            f"a Space shows a chain of Hub models and none was given: {compare.DEFAULT_CHAIN_DIR!r} holds no "
            f"{compare.PIPELINE_FILE}; pass --chain=<pipeline output dir whose stages were pushed> or "
            "--chain=<Hub ids, e.g. you/mw-1rf,you/mw-2rf>."
        )
    spec_chain = compare.read_chain(from_file) if from_file else compare.Chain(stages=[])
    specs = spec_chain.stages if from_file else specs
    if not specs:
        raise ConfigError("the chain to push lists no stage; pass --chain=you/mw-1rf,you/mw-2rf.")
    stages, unpushed = [], []
    for spec in specs:
        repo = _chain_repo(spec.source)
        if repo is None:
            unpushed.append(f"{spec.name} ({spec.source})" if spec.name != spec.source else spec.source)
        stages.append((spec.name if spec.name != spec.source else repo or spec.source, repo))
    if unpushed:
        raise ConfigError(
            f"a Space shows Hub models, and {', '.join(unpushed)} {'was' if len(unpushed) == 1 else 'were'} never "
            "pushed to the Hub: push them first (`hf-reflow push --checkpoint=DIR --repo_id=you/name-1rf`, or the "
            "pipeline with --push.hub_model_id=you/name), or pass --chain with Hub ids (--chain=you/name-1rf,you/name-2rf)."
        )
    root = spec_chain.dataset_root
    dataset = dataset_repo_id or (hub_id(spec_chain.dataset_repo_id) if not root else None)
    return HubChain(stages=stages, env=env or (spec_chain.env if from_file else None), tasks=spec_chain.tasks,
                    dataset_repo_id=dataset)  # fmt: skip


def with_env(chain: HubChain, hub: Any) -> HubChain:
    """`chain` with its env: the one given, else the one its models' config.json shapes say (all must agree)."""
    if chain.env is not None:
        return chain
    envs = {}
    for _, model in chain.stages:
        config = CheckpointRef.of(model).config(hub=hub)
        shapes = tuple(tuple((config.get(k) or {}).get(f, {}).get("shape") or ())
                       for k, f in (("input_features", "observation.state"), ("output_features", "action")))  # fmt: skip
        envs[model] = ENV_SHAPES.get(shapes)
        if envs[model] is None:
            raise ConfigError(
                f"cannot tell which env {model} was trained for (state {shapes[0]}, action {shapes[1]}); pass --env=toy "
                "or --env=metaworld."
            )
    if len(set(envs.values())) > 1:
        raise ConfigError(f"the chain's models were trained for different envs ({envs}); show one chain per env.")
    chain.env = next(iter(envs.values()))
    return chain


def _chain_repo(source: str) -> str | None:
    """The Hub repo a chain entry shows: a Hub id itself, or where a local checkpoint was pushed (None: never)."""
    try:
        return CheckpointRef.of(source).repo_id
    except CheckpointError:  # a folder without a checkpoint: nothing to show
        return None


# ---- build and push -----------------------------------------------------------------------------
def build(destination: str | Path, chain: HubChain) -> Path:
    """A bundle that shows `chain`: the header names its models (and preloads them), `chain.json` lists them."""
    from huggingface_hub import SpaceCard

    if chain.env is None:
        raise ConfigError("the Space's chain has no env; pass --env=toy or --env=metaworld (or use space.with_env).")
    folder = bundle(destination)
    card = SpaceCard.load(folder / "README.md")
    card.data.models = chain.models
    card.data.preload_from_hub = chain.models  # downloaded into the Space's Hub cache at build time
    if chain.dataset_repo_id:
        card.data.datasets = [chain.dataset_repo_id]
    rows = "\n".join(f"| {name} | [{repo}]({web_url()}/{repo}) |" for name, repo in chain.stages)
    card.text = (
        f"{card.text.rstrip()}\n\n## The chain this Space shows\n\n| stage | model |\n|---|---|\n{rows}\n"
    )
    write_text(folder / "README.md", str(card))
    write_text(folder / CHAIN_FILE, chain.to_json())
    return folder


def push(repo_id: str, chain: HubChain, *, private: bool = False, hub: Any = None) -> Any:
    """Push a Gradio Space showing `chain` to `repo_id`; returns the `PushResult`.

    Before anything is built: every model must be readable on the Hub and the token must write to the
    Space (created now, `exist_ok`). A private model is only a warning: the Space then needs a token secret.
    """
    check_repo_id(repo_id)
    hub = hub or Hub()
    for name, model in chain.stages:
        if getattr(hub.repo_info(model), "private", False):
            logger.warning(
                "%s (%s) is private: give the Space an HF_TOKEN secret that can read it", model, name
            )
    hub.check_push_access(repo_id, repo_type="space", private=private, create=True, space_sdk=SPACE_SDK)
    chain = with_env(chain, hub)
    with tempfile.TemporaryDirectory(prefix="hf-reflow-space-") as tmp:
        folder = build(Path(tmp) / "space", chain)
        names = ", ".join(name for name, _ in chain.stages)
        return hub.push_space(folder, repo_id, private=private, commit_message=f"hf-reflow Space: {names}")


def space_url(hub: Any, repo_id: str) -> str:
    """The Space's page on the Hub the client talks to."""
    return f"{hub.api.endpoint.rstrip('/')}/spaces/{repo_id}"
