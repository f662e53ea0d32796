"""Inference: load a checkpoint with its processor and generate answers to chat-style multimodal prompts.

The one inference path of `any2text eval`, `any2text chat` and the demo::

    >>> from any2text.inference import generate_batch, load_inference_model
    >>> model, processor = load_inference_model("ckpt/", dtype="bfloat16")
    >>> messages = [{"role": "user", "content": [{"type": "image", "image": "cat.jpg"},
    ...                                          {"type": "text", "text": "What animal is this?"}]}]
    >>> generate_batch(model, processor, [messages], max_new_tokens=8)
    ['Cat']

Prompts are rendered with the processor's chat template and LEFT-padded (`padding_side="left"`), so every row's last
prompt token sits at the same position and the new tokens of a batch line up. Generation is greedy with the KV
cache unless sampling arguments are passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature
from transformers.utils import logging

from .data.messages import map_media, media_refs
from .modalities import MODALITIES, Modality, media_options

logger = logging.get_logger(__name__)

Conversation = list[dict[str, Any]]
# The `--dtype` choices of the command lines; `from_pretrained` takes the names as they are.
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]


def load_inference_model(model: str, dtype: DTypeName = "auto", device: str | None = None) -> tuple[Any, Any]:
    """`AutoModelForImageTextToText` + `AutoProcessor` from `model` (folder or Hub id), in eval mode on `device`.

    Args:
        model: a checkpoint any2text built or trained, a stock Llava, or anything `AutoModelForImageTextToText`
            loads (`import any2text`, done by importing this module, registers the any2text classes).
        dtype: `"auto"` (the checkpoint's) or a torch dtype name such as `"bfloat16"`, as `from_pretrained` takes it.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`...; default: CUDA when available.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
    return loaded.to(device).eval(), AutoProcessor.from_pretrained(model)


def _check_takes(modality: Modality, processor: Any) -> None:
    if modality.processor_token(processor) is None:
        raise ValueError(
            f"The prompts contain {modality.name} but `{type(processor).__name__}` takes no {modality.name} (it has "
            f"no `{modality.token_attr}`); use an any2text checkpoint with a {modality.name} encoder."
        )


def decode_media(messages: Conversation, processor: Any) -> Conversation:
    """`messages` with every medium loaded by its decoder in the modality table, with the processor's settings (PIL
    image; mono waveform at the feature extractor's rate; video frames sampled by `num_frames` / `fps`).

    Decoding one conversation at a time lets a caller pin a corrupt medium on the conversation that holds it.
    """
    options = media_options(processor)

    def decode(modality: Modality, ref: Any) -> Any:
        _check_takes(modality, processor)
        return modality.decoder(ref, **options)

    return map_media(messages, decode)


def prepare_inputs(processor: Any, conversations: Sequence[Conversation]) -> BatchFeature:
    """The processor's batch for `conversations`, left-padded, with a generation prompt after each one.

    Each medium's processor keyword (`images`, `audio` with its `sampling_rate`, `videos`) is passed only when the
    prompts have such media (stock processors lack `audio`).
    """
    conversations = [decode_media(messages, processor) for messages in conversations]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in conversations]
    tokenizer = getattr(processor, "tokenizer", processor)
    # Chat templates that write BOS themselves (Llama-3's) would get a second one from the tokenizer.
    writes_bos = bool(tokenizer.bos_token) and all(text.startswith(tokenizer.bos_token) for text in texts)
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "padding_side": "left", "return_tensors": "pt"}
    kwargs["add_special_tokens"] = not writes_bos
    options = media_options(processor)
    for name, modality in MODALITIES.items():
        items = [item for messages in conversations for item in media_refs(messages)[name]]
        if items:
            kwargs[modality.processor_kwarg] = items
            kwargs.update({option: options[option] for option in modality.processor_options})
            kwargs.update(modality.processor_kwargs)
    return processor(**kwargs)


@torch.inference_mode()
def generate_batch(
    model: Any,
    processor: Any,
    conversations: Sequence[Conversation],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    **generate_kwargs: Any,
) -> list[str]:
    """Generate one answer per conversation, `batch_size` conversations per `generate` call.

    Args:
        model: a generative model (`AutoModelForImageTextToText`-style).
        processor: its processor; called as `processor(text=..., images=..., audio=..., sampling_rate=...,
            videos=...)` (the modality table's keywords).
        conversations: conversations in the project-wide messages format; media may be references or loaded.
        max_new_tokens: generation budget per answer.
        batch_size: conversations per forward pass.
        generate_kwargs: passed to `model.generate`; the default is greedy decoding (`do_sample=True,
            temperature=...` samples).

    Returns:
        The decoded new tokens of each conversation, whitespace-stripped, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation = {"do_sample": False, "num_beams": 1, "use_cache": True, "pad_token_id": pad_token_id}
    generation.update(generate_kwargs)
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        inputs = prepare_inputs(processor, conversations[start : start + batch_size])
        # Floating tensors (the media's) take the model's dtype; ids and masks only move.
        inputs = inputs.to(model.device, dtype=model.dtype)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, **generation)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


__all__ = ["DTypeName", "decode_media", "generate_batch", "load_inference_model", "prepare_inputs"]
