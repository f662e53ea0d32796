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
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
)

from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..builders.presets import (
    cheap_audio_config,
    cheap_feature_extractor,
    tiny_text_config,
    tiny_tokenizer_path,
    tiny_vision_config,
)

IMAGE_SIZE = 32
PATCH_SIZE = 4
VISION_HIDDEN_SIZE = 64
TEXT_HIDDEN_SIZE = 128
TEXT_LAYERS = 2
LAYOUT_AWARE_VISION = True
SAMPLING_RATE = 16000


def sincos_position_embeddings(grid: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embeddings for a `grid` x `grid` patch grid, `(grid * grid, dim)`: half of the
    dimensions encode the row, half the column, each as sines and cosines of `dim // 4` frequencies."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need a width divisible by 4, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for coordinate in (rows, cols):
        angles = coordinate.reshape(-1, 1).double() * omega
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def _layout_aware(clip: CLIPModel) -> None:
    """Give the random CLIP fixed 2-D sin-cos position embeddings as strong as its patch embeddings.

    A random CLIP's position embeddings (N(0, 0.02)) are ten times weaker than its patch embeddings, so after the
    pre-LayerNorm hardly anything in a token says where its patch is; a pretrained CLIP's learned ones encode the
    layout. Everything else stays random.
    """
    embeddings = clip.vision_model.embeddings
    config = clip.config.vision_config
    grid = config.image_size // config.patch_size
    # What an empty (black, after CLIP's normalisation) patch embeds to: the scale positions must stand out against.
    mean, std = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
    black = ((0 - mean) / std).view(1, 3, 1, 1).expand(1, 3, config.patch_size, config.patch_size)
    with torch.no_grad():
        scale = embeddings.patch_embedding(black).std()
        table = sincos_position_embeddings(grid, config.hidden_size)
        embeddings.position_embedding.weight[1:] = table * scale / table.std()
        embeddings.position_embedding.weight[0] = 0.0


def save_tiny_parts(folder: Path, seed: int = 0) -> dict[str, Path]:
    """A Llama with the committed tokenizer, a full CLIPModel and a full ClapModel, all random, under `folder`.

    Returns the folder of each part (`language_model`, `clip`, `clap`), ready for the real builder.
    """
    torch.manual_seed(seed)
    paths = {name: folder / name for name in ("language_model", "clip", "clap")}
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    text_config = tiny_text_config(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN_SIZE, num_hidden_layers=TEXT_LAYERS)
    AutoModelForCausalLM.from_config(text_config).save_pretrained(paths["language_model"])
    tokenizer.save_pretrained(paths["language_model"])

    # Patch 4: 48 pixel values into 64 dimensions loses nothing at the patch embedding; shapes need it.
    vision = tiny_vision_config(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=VISION_HIDDEN_SIZE)
    small_text = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    clip_config = CLIPConfig(
        text_config=CLIPTextConfig(**small_text, num_attention_heads=4).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=32,
    )
    clip = CLIPModel(clip_config)
    if LAYOUT_AWARE_VISION:
        _layout_aware(clip)
    clip.save_pretrained(paths["clip"])
    CLIPImageProcessor(
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
