"""The wheel is the tool: recipes, the Space app and the card templates inside, the plugins as dependencies,
and the README's `--config_path=recipes/...` commands working from it, outside any checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from hub_server import LoopbackHub

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


def test_the_wheel_installed_in_a_fresh_venv_runs_the_toy_chain_and_bundles_the_space(wheels, toy_dataset, tmp_path):
    """pip-installed wheels (hf-reflow + plugins, `--no-deps`) in a new venv that sees this venv's dependencies
    but not the checkout: a toy 1-RF -> 2-RF by recipe name and by path, from another directory, and the Space's
    files bundled by `hf-reflow space --bundle` once the chain is pushed (to the loopback Hub)."""
    import site
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    new_site = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                   capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    # the installed dependencies (torch, LeRobot, ...) as a plain path: their .pth files, among them the
    # editable hf-reflow of this checkout, are not run there, so hf_reflow can only come from the wheel
    (new_site / "deps.pth").write_text(site.getsitepackages()[0] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
               *map(str, wheels.glob("*.whl"))]  # fmt: skip
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}")

    def run(*args: str) -> str:
        proc = subprocess.run([str(env_dir / "bin" / "hf-reflow"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        return proc.stdout

    where = subprocess.run([str(python), "-c", "import hf_reflow; print(hf_reflow.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(new_site) in where and str(REPO) not in where
    data = str(toy_dataset)  # `hf-reflow dataset toy` is the checkout's; the session's copy saves a start-up
    run("train", "--config_path=toy/1rf", f"--dataset.root={data}", "--output_dir=1rf", "--steps=5", "--log_with=[]")
    run("train", "--config_path=recipes/toy/2rf.yaml", f"--dataset.root={data}", "--teacher.path=1rf", "--output_dir=2rf",
        "--steps=5", "--log_with=[]")
    assert (work / "2rf" / "pretrained_model" / "model.safetensors").is_file()
    # a deployable Space of the chain, once pushed (to the loopback Hub), with `hf-reflow space --bundle`
    token = "hf_loopbackWRITEtoken0123456789abcdef"
    with LoopbackHub(tmp_path / "hub", {token: {"name": "alice", "role": "write", "orgs": []}}) as hub:
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url, HF_TOKEN=token, HF_HOME=str(tmp_path / "hf_home"))
        run("push", "--checkpoint=2rf", "--repo_id=alice/toy-2rf")
        run("space", "--bundle=bundle", "--chain=2rf", "--env=toy")
    assert hub.state.unknown == []
    assert (work / "bundle" / "app.py").is_file() and (work / "bundle" / "hf_reflow" / "space.py").is_file()
    chain = json.loads((work / "bundle" / "chain.json").read_text())
    assert [s["repo_id"] for s in chain["stages"]] == ["alice/toy-2rf"] and chain["env"] == "toy"
