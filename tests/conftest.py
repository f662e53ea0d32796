"""Shared offline fixtures: a tiny tokenizer, processor and LlamaVisionAudio model built from configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoTokenizer, ClapFeatureExtractor, CLIPImageProcessor  # noqa: E402

import any2text  # noqa: E402
from any2text import (  # noqa: E402
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioProcessor,
)
from any2text.builders.presets import (  # noqa: E402
    tiny_audio_config,
    tiny_text_config,
    tiny_tokenizer_path,
    tiny_vision_config,
)

assert any2text  # importing registers the Auto classes


class LlamaVisionAudioModelTester:
    """Tiny configs: a 2-layer Llama with hidden size 32, an 8x8 image with 2x2 patches, a 4-stage tiny CLAP."""

    def __init__(self):
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
        tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<image>", "<audio>"]})
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        self.audio_token_id = tokenizer.convert_tokens_to_ids("<audio>")

    def get_config(self, vision: bool = True, audio: bool = True, **kwargs) -> LlamaVisionAudioConfig:
        text_config = tiny_text_config(vocab_size=len(self.tokenizer))
        text_config.pad_token_id = self.tokenizer.pad_token_id
        return LlamaVisionAudioConfig(
            text_config=text_config,
            vision_config=tiny_vision_config() if vision else None,
            audio_config=tiny_audio_config() if audio else None,
            image_token_id=self.image_token_id,
            audio_token_id=self.audio_token_id,
            **kwargs,
        )

    def get_model(self, seed: int = 0, **kwargs) -> LlamaVisionAudioForConditionalGeneration:
        torch.manual_seed(seed)
        model = LlamaVisionAudioForConditionalGeneration._from_config(self.get_config(**kwargs))
        return model.eval()

    def get_processor(self, config: LlamaVisionAudioConfig | None = None, **fe_kwargs) -> LlamaVisionAudioProcessor:
        config = config or self.get_config()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        return LlamaVisionAudioProcessor(
            image_processor=image_processor,
            feature_extractor=ClapFeatureExtractor(**fe_kwargs),
            tokenizer=self.tokenizer,
            image_seq_length=config.image_seq_length,
            audio_seq_length=config.audio_seq_length,
        )


@pytest.fixture(scope="session")
def tester() -> LlamaVisionAudioModelTester:
    return LlamaVisionAudioModelTester()


@pytest.fixture(scope="session")
def processor(tester) -> LlamaVisionAudioProcessor:
    return tester.get_processor()


def make_image(color: str = "red", size: int = 20) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def make_tone(freq: float = 440.0, seconds: float = 1.0, sampling_rate: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
