"""Tiny pi0 / pi0.5 models, a stand-in PaliGemma tokenizer and checkpoints, for offline tests.

Sizes. LeRobot 0.6.1 builds pi0 / pi0.5 only in two hard-coded sizes (`get_gemma_config`: gemma_300m,
gemma_2b; no config field changes them) with a PaliGemma whose vision tower, projector and vocabulary
are fixed in `PaliGemmaWithExpertModel.__init__` (SigLIP so400m, projection 2048, 257152 tokens): over
1 B parameters, far too slow for a CPU test. `tiny_paligemma()` patches, for the duration of a `with`
block, the three names those modules look up (`get_gemma_config`, the PaliGemma and the expert
classes), shrinking widths, depths and the vocabulary (1024); every other line of LeRobot's model
(prefix, suffix, attention, `forward`, `sample_actions`, `denoise_step`) runs unchanged. A saved tiny
checkpoint still says `paligemma_variant: gemma_2b`, so another process builds it at the real size
(and LeRobot's `from_pretrained`, failing to load the small weights, prints a warning and returns the
random model) unless the same patch is active there: `write_size_hook(dir)` writes a
`sitecustomize.py` that applies it when LeRobot's pi0 / pi0.5 modules are imported (put `dir` on
`PYTHONPATH`). It loads this file by path, so such a process imports nothing from `hf_reflow`.

Tokenizer. The processors hard-code the gated `google/paligemma-3b-pt-224` tokenizer
(`AutoTokenizer.from_pretrained`). `write_paligemma_tokenizer(hf_home)` trains a small Gemma-style BPE
(byte fallback, `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, bos added, like PaliGemma's) and lays it out
as huggingface_hub's cache of that repo id under `hf_home/hub`, so LeRobot's unchanged code finds it
offline in a process with `HF_HOME=hf_home` and `HF_HUB_OFFLINE=1` (`subprocess_env`), or in this
process inside `hub_cache(hf_home)`.

    home = write_paligemma_tokenizer(tmp / "hf_home"); hook = write_size_hook(tmp / "hook")
    teacher = write_checkpoint(tmp / "pi0", "pi0", dataset_root=data, hf_home=home)
    subprocess.run([...], env=subprocess_env(home, hook))
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

WIDTH = 64  # LeRobot hard-codes 8 heads x 1 KV head in its joint attention (`1 * 8 * head_dim`)
IMAGE_SIZE = 28  # SigLIP patch 14 -> 4 image tokens
VOCAB_SIZE = 1024  # LeRobot fixes 257152 (PaliGemma's); token ids here stay below 1024
IMAGE_KEY = "observation.images.top"
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # hard-coded in LeRobot's pi0 / pi0.5 processors
_MODULES = ("lerobot.policies.pi0.modeling_pi0", "lerobot.policies.pi05.modeling_pi05")
_TEXTS = (
    "push the red block to the left", "open the drawer", "press the button", "reach the green goal",
    "Task: reach the green goal, State: 12 255 0 37;\nAction: ", "robot arm camera image state action gripper",
)  # fmt: skip


def _tiny_gemma_config(module: Any) -> Any:
    def get_gemma_config(variant: str) -> Any:
        if variant not in ("gemma_300m", "gemma_2b"):
            raise ValueError(f"Unknown variant: {variant}")
        return module.GemmaConfig(
            width=WIDTH, depth=2, mlp_dim=2 * WIDTH, num_heads=8, num_kv_heads=1, head_dim=8
        )

    get_gemma_config.tiny = True
    return get_gemma_config


def _shrunk_paligemma(real_class: type) -> Any:
    def build(config: Any) -> Any:
        vision = config.vision_config
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 32, 64, 1
        vision.num_attention_heads = 2
        vision.projection_dim = config.text_config.hidden_size  # LeRobot fixes 2048 (gemma_2b's width)
        config.text_config.vocab_size = VOCAB_SIZE  # LeRobot fixes PaliGemma's 257152
        return real_class(config=config)

    return build


def _shrunk_expert(real_class: type) -> Any:
    def build(config: Any) -> Any:
        config.vocab_size = VOCAB_SIZE  # the expert's unused lm_head is (vocab, width) too
        return real_class(config=config)

    return build


_NAMES = ("get_gemma_config", "PaliGemmaForConditionalGenerationWithPiGemma", "PiGemmaForCausalLM")


def _shrink(module: Any) -> tuple[Any, dict[str, Any]]:
    """Point `module`'s size lookups at the tiny ones; returns what is needed to undo it."""
    saved = (module, {name: getattr(module, name) for name in _NAMES})
    if not getattr(module.get_gemma_config, "tiny", False):
        module.get_gemma_config = _tiny_gemma_config(module)
        module.PaliGemmaForConditionalGenerationWithPiGemma = _shrunk_paligemma(
            module.PaliGemmaForConditionalGenerationWithPiGemma
        )
        module.PiGemmaForCausalLM = _shrunk_expert(module.PiGemmaForCausalLM)
    return saved


