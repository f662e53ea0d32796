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

from collections.abc import Sequence
from typing import Any

import torch
from transformers.utils import logging

from any2text.data.media import load_audio, load_image, media_refs

logger = logging.get_logger(__name__)


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
                chunk_images, chunk_audios = media_refs(messages)
                images.extend(chunk_images)
                audios.extend(chunk_audios)
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            # The chat template already wrote BOS; Llama-3's tokenizer would add a second one.
            if tokenizer.bos_token and texts[0].startswith(tokenizer.bos_token):
                kwargs["add_special_tokens"] = False
            if images:
                kwargs["images"] = [load_image(image) for image in images]
            if audios:
                rate = _processor_sampling_rate(processor)
                kwargs["audio"] = [load_audio(audio, rate) for audio in audios]
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


__all__ = ["generate_batch"]
