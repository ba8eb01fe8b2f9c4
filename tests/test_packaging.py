"""The wheel is the tool: recipes, the Space app and the card templates inside, the plugins as dependencies,
and the README's `--config_path=recipes/...` commands working from it, outside any checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "hf_reflow"
PLUGINS = ("lerobot_policy_flow_mlp", "lerobot_env_metaworld_detour")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO),
         *(str(REPO / "plugins" / name) for name in PLUGINS)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _names(wheel: Path) -> set[str]:
    return set(zipfile.ZipFile(wheel).namelist())


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_the_wheel_ships_recipes_space_app_and_templates(wheels):
    (wheel,) = wheels.glob("hf_reflow-*.whl")
    names = _names(wheel)
    shipped = [p for folder in ("recipes", "space_app", "publish/templates") for p in (PACKAGE / folder).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]  # fmt: skip
    assert len(shipped) > 25
    missing = sorted(str(p.relative_to(REPO)) for p in shipped if p.relative_to(REPO).as_posix() not in names)
    assert missing == []
    # the checkout's recipes/ and space/ are links to these folders, not copies
    assert (REPO / "recipes").resolve() == PACKAGE / "recipes" and (REPO / "space").resolve() == PACKAGE / "space_app"


def test_plugins_are_dependencies_of_hf_reflow_not_the_other_way(wheels):
    (wheel,) = wheels.glob("hf_reflow-*.whl")
    requires = [line for line in _metadata(wheel).splitlines() if line.startswith("Requires-Dist:")]
    for name in PLUGINS:
        assert f"Requires-Dist: {name}==0.1.0" in requires
        (plugin,) = wheels.glob(f"{name}-*.whl")
        assert "Requires-Dist" not in _metadata(plugin)  # no cycle back to hf-reflow


def test_recipes_and_the_space_app_work_from_the_unpacked_wheel_anywhere(wheels, tmp_path):
    (wheel,) = wheels.glob("hf_reflow-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import hf_reflow, pathlib; from hf_reflow.parsing import parse_pipeline_config; "
        "from hf_reflow import space; "
        "cfg = parse_pipeline_config(['--config_path=recipes/metaworld/default.yaml']); "
        "print(pathlib.Path(hf_reflow.__file__).parent.parent, cfg.stages, space.load_app().__name__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root, *rest = proc.stdout.split()
    assert Path(root) == site  # imported from the wheel, not the checkout
    assert "['flow_matching', 'reflow', 'distill']" in proc.stdout and rest[-1] == "hf_reflow_space_app"
