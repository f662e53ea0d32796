"""Prompt-only data for on-policy training (GRPO): templates, the dataset and the prompt collator.

A prompt is the conversation up to the turn the model answers, with the row's other columns attached for the reward
functions (`PromptMessages`). Two sources:

- the template `TRL-Prompt`, TRL's prompt-only format: `prompt` is a string (media at its `<image>` / `<audio>` /
  `<video>` placeholders, or first when it has none) or a list of messages (`{"type": "image"}` items take the row's
  images in order), media in the modality table's row columns, `images` / `image`, `audios` / `audio`, `videos` /
  `video` (paths under the dataset's media root, or embedded);
  every other column reaches the reward functions under its own name::

      >>> prompt = get_template("TRL-Prompt")({"prompt": "<image>What colour?", "images": ["cat.png"],
      ...                                       "solution": "red"})
      >>> prompt[0]["content"], prompt.columns
      ([{'type': 'image', 'image': 'cat.png'}, {'type': 'text', 'text': 'What colour?'}], {'solution': 'red'})

- any SFT template: the conversation up to its last assistant turn is the prompt, and that turn's text reaches the
  reward functions as `answer` (`as_prompt`).

`PromptCollator` renders each prompt with the generation prompt, runs the processor (media decoded and processed once
per prompt) and left-pads the batch, so every prompt ends at the same column: the layout `generate` takes, and the one
the GRPO step extends with each prompt's completions (`training.grpo.group_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging
from transformers.utils.chat_template_utils import render_jinja_template

from ..modalities import MODALITIES
from .collator import _DROPPED_KEYS, _PER_TOKEN_KEYS, EMPTY_BATCH_KEY, MultimodalCollator, concat_media
from .loading import BAD_ROW_COLUMN, MultimodalDataset
from .messages import media_as_types
from .preference import _conversation, _count_media, _prompt_with_media
from .templates import Message, check_conversation, media_of, register_template, row_name

logger = logging.get_logger(__name__)


def _prompt_columns() -> set[str]:
    """Columns `TRL-Prompt` reads itself (`prompt` and the modality table's row columns); every other column of a row
    reaches the reward functions."""
    return {"prompt", *(column for modality in MODALITIES.values() for column in modality.row_columns)}


class PromptMessages(list):
    """The turns of a prompt (ending with a user turn), with the row's columns for the reward functions.

    Args:
        messages: the prompt's turns, in the project-wide message format.
        columns: values the reward functions receive as keyword arguments (`answer` for an SFT row).
        raw_prompt: what reward functions receive as `prompts` (TRL passes the row's `prompt` as the dataset holds
            it); default: the messages.
    """

    def __init__(self, messages: Sequence[Message], columns: Mapping[str, Any] | None = None, raw_prompt: Any = None):
        super().__init__(messages)
        self.columns = dict(columns or {})
        self.raw_prompt = raw_prompt

    def with_messages(self, messages: Sequence[Message]) -> PromptMessages:
        """The same prompt with its turns replaced (e.g. by a copy whose media were loaded)."""
        return PromptMessages(messages, self.columns, self.raw_prompt)

    def __reduce__(self):
        # DataLoader workers pickle samples; a list subclass would otherwise lose its attributes.
        return (PromptMessages, (list(self), self.columns, self.raw_prompt))


@register_template("TRL-Prompt", required_columns=("prompt",), aliases=("prompt-only", "GRPO"))
def trl_prompt(row: dict[str, Any]) -> PromptMessages:
    """TRL's prompt-only format: `prompt` (a string or messages), media in the modality table's row columns (`images`
    / `image`, `videos` / `video`, `audios` / `audio`); the other columns go to the reward functions."""
    row_media = media_of(row)
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{row_name(row)} has an empty `prompt`.")
        messages = _prompt_with_media(row, prompt, row_media)
    else:
        media = {name: list(refs) for name, refs in row_media.items()}
        messages = _conversation(row, prompt, "prompt", media)
        for name, modality in MODALITIES.items():
            if media.get(name) and _count_media(messages, name) == 0:
                # Media given but not placed: in front of the first user turn, as for a string prompt.
                first = next((m for m in messages if m["role"] == "user"), None)
                if first is None:
                    raise ValueError(f"{row_name(row)} has {name} items but no user turn to attach them to.")
                part = modality.content_type
                first["content"] = [{"type": part, name: ref} for ref in media[name]] + first["content"]
                media[name] = []
        left = {name: len(refs) for name, refs in media.items() if refs}
        if left:
            raise ValueError(f"{row_name(row)} has media the prompt does not place: {left}. Add one item per medium.")
    skip = _prompt_columns()
    columns = {key: value for key, value in row.items() if key not in skip and key != BAD_ROW_COLUMN}
    return PromptMessages(messages, columns, raw_prompt=prompt)


def as_prompt(messages: list[Message]) -> PromptMessages:
    """A template's output as a prompt: `PromptMessages` as they are; a conversation (an SFT template's) cut before its
    last assistant turn, whose text becomes the `answer` column.

    Raises:
        ConversationError: (a `ValueError`) the prompt breaks the conversation rules (it must start with a user turn,
            alternate, and end with a user turn).
    """
    if isinstance(messages, PromptMessages):
        check_conversation([*messages, {"role": "assistant", "content": [{"type": "text", "text": "-"}]}])
        return messages
    check_conversation(messages)
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    content = messages[last]["content"]
    answer = (
        content if isinstance(content, str) else "".join(i.get("text", "") for i in content if i["type"] == "text")
    )
    prompt = [{**m, "content": list(m["content"])} if isinstance(m["content"], list) else m for m in messages[:last]]
    return PromptMessages(prompt, {"answer": answer})


class PromptDataset(MultimodalDataset):
    """`MultimodalDataset` whose items are prompts: `{"messages": PromptMessages, "source", "index"}` (`as_prompt` of
    the row's template). Loading, mixing, weights, bad rows (`skip_bad_rows`, `max_bad_rows`), `validate_rows` and
    `check_sample` (the prompt's length, `PromptCollator.check_sample`) are the SFT dataset's."""

    def _conversation(self, dataset_id: int, data: dict[str, Any]) -> PromptMessages:
        """The row's template output as a prompt (`as_prompt`: a conversation is cut before its last assistant turn)."""
        return as_prompt(self.templates[dataset_id](data))

    def _resolve_media(self, messages: PromptMessages, media_root: str | None, decode: bool) -> PromptMessages:
        return messages.with_messages(super()._resolve_media(messages, media_root, decode))


class PromptCollator(MultimodalCollator):
    r"""
    Batch prompts for generation: each rendered with the generation prompt, processed (media once), left-padded.

    Same arguments as `MultimodalCollator`. `max_length` bounds the prompt (TRL's former `max_prompt_length`) through
    the one rule, `fit_length`: `"error"` raises (a bad row), `"drop"` leaves it out (counted), `"text"` cuts text off
    the prompt's *start* (as TRL truncated prompts from the left) and drops it when the cut would go through a medium.

    Batch keys:

    - `input_ids`, `attention_mask` `(prompts, P)`, left-padded so every prompt ends at column `P - 1`;
      `mm_token_type_ids` when the processor gives them; the media tensors (`pixel_values`, `input_features`,
      `is_longer`...), each item once, in prompt order.
    - `media_counts`: `{key: [items of each prompt]}` for each media tensor (to split a batch by prompt).
    - `index` `(prompts,)`; `prompts` (what reward functions get as `prompts`) and `reward_kwargs` (one dict of
      columns per prompt), plain lists.
    """

    _length_name = "The prompt"

    def _check_sample_type(self, sample: Mapping[str, Any], index: int) -> None:
        super()._check_sample_type(sample, index)
        if not isinstance(sample["messages"], PromptMessages):
            raise ValueError(
                f"Sample {index} is not a prompt (got {type(sample['messages']).__name__}); prompt data comes from "
                "`PromptDataset` (any template: a conversation is cut before its last answer)."
            )

    def _render_prompt(self, messages: list[Message]) -> str:
        plain = media_as_types(list(messages))
        return render_jinja_template(
            [plain], chat_template=self.chat_template, add_generation_prompt=True, **self.tokenizer.special_tokens_map
        )[0][0]

    def _encode_item(self, messages: PromptMessages, index: int) -> dict[str, Any] | None:
        text = self._render_prompt(messages)
        media = self._load_media(list(messages))
        self._check_placeholders(text, media, index)
        encoded = self._process(text, media)
        sample = {key: value[0] for key, value in encoded.items() if key in _PER_TOKEN_KEYS}
        sample["media"] = {
            key: value for key, value in encoded.items() if key not in _PER_TOKEN_KEYS and key not in _DROPPED_KEYS
        }
        # `fit_length` keeps leading tokens; a prompt keeps its end (the generation prompt), so it is asked reversed.
        keep = self.fit_length(self._media_mask(sample).flip(0).tolist(), name=self._length_name)
        length = len(sample["input_ids"])
        if keep == length:
            return {"prompt": sample, "messages": messages}
        if keep is None:
            reason = "`truncation='drop'`" if self.truncation == "drop" else "a media span would be cut"
            return self._drop(f"a prompt of {length} tokens", reason)
        cut = {key: value[length - keep :] if key != "media" else value for key, value in sample.items()}
        return {"prompt": cut, "messages": messages}

    def _layout(self, rows: list[list[dict[str, Any]]], flat: bool) -> dict[str, Any]:
        if self.ensure_image:
            raise ValueError(
                "GRPO on a stock Llava checkpoint under ZeRO-3 is not supported (its vision tower cannot run without "
                "an image); start from a LlamaVisionAudio checkpoint, which runs every tower on every rank."
            )
        items = [item for row in rows for item in row]  # one prompt per row, whatever the layout asked
        batch = left_pad([item["prompt"] for item in items], self.tokenizer.pad_token_id)
        batch["prompts"] = [
            item["messages"].raw_prompt if item["messages"].raw_prompt is not None else list(item["messages"])
            for item in items
        ]
        batch["reward_kwargs"] = [item["messages"].columns for item in items]
        return batch

    def empty_batch(self) -> dict[str, Any]:
        """One placeholder prompt (a BOS token) marked `EMPTY_BATCH_KEY`; `MultimodalTrainer` skips the step."""
        logger.warning("Every prompt of a batch was dropped or skipped; the step is skipped (counted).")
        token = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.pad_token_id
        batch = left_pad([{"input_ids": torch.tensor([token]), "media": {}}], self.tokenizer.pad_token_id)
        batch.update(prompts=[""], reward_kwargs=[{}], index=torch.tensor([-1]))
        batch[EMPTY_BATCH_KEY] = True
        return batch

    def _finish(self, batch: dict[str, Any], kept: list[Mapping[str, Any]]) -> dict[str, Any]:
        if kept and all("index" in sample for sample in kept):
            batch["index"] = torch.tensor([sample["index"] for sample in kept], dtype=torch.long)
        return super()._finish(batch, kept)

    def sample_length(self, messages: list[dict]) -> int:
        """Tokens of the rendered prompt (generation prompt included, media expanded), without loading media."""
        text = self._render_prompt(messages)
        length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return length + self._media_length(list(messages))


def left_pad(prompts: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Encoded prompts (`input_ids`, optional per-token keys, `media`) as one left-padded batch with `attention_mask`
    and `media_counts`."""
    length = max(len(prompt["input_ids"]) for prompt in prompts)
    keys = [key for key in prompts[0] if key not in ("media", "attention_mask")]
    batch: dict[str, Any] = {}
    for key in keys:
        fill = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.stack([
            torch.cat([torch.full((length - len(p[key]),), fill, dtype=p[key].dtype), p[key]]) for p in prompts
        ])  # fmt: skip
    batch["attention_mask"] = torch.stack([
        torch.cat([torch.zeros(length - len(p["input_ids"]), dtype=torch.long),
                   torch.ones(len(p["input_ids"]), dtype=torch.long)])
        for p in prompts
    ])  # fmt: skip
    media_keys = sorted({key for prompt in prompts for key in prompt["media"]})
    batch["media_counts"] = {}
    for key in media_keys:
        values = [prompt["media"].get(key) for prompt in prompts]
        batch[key] = concat_media([value for value in values if value is not None])
        # Leading items of each prompt in the batch's layout: videos of unequal frame counts are flattened to frames.
        flattened = any(value is not None and value.dim() > batch[key].dim() for value in values)
        batch["media_counts"][key] = [
            0
            if value is None
            else (value.shape[: value.dim() - batch[key].dim() + 1].numel() if flattened else len(value))
            for value in values
        ]
    return batch


__all__ = ["PromptCollator", "PromptDataset", "PromptMessages", "as_prompt", "left_pad", "trl_prompt"]
