"""The Gradio Space from the command line: serve `space/app.py`, or bundle it for deployment.

`space/` lives in the repository, not in the package, so both need a checkout (an editable install).
A bundle is `space/`'s files plus a copy of the `hf_reflow` package, a folder that deploys as a Space
as is (its `requirements.txt` lists the third-party packages).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from hf_reflow.errors import ConfigError

SPACE_DIR = Path(__file__).resolve().parents[1] / "space"
SPACE_FILES = ("app.py", "figures.py", "README.md", "requirements.txt")


def load_app() -> ModuleType:
    """Import `space/app.py` of this checkout as a module."""
    app_file = SPACE_DIR / "app.py"
    if not app_file.is_file():
        raise ConfigError(
            f"no Space app at {str(app_file)!r}: `hf-reflow space` needs a checkout of hf-reflow "
            "installed with `pip install -e .`; or run `python space/app.py` from the checkout."
        )
    spec = importlib.util.spec_from_file_location("hf_reflow_space_app", app_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundle(destination: str | Path) -> Path:
    """Write a deployable Space to `destination` (which must not exist or be empty)."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise ConfigError(f"{str(destination)!r} is not empty; choose a new --bundle folder or delete it.")
    destination.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, destination / name)
    package = Path(__file__).resolve().parent
    shutil.copytree(package, destination / "hf_reflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination
