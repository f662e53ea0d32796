from .configuration_llama_vision_audio import LlamaVisionAudioConfig
from .modeling_llama_vision_audio import (
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioModel,
    LlamaVisionAudioPreTrainedModel,
)
from .processing_llama_vision_audio import LlamaVisionAudioProcessor

__all__ = [
    "LlamaVisionAudioConfig",
    "LlamaVisionAudioForConditionalGeneration",
    "LlamaVisionAudioModel",
    "LlamaVisionAudioPreTrainedModel",
    "LlamaVisionAudioProcessor",
]
