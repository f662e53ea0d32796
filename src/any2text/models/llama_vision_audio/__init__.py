from .configuration_llama_vision_audio import LlamaVisionAudioConfig
from .modeling_llama_vision_audio import (
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioForSequenceClassification,
    LlamaVisionAudioModel,
    LlamaVisionAudioPreTrainedModel,
)
from .processing_llama_vision_audio import LlamaVisionAudioProcessor

__all__ = [
    "LlamaVisionAudioConfig",
    "LlamaVisionAudioForConditionalGeneration",
    "LlamaVisionAudioForSequenceClassification",
    "LlamaVisionAudioModel",
    "LlamaVisionAudioPreTrainedModel",
    "LlamaVisionAudioProcessor",
]
