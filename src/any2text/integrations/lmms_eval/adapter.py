"""What the lmms-eval model does, without lmms-eval: requests' messages to conversations, generation, log-likelihoods.

Everything here runs on `any2text.inference` (the processor call, media decoding, left padding) and imports nothing
of lmms-eval, so `make test` checks it without that package; `model.py` only unpacks lmms-eval's requests into it.

    >>> from any2text.integrations.lmms_eval.adapter import to_conversation
    >>> to_conversation([{"role": "user", "content": [{"type": "audio", "url": {"array": clip, "sampling_rate": 16000}},
    ...                                               {"type": "text", "text": "What is heard?"}]}])
    [{'role': 'user', 'content': [{'type': 'audio', 'audio': {'array': ..., 'sampling_rate': 16000}},
                                  {'type': 'text', 'text': 'What is heard?'}]}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

from ...inference import Conversation, generate_batch, prepare_inputs

logger = logging.get_logger(__name__)

# lmms-eval's tasks give `max_new_tokens` almost always; this is the budget of those that do not.
DEFAULT_MAX_NEW_TOKENS = 1024
# lmms-eval generation keys that `model.generate` takes as they are (greedy unless `temperature` > 0 / `do_sample`).
_GENERATE_KEYS = ("num_beams", "top_p", "top_k", "repetition_penalty")
_HANDLED_KEYS = {"until", "max_new_tokens", "temperature", "do_sample", *_GENERATE_KEYS}
# Video tasks' `doc_to_visual` returns file paths (MVBench, Video-MME); these are read as videos.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def _as_dict(message: Any) -> dict[str, Any]:
    # lmms-eval's `ChatMessage` is a pydantic model; tasks' `doc_to_messages` return plain dicts.
    return message.model_dump() if hasattr(message, "model_dump") else dict(message)


def _is_waveform(url: Any) -> bool:
    return isinstance(url, Mapping) and "array" in url and "sampling_rate" in url


def _is_video_file(url: Any) -> bool:
    return isinstance(url, str | os.PathLike) and os.fspath(url).lower().endswith(VIDEO_SUFFIXES)


def _to_part(part: Mapping[str, Any], turn: int) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part["text"]}
    url = part.get("url")
    # lmms-eval's default `doc_to_messages` labels every dict visual "video"; a waveform dict is audio.
    if kind == "audio" or (kind == "video" and _is_waveform(url)):
        return {"type": "audio", "audio": url}
    if kind in ("image", "video"):
        return {"type": kind, kind: url}
    raise ValueError(
        f"Message {turn} has a `{kind}` part; any2text checkpoints take `text`, `image`, `audio` and `video` parts "
        "(an audio clip as a path or `{'array', 'sampling_rate'}`, a video as a file or frames). Drop the part in "
        "the task's `doc_to_messages`."
    )


def to_conversation(messages: Sequence[Any]) -> Conversation:
    """lmms-eval chat messages (`{"role", "content": [{"type": "text"|"image"|"audio"|"video", "text"|"url": ...}]}`,
    dicts or `ChatMessage` objects) as an any2text conversation; media are passed through for `any2text.inference` to
    load.

    An audio `url` may be a path or `{"array", "sampling_rate"}`: the rate goes with the waveform, which is resampled
    to the encoder's rate when it is loaded.
    """
    conversation = []
    for turn, message in enumerate(messages):
        message = _as_dict(message)
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        conversation.append({"role": message["role"], "content": [_to_part(part, turn) for part in content]})
    return conversation


def visuals_conversation(context: str, visuals: Sequence[Any] | None) -> Conversation:
    """The one user turn of a "simple" (non-chat) lmms-eval request: its visuals first, then the context text.

    The same order as lmms-eval's own messages for such tasks; an image is a PIL image or path, audio a
    `{"array", "sampling_rate"}` dict, a video a file path (`VIDEO_SUFFIXES`).
    """
    kinds = [("audio" if _is_waveform(v) else "video" if _is_video_file(v) else "image", v) for v in visuals or []]
    content = [{"type": kind, "url": v} for kind, v in kinds]
    return to_conversation([{"role": "user", "content": [*content, {"type": "text", "text": context}]}])


def generation_settings(
    gen_kwargs: Mapping[str, Any], default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> tuple[int, dict[str, Any], list[str]]:
    """`(max_new_tokens, generate kwargs, stop strings)` for lmms-eval's `generation_kwargs`.

    `temperature` 0 (or absent) with no `do_sample` is greedy, as in lmms-eval's own models; other keys lmms-eval
    tasks set for specific models (`image_aspect_ratio`...) are ignored with a warning.
    """
    ignored = sorted(set(gen_kwargs) - _HANDLED_KEYS)
    if ignored:
        logger.warning_once(f"lmms-eval generation_kwargs {ignored} have no meaning for any2text; ignored.")
    max_new_tokens = int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens)
    temperature = gen_kwargs.get("temperature") or 0.0
    do_sample = bool(gen_kwargs.get("do_sample", temperature > 0))
    generate: dict[str, Any] = {"do_sample": do_sample}
    for key in _GENERATE_KEYS:
        if gen_kwargs.get(key) is not None and (do_sample or key in ("num_beams", "repetition_penalty")):
            generate[key] = gen_kwargs[key]
    if do_sample and temperature > 0:
        generate["temperature"] = float(temperature)
    until = gen_kwargs.get("until") or []
    return max_new_tokens, generate, [until] if isinstance(until, str) else list(until)


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the stop strings `until` (lmms-eval's `until`), whitespace-stripped."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


def generate_answers(
    model: Any,
    processor: Any,
    conversations: Sequence[Conversation],
    gen_kwargs: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """One answer per conversation, in input order; conversations with equal `gen_kwargs` share left-padded batches."""
    groups: dict[str, list[int]] = {}
    for index, kwargs in enumerate(gen_kwargs):
        groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(index)
    answers: list[str] = [""] * len(conversations)
    for indices in groups.values():
        max_new_tokens, generate, until = generation_settings(gen_kwargs[indices[0]], default_max_new_tokens)
        texts = generate_batch(
            model,
            processor,
            [conversations[i] for i in indices],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            **generate,
        )
        for index, text in zip(indices, texts):
            answers[index] = cut_at_stop(text, until)
    return answers


@torch.inference_mode()
def continuation_logprobs(
    model: Any,
    processor: Any,
    conversations: Sequence[Conversation],
    continuations: Sequence[str],
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """`(log-probability, is_greedy)` of each continuation after its conversation's generation prompt.

    The continuation's tokens (tokenized alone, no special tokens) follow the prompt's; `is_greedy` says whether
    greedy decoding would produce exactly them. Prompts are left-padded by `prepare_inputs` and continuations
    right-padded, with `position_ids` counting real tokens only, so a row scores as it would alone.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[tuple[float, bool]] = []
    for start in range(0, len(conversations), batch_size):
        batch_continuations = continuations[start : start + batch_size]
        inputs = prepare_inputs(processor, conversations[start : start + batch_size])
        targets = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in batch_continuations]
        empty = [start + row for row, ids in enumerate(targets) if not ids]
        if empty:
            raise ValueError(f"Requests {empty} have an empty continuation; there is nothing to score.")
        rows, prompt_length = inputs["input_ids"].shape
        width = max(len(ids) for ids in targets)
        extra_ids = torch.full((rows, width), pad_id, dtype=torch.long)
        extra_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, ids in enumerate(targets):
            extra_ids[row, : len(ids)] = torch.tensor(ids)
            extra_mask[row, : len(ids)] = 1
        for key, value in inputs.items():
            # Per-token tensors (`mm_token_type_ids`: 0 is text) grow with the continuation.
            if isinstance(value, torch.Tensor) and value.shape[:2] == (rows, prompt_length) and key != "input_ids":
                inputs[key] = torch.cat(
                    [value, extra_mask if key == "attention_mask" else torch.zeros_like(extra_ids)], 1
                )
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra_ids], dim=1)
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        inputs = inputs.to(model.device, dtype=model.dtype)
        # The logits at position t predict token t + 1: the continuation's come from the last width + 1 positions.
        logits = model(**inputs, logits_to_keep=width + 1).logits[:, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for row, ids in enumerate(targets):
            target = torch.tensor(ids)
            scores = logprobs[row, : len(ids)]
            total = scores.gather(-1, target[:, None]).sum().item()
            results.append((total, bool((scores.argmax(-1) == target).all())))
    return results


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "continuation_logprobs",
    "cut_at_stop",
    "generate_answers",
    "generation_settings",
    "to_conversation",
    "visuals_conversation",
]
