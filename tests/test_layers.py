"""The house's shape: imports run one way (import-linter contracts in pyproject.toml), the Hub client
stands alone, and an unsupported policy type is a one-line error naming the supported ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli


def test_import_contracts_hold():
    """Layers (math -> policies -> artifacts -> training | evaluation | publish -> pipeline -> cli), the
    independence of the three middle packages and a transport-only Hub client; function-level imports count."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_importing_the_hub_client_loads_only_the_bottom_layer():
    code = "import sys, hf_reflow.hub; print(sorted(m for m in sys.modules if m.startswith('hf_reflow')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(["hf_reflow", "hf_reflow.atomic", "hf_reflow.errors", "hf_reflow.hub"])


def test_eval_of_an_unsupported_policy_type_is_one_line(tmp_path, toy_dataset):
    """A LeRobot checkpoint of a type without an adapter (ACT): refused from its config, before any weight."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig

    checkpoint = tmp_path / "act"
    ACTConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (4,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    ).save_pretrained(checkpoint)
    result = run_cli("eval", f"--policy.path={checkpoint}", f"--dataset.root={toy_dataset}", "--num_steps=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("hf-reflow: error:")]
    assert len(errors) == 1, lines
    assert "'act' has no hf-reflow adapter; supported types: flow_mlp, pi0, pi05, smolvla" in errors[0]
