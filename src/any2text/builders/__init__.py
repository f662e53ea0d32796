"""Compose checkpoints from pretrained parts, convert the seed project's checkpoints, and tiny presets for tests.

- `build_llama_vision`: a stock `LlavaForConditionalGeneration` + `LlavaProcessor` (runs on plain transformers).
- `build_llama_vision_audio`: a `LlamaVisionAudioForConditionalGeneration` + `LlamaVisionAudioProcessor`.
- `convert_seed_checkpoint` / `load_seed_checkpoint`: the align-anything checkpoint formats.
"""

from .checkpoint import BuildRecord, enable_remote_code, push_checkpoint, save_checkpoint
from .llama_vision import build_llama_vision
from .llama_vision_audio import build_llama_vision_audio
from .seed import SEED_CHAT_TEMPLATE, SEED_KEY_MAPPING, convert_seed_checkpoint, load_seed_checkpoint

__all__ = [
    "SEED_CHAT_TEMPLATE",
    "SEED_KEY_MAPPING",
    "BuildRecord",
    "build_llama_vision",
    "build_llama_vision_audio",
    "convert_seed_checkpoint",
    "enable_remote_code",
    "load_seed_checkpoint",
    "push_checkpoint",
    "save_checkpoint",
]
