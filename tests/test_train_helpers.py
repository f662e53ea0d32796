"""Builders of tiny checkpoints and LLaVA-format data for the training tests (no tests here).

The one factory lives in `conftest.py`; these names stay for the test modules that import them.
"""

from pathlib import Path

from transformers import LlavaProcessor

from any2text import LlamaVisionAudioProcessor
from conftest import SAMPLING_RATE, tiny_models, write_llava_data

__all__ = [
    "SAMPLING_RATE",
    "build_tiny_checkpoint",
    "build_tiny_llava",
    "tiny_llava_processor",
    "tiny_processor",
    "write_llava_data",
]


def tiny_processor(audio_seq_length: int = 16, image_seq_length: int = 16) -> LlamaVisionAudioProcessor:
    return tiny_models().get_cheap_processor(audio_seq_length, image_seq_length)


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A LlamaVisionAudio checkpoint (CLIP 8x8 + cheap CLAP + 2-layer Llama) with its processor."""
    return tiny_models().save_checkpoint(path, seed)


def tiny_llava_processor() -> LlavaProcessor:
    return tiny_models().get_llava_processor()


def build_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A stock `LlavaForConditionalGeneration` checkpoint (what the builders emit for the image-only recipe)."""
    return tiny_models().save_llava_checkpoint(path, seed)
