"""Batched greedy generation for chat-style multimodal prompts.

    >>> from any2text.evaluation.generation import generate_batch
    >>> messages = [{"role": "user", "content": [{"type": "image", "image": "cat.jpg"},
    ...                                          {"type": "text", "text": "What animal is this?"}]}]
    >>> generate_batch(model, processor, [messages], max_new_tokens=8)
    ['Cat']

Prompts are rendered with the processor's chat template and LEFT-padded, so every row's last prompt token sits at
the same position and the new tokens of a batch line up; generation is greedy with the KV cache.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import soundfile
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def load_image(value: Any) -> PIL.Image.Image:
    """A PIL image (RGB) from a PIL image, a path, or a datasets-style `{"bytes": ..., "path": ...}` dict."""
    if isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, (str, Path)):
        image = PIL.Image.open(value)
    elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        image = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    else:
        raise TypeError(
            f"Cannot load an image from {type(value).__name__}; expected a PIL image, a path or a "
            "`{'bytes': ..., 'path': ...}` dict."
        )
    return image.convert("RGB")


def load_audio(value: Any, sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A mono float32 waveform and its rate, resampled to `sampling_rate` when given.

    Accepts `{"array", "sampling_rate"}`, a path, or raw `{"bytes", "path"}` (datasets' `Audio(decode=False)`);
    raw audio is decoded with soundfile because torchcodec decoding is not available everywhere.
    """
    if isinstance(value, dict) and "array" in value:
        array, rate = np.asarray(value["array"]), int(value["sampling_rate"])
    elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        array, rate = soundfile.read(source, dtype="float32", always_2d=False)
    elif isinstance(value, (str, Path)):
        array, rate = soundfile.read(value, dtype="float32", always_2d=False)
    else:
        raise TypeError(
            f"Cannot load audio from {type(value).__name__}; expected `{{'array', 'sampling_rate'}}`, a path or "
            "`{'bytes': ..., 'path': ...}`."
        )
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        # soundfile gives (frames, channels); average to mono.
        array = array.mean(axis=1 if array.shape[1] < array.shape[0] else 0)
    if sampling_rate is not None and rate != sampling_rate:
        import soxr

        array = soxr.resample(array, rate, sampling_rate).astype(np.float32)
        rate = sampling_rate
    return array, rate


def _collect_media(messages: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    images, audios = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") == "image":
                images.append(part["image"])
            elif part.get("type") == "audio":
                audios.append(part["audio"])
    return images, audios


def _processor_sampling_rate(processor: Any) -> int:
    feature_extractor = getattr(processor, "feature_extractor", None)
    rate = getattr(feature_extractor, "sampling_rate", None)
    if rate is None:
        raise ValueError(
            f"The prompts contain audio but `{type(processor).__name__}` has no `feature_extractor.sampling_rate`; "
            "evaluate audio benchmarks with an audio-capable any2text checkpoint."
        )
    return int(rate)


@torch.inference_mode()
def generate_batch(
    model: Any,
    processor: Any,
    batch_of_messages: Sequence[list[dict[str, Any]]],
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> list[str]:
    """Greedy-generate one answer per conversation in `batch_of_messages`, `batch_size` at a time.

    Args:
        model: a generative model (`AutoModelForImageTextToText`-style).
        processor: its processor; called as `processor(text=..., images=..., audio=..., sampling_rate=...)`, with
            `images` / `audio` only passed when the prompts have such media (stock processors lack `audio`).
        batch_of_messages: conversations in the project-wide messages format.
        max_new_tokens: generation budget per answer.
        batch_size: conversations per forward pass.

    Returns:
        The decoded new tokens of each conversation, whitespace-stripped, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    original_side = tokenizer.padding_side
    # Left padding: generation appends after the last position, so prompts must end at the same column.
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(batch_of_messages), batch_size):
            chunk = batch_of_messages[start : start + batch_size]
            texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
            images, audios = [], []
            for messages in chunk:
                chunk_images, chunk_audios = _collect_media(messages)
                images.extend(chunk_images)
                audios.extend(chunk_audios)
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = [load_image(image) for image in images]
            if audios:
                rate = _processor_sampling_rate(processor)
                kwargs["audio"] = [load_audio(audio, rate)[0] for audio in audios]
                kwargs["sampling_rate"] = rate
            inputs = processor(**kwargs)
            inputs = {
                key: (
                    value.to(model.device, dtype=model.dtype)
                    if torch.is_tensor(value) and value.is_floating_point()
                    else value.to(model.device)
                    if torch.is_tensor(value)
                    else value
                )
                for key, value in inputs.items()
            }
            generated = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=pad_token_id,
            )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            outputs.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = original_side
    return outputs


__all__ = ["generate_batch", "load_audio", "load_image"]
