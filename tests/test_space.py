"""The Gradio Space: its API through gradio_client, bad inputs, a real headless chromium, the Space header.

The chain under test is real but tiny: a Meta-World dataset (2 reach episodes with 64-px camera frames),
a 1-RF flow_mlp trained on it and a 2-RF reflowed from that 1-RF, listed in a `pipeline.json` the way
`hf-reflow pipeline` writes it.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_cli, train_config

from hf_reflow.artifacts.checkpoints import CheckpointCache
from hf_reflow.errors import ConfigError
from hf_reflow.evaluation import compare

STEP_COUNTS = [1, 2, 4, 10]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> Path:
    from hf_reflow.envs import metaworld as mw
    from hf_reflow.training.trainer import ReflowTrainer

    root = tmp_path_factory.mktemp("space_chain")
    mw.write_dataset(root / "data", tasks=["reach-v3"], episodes_per_task=2, images=True, image_size=64)
    common = {"batch_size": 32, "dataset__root": str(root / "data"), "dataset__in_memory": "always"}
    ReflowTrainer(
        train_config(steps=150, output_dir=str(root / "1rf"), optim__warmup_steps=10, **common)
    ).train()
    ReflowTrainer(
        train_config(
            stage="reflow", steps=60, output_dir=str(root / "2rf"), teacher__path=str(root / "1rf"), **common
        )
    ).train()
    stages = [
        {"name": "1-RF", "stage": "flow_matching", "k": 1, "path": "1rf/pretrained_model"},
        {"name": "2-RF", "stage": "reflow", "k": 2, "path": "2rf/pretrained_model"},
    ]
    pipeline = {
        "dataset": {"root": "data", "repo_id": mw.DEFAULT_REPO_ID},
        "stages": stages,
        "env": "metaworld",
        "tasks": ["reach-v3"],
    }
    (root / compare.PIPELINE_FILE).write_text(json.dumps(pipeline))
    return root


@pytest.fixture(scope="module")
def server(chain_dir):
    from gradio_client import Client

    from hf_reflow import space

    demo = space.load_app().build_demo(chain_dir)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def _compare(
    client,
    *,
    stages=("1-RF", "2-RF"),
    extra="",
    source="dataset",
    episode=1,
    frame=3,
    seed=0,
    steps="1,2,4,10",
):
    return client.predict(
        list(stages), extra, source, episode, frame, "reach-v3", 5, steps, seed, api_name="/compare"
    )


def _plot_image(plot: dict) -> np.ndarray:
    """Decode the image a gr.Plot sends for a matplotlib figure."""
    from PIL import Image

    assert plot["type"] == "matplotlib"
    header, data = plot["plot"].split(",", 1)
    assert header.startswith("data:image/")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_compare_api_returns_figures_and_table(server, chain_dir):
    demo, client = server
    camera, chunks, paths, table, status = _compare(client)
    for plot in (chunks, paths):
        image = _plot_image(plot)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image.std() > 10  # something is drawn, not a blank canvas
    assert Path(camera).is_file()  # the dataset frame's camera image
    assert "episode 1, frame 3" in status
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert [(r["policy"], r["num_steps"]) for r in rows] == [
        (p, s) for p in ("1-RF", "2-RF") for s in STEP_COUNTS
    ]
    assert [r["k"] for r in rows] == [1] * 4 + [2] * 4
    for row in rows:
        assert row["nfe"] == row["num_steps"] and row["latency_ms"] > 0
        assert (row["error_vs_10step"] == 0) == (row["num_steps"] == 10)
        assert (row["straightness"] == 0) == (row["num_steps"] == 1)  # one step is a straight segment
    # The page's numbers are the library's: recompute them from the same observation and noise seed.
    dataset = compare.open_dataset(str(chain_dir / "data"), None)
    observation = compare.dataset_observation(dataset, 1, 3, horizon=8)
    cache = demo.space_app.cache
    expected = compare.table_rows(
        [
            compare.compare_policy(cache.get(s.source), s.name, observation, STEP_COUNTS, seed=0)
            for s in compare.read_chain(chain_dir).stages
        ]
    )
    for got, want in zip(rows, expected, strict=True):
        for key in ("straightness", "error_vs_10step", "error_vs_expert"):
            assert got[key] == pytest.approx(want[key], abs=1e-5)


def test_noise_seed_is_shared_and_policies_load_once(server):
    demo, client = server
    first = _compare(client, stages=["2-RF"], steps="1,2")[3]["data"]
    again = _compare(client, stages=["2-RF"], steps="1,2")[3]["data"]
    other = _compare(client, stages=["2-RF"], steps="1,2", seed=7)[3]["data"]
    column = 7  # error_vs_10step
    assert [r[column] for r in first] == [r[column] for r in again]
    assert [r[column] for r in first] != [r[column] for r in other]
    assert demo.space_app.cache.loads == 2  # 1-RF and 2-RF, each read once across all calls


def test_shared_noise_makes_chunks_comparable(chain_dir):
    cache = CheckpointCache()
    observation = compare.env_observation("metaworld", "reach-v3", 2, 8, image_size=64)
    specs = compare.read_chain(chain_dir).stages
    comparisons = [
        compare.compare_policy(cache.get(s.source), s.name, observation, [1], seed=3) for s in specs
    ]
    noises = [c.reference.path[0] for c in comparisons]
    np.testing.assert_array_equal(noises[0], noises[1])  # same noise for both policies
    projected = compare.project_paths(comparisons[0])
    np.testing.assert_allclose(projected[10][0], [0, 0], atol=1e-6)  # noise at the origin
    np.testing.assert_allclose(projected[10][-1], [1, 0], atol=1e-5)  # 10-step end at (1, 0)
    assert projected[1].shape == (2, 2) and projected[10].shape == (11, 2)


def test_env_reset_observation_and_rollout(server):
    _, client = server
    camera, _, _, table, status = _compare(client, source="env reset", steps="1")
    assert Path(camera).is_file() and "reach-v3 reset, seed 5" in status
    assert len(table["data"]) == 2
    plot, frames, summary = client.predict("2-RF", 1, "reach-v3", 0, 24, api_name="/rollout")
    assert _plot_image(plot).std() > 10
    assert len(frames) >= 1
    assert re.search(r"(success|collision|no success) in \d+ env steps", summary)


@pytest.fixture(scope="module")
def unsupported_checkpoint(tmp_path_factory) -> Path:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig

    config = ACTConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (41,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
    )
    directory = tmp_path_factory.mktemp("act")
    config.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ({"steps": "1,101"}, "each step count must be in 1..100; received 101"),
        ({"steps": "0"}, "each step count must be in 1..100; received 0"),
        ({"steps": "1,two"}, "step counts must be integers"),
        ({"stages": [], "extra": "nobody/no-such-policy"}, "nobody/no-such-policy"),
        ({"stages": [], "extra": "/no/such/folder"}, "/no/such/folder"),
        ({"stages": [], "extra": "UNSUPPORTED"}, "'act' has no hf-reflow adapter"),
        ({"stages": []}, "no policy picked"),
        ({"episode": 9}, "episode must be in 0..1; received 9"),
    ],
)
def test_bad_input_shows_a_message(server, unsupported_checkpoint, case, message):
    from gradio_client.exceptions import AppError

    demo, client = server
    if case.get("extra") == "UNSUPPORTED":
        case = {**case, "extra": str(unsupported_checkpoint)}
    demo.space_app.allow_any_policy = bool(case.get("extra"))  # the operator's flag: visitors may name policies
    try:
        with pytest.raises(AppError, match=re.escape(message)):
            _compare(client, **case)
    finally:
        demo.space_app.allow_any_policy = False
    assert len(_compare(client, stages=["2-RF"], steps="1")[3]["data"]) == 1  # the app still works


@pytest.mark.parametrize("name", ["/etc", "/no/such/folder", "someone/evil-policy"])
def test_a_visitor_cannot_make_the_server_load_anything_else(server, name):
    """By default only the chain's stages load; with the operator's flag, errors say nothing of server files."""
    from gradio_client.exceptions import AppError

    demo, client = server
    loads = demo.space_app.cache.loads
    with pytest.raises(AppError, match=re.escape("this Space shows only its chain's stages (1-RF, 2-RF)")):
        _compare(client, stages=[], extra=name)
    with pytest.raises(AppError, match="shows only its chain's stages|is not in the list of choices"):
        client.predict(name, 1, "reach-v3", 0, 24, api_name="/rollout")  # the dropdown takes no custom value
    assert demo.space_app.cache.loads == loads  # nothing was read
    demo.space_app.allow_any_policy = True
    try:
        with pytest.raises(AppError) as info:
            _compare(client, stages=[], extra=name)
    finally:
        demo.space_app.allow_any_policy = False
    assert str(info.value).endswith(f"could not load {name!r}: it is no checkpoint this server can read.")


def test_bad_rollout_input_shows_a_message(server):
    from gradio_client.exceptions import AppError

    _, client = server
    with pytest.raises(AppError, match=re.escape("in 1..100; received 500")):
        client.predict("2-RF", 500, "reach-v3", 0, 24, api_name="/rollout")
    with pytest.raises(AppError, match=re.escape("seed must be in 0..4294967295; received -1")):
        client.predict("2-RF", 1, "reach-v3", -1, 24, api_name="/rollout")
    with pytest.raises(AppError, match=re.escape("noise seed must be in 0..4294967295")):
        _compare(client, stages=["2-RF"], steps="1", seed=2**70)


def _chrome():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "Debian's chromium + chromium-driver are not installed (scripts/setup.sh installs them as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,2600"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_browser_renders_plots_and_table(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    demo, _ = server
    browser = _chrome()
    try:
        browser.get(demo.local_url)
        wait = WebDriverWait(browser, 60)
        wait.until(expected_conditions.element_to_be_clickable((By.ID, "compare-button"))).click()
        wait.until(lambda b: "2-RF" in b.find_element(By.ID, "metrics-table").text)
        for plot in ("chunk-plot", "path-plot"):
            image = wait.until(lambda b, p=plot: b.find_element(By.CSS_SELECTOR, f"#{p} img"))
            wait.until(lambda b, i=image: b.execute_script("return arguments[0].naturalWidth", i) > 400)
        assert "Compared 2 policies" in browser.find_element(By.ID, "status").text
        table = browser.find_element(By.ID, "metrics-table").text
        assert "straightness" in table and "latency_ms" in table and "1-RF" in table
        time.sleep(0.5)  # let the images paint before the screenshot
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "space_compare.png"))
    finally:
        browser.quit()


def test_space_readme_header_parses_and_names_the_app():
    import gradio

    text = (REPO / "space" / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["sdk"] == "gradio"
    pinned = re.search(r'"gradio==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert header["sdk_version"] == pinned == gradio.__version__
    assert header["python_version"] == "3.12"
    assert (REPO / "space" / header["app_file"]).is_file()
    assert "models" not in header  # no placeholder chain: a pushed Space's header names the chain it shows
    assert "reflow" in header["tags"] and len(header["short_description"]) <= 60


def test_no_chain_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    """No chain given and none in outputs/metaworld: one line on how to get one, no made-up Hub chain."""
    import sys

    from hf_reflow import cli, space
    from hf_reflow.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # no outputs/metaworld/pipeline.json here
    monkeypatch.setattr(sys, "path", list(sys.path))  # app.py puts its folder first
    with pytest.raises(ConfigError, match="make demo"):
        compare.default_chain()
    with pytest.raises(SystemExit) as stopped:  # `python space/app.py`
        space.load_app().main([])
    assert cli.main(["space"]) == 2  # `hf-reflow space`
    for line in (str(stopped.value.code), capsys.readouterr().err.strip()):
        assert len(line.splitlines()) == 1 and "'outputs/metaworld' has no pipeline.json" in line, line
        hints = ("make demo", "hf-reflow pipeline", "--chain=", "--policies=")
        assert all(hint in line for hint in hints), line
        assert "hf-reflow/flow_mlp" not in line


def test_bundle_is_a_deployable_space_holding_only_what_the_app_imports(tmp_path):
    from hf_reflow import space

    chain = space.HubChain(stages=[("1-RF", "alice/mw-1rf")], env="metaworld", tasks=["reach-v3"])
    folder = space.build(tmp_path / "bundle", chain)
    for name in ("app.py", "figures.py", "README.md", "requirements.txt", "packages.txt", "chain.json",
                 "hf_reflow/evaluation/compare.py", "hf_reflow/sampling.py",
                 "hf_reflow/policies/smolvla.py"):  # fmt: skip  (the factory names its adapters as strings)
        assert (folder / name).is_file(), name
    shipped = {p.relative_to(folder / "hf_reflow").as_posix() for p in (folder / "hf_reflow").rglob("*.py")}
    assert not [p for p in shipped if p.startswith(("training/", "testing/")) or p in ("cli.py", "pipeline.py")]
    assert shipped == {p.relative_to(REPO / "hf_reflow").as_posix() for p in space.app_modules()}
    assert "libegl1" in (folder / "packages.txt").read_text().split()  # MuJoCo's EGL, headless
    with pytest.raises(ConfigError, match="is not empty"):
        space.build(folder, chain)
    with pytest.raises(ConfigError, match="has no env; pass --env=toy or --env=metaworld"):
        space.build(tmp_path / "other", space.HubChain(stages=[("1-RF", "alice/mw-1rf")]))


def test_a_bundle_without_a_chain_says_how_to_give_one(tmp_path):
    result = run_cli("space", f"--bundle={tmp_path / 'bundle'}", f"--chain={tmp_path / 'nothing'}", timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--chain" in lines[0], result.stderr
    assert not (tmp_path / "bundle").exists()


def test_a_pushed_space_shows_its_hub_chain(tmp_path, monkeypatch):
    """The folder `hf-reflow space --push` uploads: its app.py, run with no argument, shows chain.json's Hub ids."""
    import importlib.util
    import sys

    from hf_reflow import space

    chain = space.HubChain(stages=[("1-RF", "alice/mw-1rf"), ("2-RF", "alice/mw-2rf")], env="metaworld", tasks=["reach-v3"])
    folder = space.build(tmp_path / "space", chain)
    header = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert header["models"] == header["preload_from_hub"] == ["alice/mw-1rf", "alice/mw-2rf"]
    monkeypatch.setattr(sys, "path", list(sys.path))  # app.py puts its folder first
    spec = importlib.util.spec_from_file_location("pushed_space_app", folder / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    demo = app.build_demo()  # as the Space runs it: `python app.py`
    assert demo.space_app.sources == {"1-RF": "alice/mw-1rf", "2-RF": "alice/mw-2rf"}
    assert not demo.space_app.has_dataset and demo.space_app.chain.tasks == ["reach-v3"]


def test_toy_env_observation_and_rollout(tmp_path):
    from hf_reflow.envs import toy
    from hf_reflow.training.trainer import ReflowTrainer

    data = toy.write_dataset(tmp_path / "toy", episodes=10, seed=0)
    run = tmp_path / "1rf"
    ReflowTrainer(
        train_config(steps=40, output_dir=str(run), dataset__root=str(data), optim__warmup_steps=5)
    ).train()
    loaded = CheckpointCache().get(str(run))
    observation = compare.env_observation("toy", "", 4, horizon=8)
    episode = toy.expert_episode(4)
    np.testing.assert_array_equal(observation.raw["observation.state"][0].numpy(), episode.states[0])
    np.testing.assert_array_equal(observation.expert_action, episode.actions[:8])
    rows = compare.table_rows([compare.compare_policy(loaded, "toy", observation, [1, 10], seed=0)])
    assert [r["num_steps"] for r in rows] == [1, 10]
    result = compare.rollout(loaded, "toy", "", num_steps=2, seed=4)
    assert result.hand_xy.shape == (result.steps, 2) and result.frames == []
    np.testing.assert_allclose(result.hand_xy[0], episode.states[0][:2])  # starts where the expert started
    assert loaded.adapter.num_steps == 10  # the rollout's step count was restored
