"""any2text: turn a text LLM into an any-to-text (image, audio, text) model, Hugging Face native.

Importing the package registers `LlamaVisionAudio*` with transformers' Auto classes.
"""

from .models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioForSequenceClassification,
    LlamaVisionAudioModel,
    LlamaVisionAudioPreTrainedModel,
    LlamaVisionAudioProcessor,
)
from .registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "LlamaVisionAudioConfig",
    "LlamaVisionAudioForConditionalGeneration",
    "LlamaVisionAudioForSequenceClassification",
    "LlamaVisionAudioModel",
    "LlamaVisionAudioPreTrainedModel",
    "LlamaVisionAudioProcessor",
    "register_auto_classes",
]
