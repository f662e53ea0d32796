"""Register LlamaVisionAudio with transformers' Auto classes (idempotent, never overriding transformers' own names)."""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    AutoProcessor,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging

from .models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioForSequenceClassification,
    LlamaVisionAudioModel,
    LlamaVisionAudioProcessor,
)
from .models.llama_vision_audio.feature_extraction_llama_vision_audio import LlamaVisionAudioFeatureExtractor

logger = logging.get_logger(__name__)


def _auto_model_classes() -> list:
    classes = [
        (AutoModel, LlamaVisionAudioModel),
        (AutoModelForImageTextToText, LlamaVisionAudioForConditionalGeneration),
        (AutoModelForSequenceClassification, LlamaVisionAudioForSequenceClassification),
    ]
    # The any-to-text auto class (Gemma3n, Qwen-Omni live there), where the pinned transformers has it.
    try:
        from transformers import AutoModelForMultimodalLM
    except ImportError:
        return classes
    return classes + [(AutoModelForMultimodalLM, LlamaVisionAudioForConditionalGeneration)]


def register_auto_classes() -> None:
    """Make `Auto*.from_pretrained` resolve `model_type="llama_vision_audio"`. Safe to call any number of times."""
    model_type = LlamaVisionAudioConfig.model_type
    registered = CONFIG_MAPPING.get(model_type, None) if model_type in CONFIG_MAPPING else None
    if registered is not None and registered is not LlamaVisionAudioConfig:
        if registered.__module__.startswith("transformers."):
            logger.warning(
                f"transformers already defines `{model_type}`; any2text leaves its classes registered as they are."
            )
            return
    AutoConfig.register(model_type, LlamaVisionAudioConfig, exist_ok=True)
    for auto_class, model_class in _auto_model_classes():
        auto_class.register(LlamaVisionAudioConfig, model_class, exist_ok=True)
    AutoFeatureExtractor.register(LlamaVisionAudioConfig, LlamaVisionAudioFeatureExtractor, exist_ok=True)
    AutoProcessor.register(LlamaVisionAudioConfig, LlamaVisionAudioProcessor, exist_ok=True)
