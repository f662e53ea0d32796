"""Build a stock `LlavaForConditionalGeneration` (image + text) from a causal LM and a CLIP / SigLIP checkpoint.

The result runs on plain transformers with nothing of any2text installed; it is what the seed recipe produces.
"""

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.utils import logging

from ..models.llama_vision_audio.configuration_llama_vision_audio import VISION_ENCODERS_WITH_CLS
from ..models.llama_vision_audio.processing_llama_vision_audio import DEFAULT_CHAT_TEMPLATE
from .checkpoint import BuildRecord, write_outputs
from .components import IMAGE_TOKEN, assemble, load_parts

logger = logging.get_logger(__name__)


def build_llama_vision(
    language_model_path: str | Path,
    vision_tower_path: str | Path,
    save_path: str | Path | None = None,
    dtype: str | torch.dtype = "auto",
    *,
    vision_feature_layer: int = -2,
    projector_hidden_act: str = "gelu",
    seed: int = 0,
    max_shard_size: str | int = "5GB",
    push_to_hub: str | None = None,
    private: bool | None = None,
    token: str | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Compose a stock Llava checkpoint: vision tower + fresh 2-layer MLP projector + the language model.

    Args:
        language_model_path: Hub id or folder of a causal LM (Llama, Qwen2, Mistral, ...) with its tokenizer.
        vision_tower_path: Hub id or folder of a CLIP or SigLIP checkpoint (full two-tower or vision-only); only the
            vision tower is kept, with the image processor saved beside it.
        save_path: folder to write the checkpoint (sharded safetensors, processor, README.md) to; `None` skips it.
        dtype: `"auto"` keeps the language model's checkpoint dtype, or `"float32"`, `"bfloat16"`, `"float16"`.
            The vision tower and projector are cast to the same dtype.
        vision_feature_layer: hidden state of the vision tower fed to the projector.
        projector_hidden_act: activation of the projector.
        seed: seeds the projector initialisation (weights ~ N(0, `text_config.initializer_range`), biases 0).
        max_shard_size: largest safetensors shard.
        push_to_hub: repo id to upload the saved folder to (one commit), or `None`.

    `<image>` (and `<pad>` when the tokenizer has none) are added as special tokens; their input and output
    embedding rows are the mean of the rows of the original vocabulary. CLIP keeps Llava's `"default"` strategy
    (the CLS embedding is dropped); encoders without CLS (SigLIP) use `"full"`.
    """
    parts = load_parts(language_model_path, {"vision": vision_tower_path}, dtype)
    vision_config = parts.towers["vision"].config
    has_cls = vision_config.model_type in VISION_ENCODERS_WITH_CLS
    strategy = "default" if has_cls else "full"
    config = LlavaConfig(
        text_config=parts.language_model.config,
        vision_config=vision_config,
        image_token_index=parts.token_ids[IMAGE_TOKEN],
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=projector_hidden_act,
        tie_word_embeddings=parts.language_model.config.tie_word_embeddings,
    )
    model = assemble(LlavaForConditionalGeneration, config, parts, {"vision": ("multi_modal_projector", seed)})
    processor = LlavaProcessor(
        image_processor=parts.media_processors["vision"],
        tokenizer=parts.tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        # LlavaProcessor counts the CLS embedding in, then removes it again for "default".
        num_additional_image_tokens=int(has_cls),
    )
    record = BuildRecord(
        builder="build_llama_vision",
        language_model=str(language_model_path),
        vision_tower=str(vision_tower_path),
        added_tokens=parts.token_ids,
        num_old_tokens=parts.num_old_tokens,
        seed=seed,
    )
    # The saved (and uploaded) folder gets the nested CLIP / SigLIP keys every Llava checkpoint on the Hub has.
    nest = nest_vision_tower_keys if vision_config.model_type in NESTED_VISION_TOWERS else None
    write_outputs(
        model, processor, record, save_path, push_to_hub, remote_code=False, max_shard_size=max_shard_size,
        private=private, token=token, after_save=nest,
    )  # fmt: skip
    return model, processor


# Vision towers whose Hub checkpoints keep their layers under `vision_model.`.
NESTED_VISION_TOWERS = ("clip_vision_model", "siglip_vision_model")
# A tower key saved without the `vision_model.` level, in the legacy (`vision_tower.`) or the new
# (`model.vision_tower.`) Llava layout.
_FLAT_TOWER_KEY = re.compile(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)")


def nest_vision_tower_keys(folder: str | Path) -> None:
    """Rewrite a saved Llava checkpoint's CLIP / SigLIP tower keys as `vision_tower.vision_model.*`, in place.

    transformers 5.24 (for CLIP, since 5.19) keeps `CLIPVisionModel`'s and `SiglipVisionModel`'s layers directly
    under the tower and saves a freshly built Llava's tower keys without the `vision_model.` level
    (`vision_tower.encoder...`), a layout only such versions read. The nested layout
    (`vision_tower.vision_model.encoder...`) is the one every Llava checkpoint on the Hub uses: vLLM's native Llava
    and older transformers (vLLM pins one) require it, and transformers 5.24 loads it into the same modules with
    identical outputs. Only the shards holding tower keys are rewritten; their safetensors metadata and the shard
    index are kept.
    """
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    if index is not None:
        shards = sorted({shard for key, shard in index["weight_map"].items() if _FLAT_TOWER_KEY.match(key)})
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        with safe_open(folder / shard, framework="pt") as f:
            metadata = f.metadata()
            tensors = {_FLAT_TOWER_KEY.sub(r"\1vision_model.", key): f.get_tensor(key) for key in f.keys()}
        save_file(tensors, folder / shard, metadata=metadata)
    if index is not None:
        index["weight_map"] = {_FLAT_TOWER_KEY.sub(r"\1vision_model.", k): v for k, v in index["weight_map"].items()}
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
