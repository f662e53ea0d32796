"""Tiny random stand-ins for the Hub ids the real recipe starts from, saved the way the Hub holds them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    ClapConfig,
    ClapModel,
    ClapTextConfig,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
)

from ..builders.image_processors import clip_image_processor_class
from ..builders.presets import (
    cheap_audio_config,
    cheap_feature_extractor,
    tiny_text_config,
    tiny_tokenizer_path,
    tiny_vision_config,
)

IMAGE_SIZE = 32
SAMPLING_RATE = 16000


def save_tiny_parts(
    folder: Path, seed: int = 0, lm_hidden_size: int = 128, lm_layers: int = 3, lm_heads: int = 8
) -> dict[str, Path]:
    """A Llama with the committed tokenizer, a full CLIPModel and a full ClapModel, all random, under `folder`.

    The Llama has `lm_layers` layers of width `lm_hidden_size` (also the projectors' width) with `lm_heads` query
    heads and half as many key/value heads.

    Returns the folder of each part (`language_model`, `clip`, `clap`), ready for the real builder.
    """
    torch.manual_seed(seed)
    paths = {name: folder / name for name in ("language_model", "clip", "clap")}
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    text_config = tiny_text_config(vocab_size=len(tokenizer), hidden_size=lm_hidden_size, num_hidden_layers=lm_layers)
    text_config.num_attention_heads = lm_heads
    text_config.num_key_value_heads = max(lm_heads // 2, 1)
    text_config.head_dim = lm_hidden_size // lm_heads
    AutoModelForCausalLM.from_config(text_config).save_pretrained(paths["language_model"])
    tokenizer.save_pretrained(paths["language_model"])

    # Patch 4: 48 pixel values into 64 dimensions loses nothing at the patch embedding; shapes need it.
    vision = tiny_vision_config(image_size=IMAGE_SIZE, patch_size=4, hidden_size=64)
    small_text = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    clip_config = CLIPConfig(
        text_config=CLIPTextConfig(**small_text, num_attention_heads=4).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=32,
    )
    CLIPModel(clip_config).save_pretrained(paths["clip"])
    clip_image_processor_class()(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(paths["clip"])

    clap_config = ClapConfig(
        text_config=ClapTextConfig(**small_text, num_attention_heads=4).to_dict(),
        audio_config=cheap_audio_config().to_dict(),
        projection_dim=32,
    )
    ClapModel(clap_config).save_pretrained(paths["clap"])
    cheap_feature_extractor(SAMPLING_RATE).save_pretrained(paths["clap"])
    return paths


__all__ = ["IMAGE_SIZE", "SAMPLING_RATE", "save_tiny_parts"]
