"""Builders of tiny checkpoints and LLaVA-format data for the training tests (no tests here)."""

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor
from any2text.builders.presets import (
    cheap_audio_config,
    cheap_feature_extractor,
    tiny_text_config,
    tiny_tokenizer_path,
    tiny_vision_config,
)
from any2text.models.llama_vision_audio.processing_llama_vision_audio import DEFAULT_CHAT_TEMPLATE

SAMPLING_RATE = 16000


def tiny_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<image>", "<audio>"]})
    return tokenizer


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})


def tiny_processor(audio_seq_length: int = 16, image_seq_length: int = 16) -> LlamaVisionAudioProcessor:
    return LlamaVisionAudioProcessor(
        image_processor=image_processor(),
        feature_extractor=cheap_feature_extractor(),
        tokenizer=tiny_tokenizer(),
        image_seq_length=image_seq_length,
        audio_seq_length=audio_seq_length,
    )


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A LlamaVisionAudio checkpoint (CLIP 8x8 + cheap CLAP + 2-layer Llama) with its processor."""
    tokenizer = tiny_tokenizer()
    text_config = tiny_text_config(vocab_size=len(tokenizer))
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlamaVisionAudioConfig(
        text_config=text_config,
        vision_config=tiny_vision_config(),
        audio_config=cheap_audio_config(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        audio_token_id=tokenizer.convert_tokens_to_ids("<audio>"),
    )
    torch.manual_seed(seed)
    model = LlamaVisionAudioForConditionalGeneration._from_config(config)
    model.save_pretrained(path)
    processor = LlamaVisionAudioProcessor(
        image_processor=image_processor(),
        feature_extractor=cheap_feature_extractor(),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        audio_seq_length=config.audio_seq_length,
    )
    processor.save_pretrained(path)
    return path


def tiny_llava_processor() -> LlavaProcessor:
    # CLIP has a CLS embedding: 16 patches + 1, of which the "default" strategy drops the CLS one.
    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tiny_tokenizer(),
        patch_size=2,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )


def build_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A stock `LlavaForConditionalGeneration` checkpoint (what the builders emit for the image-only recipe)."""
    processor = tiny_llava_processor()
    tokenizer = processor.tokenizer
    text_config = tiny_text_config(vocab_size=len(tokenizer))
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        text_config=text_config,
        vision_config=tiny_vision_config(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration._from_config(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


ANSWERS = {"image": ["red", "green", "blue"], "audio": ["low", "high"], "text": ["yes", "no"]}
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
PITCHES = {"low": 300.0, "high": 5000.0}


def write_llava_data(folder: Path, kinds: list[str], seed: int = 0, seconds: float = 0.5) -> Path:
    """A LLaVA-format `data.json` with one row per entry of `kinds` (`image`, `audio`, `both`, `text`), in that order.

    Media are small PNG / WAV files under `folder`, referenced by relative path; answers follow from the media.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, kind in enumerate(kinds):
        row: dict = {"id": str(i)}
        questions, answers = [], []
        if kind in ("image", "both"):
            color = str(rng.choice(ANSWERS["image"]))
            Image.new("RGB", (16, 16), COLORS[color]).save(folder / f"img{i}.png")
            row["image"] = f"img{i}.png"
            questions.append("<image>\nWhat color?")
            answers.append(color)
        if kind in ("audio", "both"):
            pitch = str(rng.choice(ANSWERS["audio"]))
            t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
            sf.write(
                folder / f"snd{i}.wav",
                (0.5 * np.sin(2 * np.pi * PITCHES[pitch] * t)).astype(np.float32),
                SAMPLING_RATE,
            )
            row["audio"] = f"snd{i}.wav"
            questions.append("<audio>\nWhat pitch?")
            answers.append(pitch)
        if kind == "text":
            questions.append("Is it?")
            answers.append(str(rng.choice(ANSWERS["text"])))
        turns = []
        for question, answer in zip(questions, answers):
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        row["conversations"] = turns
        rows.append(row)
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path