@contextlib.contextmanager
def tiny_paligemma() -> Iterator[None]:
    """Within the block, pi0 / pi0.5 models are built with ~0.4 M parameters."""
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    saved = [_shrink(module) for module in (modeling_pi0, modeling_pi05)]
    try:
        yield
    finally:
        for module, names in saved:
            for name, value in names.items():
                setattr(module, name, value)


class _ShrinkOnImport(importlib.abc.MetaPathFinder):
    """Finds LeRobot's pi0 / pi0.5 modeling modules as usual and shrinks them right after they execute."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                execute(module)
                _shrink(module)

            spec.loader.exec_module = exec_module
        return spec


def install_size_hook() -> None:
    """From now on in this process, pi0 / pi0.5 are built at the tiny sizes (no undo; for test processes)."""
    for name in _MODULES:
        if name in sys.modules:
            _shrink(sys.modules[name])
    if not any(isinstance(finder, _ShrinkOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ShrinkOnImport())


_HOOK = """\
# Written by hf_reflow.testing.tiny_pi0.write_size_hook for test processes: LeRobot's pi0 / pi0.5 are built
# at tiny sizes (LeRobot 0.6.1 has no config field for them). Loads that file by path: no hf_reflow import.
import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("tiny_pi0_sizes", {path!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules["tiny_pi0_sizes"] = _module
_spec.loader.exec_module(_module)
_module.install_size_hook()
"""


def write_size_hook(directory: str | Path) -> Path:
    """Write `directory/sitecustomize.py`: a Python started with `directory` on PYTHONPATH builds tiny pi0s."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HOOK.format(path=str(Path(__file__).resolve())))
    return directory


# ------------------------------------------------------------------------------------------ tokenizer


def train_paligemma_tokenizer(vocab_size: int = 512) -> Any:
    """A small `GemmaTokenizer` (BPE with byte fallback, Gemma's special tokens, bos added) for the test prompts."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{i:02X}>" for i in range(256))]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")  # Gemma's normaliser and pre-tokeniser
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:;,.\n▁"),
    )
    tokenizer.train_from_iterator([*_TEXTS, " ".join(map(str, range(256)))] * 4, trainer=trainer)
    merges = [tuple(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    return GemmaTokenizer(vocab=tokenizer.get_vocab(), merges=merges, add_bos_token=True, add_eos_token=False)


def write_paligemma_tokenizer(hf_home: str | Path, repo_id: str = PALIGEMMA_TOKENIZER) -> Path:
    """Lay a small tokenizer out as huggingface_hub's cache of `repo_id` in `hf_home/hub`; returns `hf_home`.

    The snapshot holds `tokenizer.json`, `tokenizer_config.json` (GemmaTokenizer) and PaliGemma's
    `config.json` (transformers' AutoTokenizer reads the model type from it); `refs/main` names the
    snapshot, so an offline `from_pretrained(repo_id)` resolves it like a real download.
    """
    from transformers import PaliGemmaConfig

    hf_home = Path(hf_home)
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    tokenizer = train_paligemma_tokenizer()
    staging = repo / "snapshots" / "staging"
    tokenizer.save_pretrained(staging)
    PaliGemmaConfig().save_pretrained(staging)
    commit = hashlib.sha1((staging / "tokenizer.json").read_bytes()).hexdigest()
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        import shutil

        shutil.rmtree(staging)
    else:
        staging.rename(snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return hf_home


@contextlib.contextmanager
def hub_cache(hf_home: str | Path) -> Iterator[None]:
    """Within the block, huggingface_hub (and transformers) in this process read the cache in `hf_home/hub`."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(Path(hf_home) / "hub")
    try:
        yield
    finally:
        constants.HF_HUB_CACHE = saved


def subprocess_env(hf_home: str | Path, hook_dir: str | Path | None = None) -> dict[str, str]:
    """This process's environment, offline, with `hf_home` as the Hub cache and `hook_dir` first on PYTHONPATH."""
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(Path(hf_home) / "hub"),
        "HF_HUB_OFFLINE": "1",
    }
    if hook_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH")) if p)
    return env


def make_policy(
    policy_type: str,
    *,
    chunk_size: int = 8,
    action_dim: int = 4,
    seed: int = 0,
    train_expert_only: bool = False,
) -> Any:
    """A tiny float32 pi0 / pi0.5 policy with one 28-px camera, a 4-d state and `action_dim` actions."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class
    from lerobot.policies.pi0.configuration_pi0 import PI0Config
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    config_class = {"pi0": PI0Config, "pi05": PI05Config}[policy_type]
    config = config_class(
        input_features={
            IMAGE_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(4,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))},
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        image_resolution=(IMAGE_SIZE, IMAGE_SIZE),
        dtype="float32",
        device="cpu",
        train_expert_only=train_expert_only,
    )
    with torch.random.fork_rng(), tiny_paligemma():
        torch.manual_seed(seed)
        return get_policy_class(policy_type)(config)


def make_batch(
    policy: Any, batch_size: int = 3, *, tokens: int = 6, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A preprocessed-looking batch: images in [0, 1], normalised state and action chunk, token ids."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    g = torch.Generator().manual_seed(seed)
    chunk, action_dim = policy.config.chunk_size, policy.config.output_features["action"].shape[0]
    mask = torch.ones(batch_size, tokens, dtype=torch.bool)
    mask[0, -2:] = False  # a padded prompt
    is_pad = torch.zeros(batch_size, chunk, dtype=torch.bool)
    is_pad[-1, chunk // 2 :] = True  # a chunk running past the episode end
    return {
        IMAGE_KEY: torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "observation.state": torch.randn(batch_size, 4, generator=g),
        "action": torch.randn(batch_size, chunk, action_dim, generator=g),
        "action_is_pad": is_pad,
        OBS_LANGUAGE_TOKENS: torch.randint(0, 1000, (batch_size, tokens), generator=g),
        OBS_LANGUAGE_ATTENTION_MASK: mask,
    }


# ------------------------------------------------------------------------------------------ checkpoints


def write_checkpoint(
    directory: str | Path,
    policy_type: str,
    *,
    dataset_root: str | Path,
    hf_home: str | Path,
    repo_id: str = "local/tiny_images",
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Save a seeded tiny pi0 / pi0.5 for the dataset's features, with LeRobot's processors and its stats.

    Defaults: chunk 8, 28-px images, float32, `tokenizer_max_length` 16 (pi0) / 32 (pi0.5, whose prompt
    also holds the discretised state). The preprocessor is LeRobot's own (it loads the tokenizer from
    `hf_home`'s Hub cache, see `write_paligemma_tokenizer`).
    """
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from hf_reflow.data import policy_features

    meta = LeRobotDatasetMetadata(repo_id, root=dataset_root)
    inputs, outputs = policy_features(meta)
    fields = {
        "input_features": inputs, "output_features": outputs, "chunk_size": 8, "n_action_steps": 8,
        "image_resolution": (IMAGE_SIZE, IMAGE_SIZE), "dtype": "float32", "device": "cpu",
        "tokenizer_max_length": 16 if policy_type == "pi0" else 32,
    }  # fmt: skip
    config = PreTrainedConfig.get_choice_class(policy_type)(**{**fields, **overrides})
    with torch.random.fork_rng(), tiny_paligemma():
        torch.manual_seed(seed)
        policy = get_policy_class(policy_type)(config)
    with hub_cache(hf_home):
        pre, post = make_pre_post_processors(config, dataset_stats=meta.stats)
    directory = Path(directory)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory
