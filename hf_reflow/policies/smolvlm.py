"""A from-scratch SmolVLM backbone for SmolVLA, written locally: nothing is downloaded.

LeRobot builds SmolVLA from `vlm_model_name` with `AutoConfig`, `AutoProcessor` and (in the preprocessor)
`AutoTokenizer`; all three accept a local folder. `write_smolvlm_folder` writes one: a SmolVLM architecture
config of the size you choose (random weights: SmolVLA's `load_vlm_weights=false` initialises them), a SmolVLM
processor and a byte-level BPE tokenizer trained in well under a second on the instructions it will read.

Real users start from `lerobot/smolvla_base` (pretrained); this backbone is for benchmarks that must run offline
on a CPU, where the whole policy (VLM included: `train_expert_only=false`) is trained on the demonstrations.

    write_smolvlm_folder("outputs/vlm", SmolVLMSize(), texts=["reach the goal around the obstacle"])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hf_reflow.atomic import remove, replace_path, temporary_sibling

SIZE_FILE = "smolvlm_size.json"  # the architecture the folder was written with
SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


@dataclass
class SmolVLMSize:
    """Architecture of a random-weight SmolVLM (defaults: ~1.3 M parameters, 64 px images).

    `image_size` must be a multiple of `patch_size`, and the patch grid a multiple of `scale_factor`
    (SmolVLM's pixel shuffle); the image tokens per frame are (image_size / patch_size / scale_factor)^2.
    """

    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    scale_factor: int = 2
    vocab_size: int = 512

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SmolVLM size: {name} must be a positive integer, got {value!r}.")
        grid = self.image_size // self.patch_size
        if self.image_size % self.patch_size or grid % self.scale_factor:
            raise ValueError(
                f"SmolVLM size: image_size {self.image_size} must be a multiple of patch_size {self.patch_size}, "
                f"and the {grid}-patch grid a multiple of scale_factor {self.scale_factor}; e.g. 64 / 8 / 2."
            )
        for hidden, heads in (("text_hidden", "text_heads"), ("vision_hidden", "vision_heads")):
            if getattr(self, hidden) % getattr(self, heads):
                raise ValueError(f"SmolVLM size: {hidden} must be a multiple of {heads}, got {asdict(self)}.")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"SmolVLM size: text_heads must be a multiple of text_kv_heads, got {asdict(self)}.")

    @property
    def image_seq_len(self) -> int:
        """Image tokens per frame after SmolVLM's pixel shuffle."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def train_tokenizer(vocab_size: int, texts: list[str]) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` with SmolVLM's special tokens, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", *SPECIAL_TOKENS.values()]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 512),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([*texts, "robot arm camera image state action gripper"] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        extra_special_tokens=SPECIAL_TOKENS,
    )


def write_smolvlm_folder(directory: str | Path, size: SmolVLMSize, texts: list[str]) -> Path:
    """Write a loadable SmolVLM folder (config, processor, tokenizer trained on `texts`) with `size`'s
    architecture, via a temporary name: an interrupted write leaves nothing half-made."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    directory = Path(directory)
    tokenizer = train_tokenizer(size.vocab_size, texts)
    text = {
        "model_type": "llama", "hidden_size": size.text_hidden, "intermediate_size": 4 * size.text_hidden,
        "num_hidden_layers": size.text_layers, "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads, "head_dim": size.text_hidden // size.text_heads,
        "vocab_size": size.vocab_size, "pad_token_id": tokenizer.pad_token_id, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
    }  # fmt: skip
    vision = {
        "hidden_size": size.vision_hidden, "intermediate_size": 4 * size.vision_hidden,
        "num_hidden_layers": size.vision_layers, "num_attention_heads": size.vision_heads,
        "image_size": size.image_size, "patch_size": size.patch_size,
    }  # fmt: skip
    config = SmolVLMConfig(
        text_config=text,
        vision_config=vision,
        scale_factor=size.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": size.image_size},
        max_image_size={"longest_edge": size.image_size},
        do_image_splitting=False,
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=size.image_seq_len,
    )
    tmp = temporary_sibling(directory)
    remove(tmp)
    config.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / SIZE_FILE).write_text(json.dumps(asdict(size)))
    replace_path(tmp, directory)
    return directory


def read_size(directory: str | Path) -> SmolVLMSize:
    """The architecture `write_smolvlm_folder` wrote to `directory`."""
    return SmolVLMSize(**json.loads((Path(directory) / SIZE_FILE).read_text()))


def smolvla_fields(directory: str | Path, size: SmolVLMSize | None = None) -> dict[str, Any]:
    """The SmolVLA config fields that read the backbone in `directory` (of `size`; None: the size written
    there): its path, random init of its weights, every text layer, and images padded to its input size."""
    size = size or read_size(directory)
    return {
        "vlm_model_name": str(Path(directory).resolve()),
        "load_vlm_weights": False,
        "num_vlm_layers": size.text_layers,
        "resize_imgs_with_padding": [size.image_size, size.image_size],
    }
