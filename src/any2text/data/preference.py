"""Preference data for DPO: templates (row -> prompt, chosen, rejected), the dataset and the pair collator.

A preference template is registered in the same registry as the SFT templates and returns `PreferenceMessages`: a
list holding the prompt turns followed by the *chosen* answer (so the same template also gives SFT on the chosen
answer under `any2text.train`), with the *rejected* answer attached::

    >>> sample = get_template("RLAIF-V")({"image": "cat.png", "question": "What?", "chosen": "A cat.",
    ...                                    "rejected": "A dog."})
    >>> sample.prompt[0]["content"]
    [{'type': 'image', 'image': 'cat.png'}, {'type': 'text', 'text': 'What?'}]
    >>> sample.chosen[0]["content"][0]["text"], sample.rejected[0]["content"][0]["text"]
    ('A cat.', 'A dog.')

Templates: `AA_TI2T` / `AA_TA2T` / `AA_TV2T` (align-anything's `text-image-to-text` / `text-audio-to-text` /
`text-video-to-text`), `RLAIF-V`, and `TRL-Preference` (TRL's `prompt` / `chosen` / `rejected` format, strings or
message lists, with media in the modality table's row columns, `images` / `audios` / `videos`; also the
implicit-prompt form where `chosen` and `rejected` are whole conversations sharing their first turns).

`PreferenceCollator` turns pairs into ONE row per pair, `[prompt | chosen | rejected]`: the prompt and its media
appear once, the rejected answer attends to the prompt but not to the chosen answer (a 4D attention mask) and its
positions continue from the prompt's. So each medium of a pair is encoded once and the prompt runs through the
language model once; see `any2text.training.dpo` for the step that reads the batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers.utils import logging
from transformers.utils.chat_template_utils import render_jinja_template

from ..modalities import MODALITIES, by_content_type
from .collator import EMPTY_BATCH_KEY, IGNORE_INDEX, MultimodalCollator, concat_media
from .loading import MultimodalDataset
from .messages import iter_media, media_as_types
from .templates import (
    Message,
    assistant_message,
    get_template,
    media_of,
    register_template,
    row_name,
    split_placeholders,
    user_message,
)

logger = logging.get_logger(__name__)

PREFERENCE_TEMPLATES: set[str] = set()


class PreferenceMessages(list):
    """`prompt + chosen` as a list of messages (an SFT conversation), with `rejected` attached.

    Args:
        prompt: the turns before the answer (user turns with their media, and any earlier turns).
        chosen: the preferred answer, assistant message(s).
        rejected: the dispreferred answer, assistant message(s).
    """

    def __init__(self, prompt: Sequence[Message], chosen: Sequence[Message], rejected: Sequence[Message]):
        if _answer_of(chosen) == _answer_of(rejected):
            # The DPO / reward loss of such a pair has a zero gradient: it would train silently on nothing.
            raise ValueError(
                f"its chosen and rejected answers are identical ({_answer_of(chosen)[:80]!r}); a preference pair needs "
                "two different answers. Fix or drop the row."
            )
        super().__init__([*prompt, *chosen])
        self.num_prompt = len(prompt)
        self.rejected = list(rejected)

    @property
    def prompt(self) -> list[Message]:
        return list(self[: self.num_prompt])

    @property
    def chosen(self) -> list[Message]:
        return list(self[self.num_prompt :])

    def with_messages(self, messages: Sequence[Message]) -> PreferenceMessages:
        """The same pair with `prompt + chosen` replaced (e.g. by a copy whose media were loaded)."""
        return PreferenceMessages(messages[: self.num_prompt], messages[self.num_prompt :], self.rejected)

    def __reduce__(self):
        # DataLoader workers pickle samples; a list subclass would otherwise lose `rejected`.
        return (PreferenceMessages, (self.prompt, self.chosen, self.rejected))


def _answer_of(messages: Sequence[Message]) -> tuple:
    """What an answer says: its turns' roles and content, text stripped (`"A cat. "` is `"A cat."`)."""
    return tuple(
        (message.get("role"), message["content"].strip() if isinstance(message.get("content"), str) else tuple(
            (item.get("type"), str(item.get(item.get("type"), "")).strip()) for item in message.get("content") or ()
        ))
        for message in messages
    )  # fmt: skip


def register_preference_template(name: str, *, required_columns=(), aliases=()):
    """`register_template` for preference templates; also records the name so `any2text.dpo` can check it."""

    def decorator(fn):
        register_template(name, fn, required_columns=required_columns, aliases=aliases)
        PREFERENCE_TEMPLATES.add(get_template(name).name)
        return fn

    return decorator


def is_preference_template(name: str) -> bool:
    return get_template(name).name in PREFERENCE_TEMPLATES


# ---------------------------------------------------------------------------------------------------------------------
# Templates


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{row_name(row)} has no text in column `{key}` (found {type(value).__name__}).")
    return value


def _prompt_with_media(row: dict[str, Any], text: str, media: dict[str, list]) -> list[Message]:
    """A user turn: placeholders in `text` place the media (modality name -> refs); without any, media go first
    (the LLaVA convention)."""
    counts = {name: text.count(modality.placeholder) for name, modality in MODALITIES.items()}
    media = {name: list(media.get(name, ())) for name in MODALITIES}
    if not any(counts.values()):
        return [user_message(text, media)]
    for name, count in counts.items():
        if count != len(media[name]):
            placeholder = MODALITIES[name].placeholder
            raise ValueError(
                f"{row_name(row)} has {count} `{placeholder}` placeholder(s) but {len(media[name])} {name} item(s). "
                "Make the counts match (one placeholder per item), or leave the placeholders out."
            )
    return [{"role": "user", "content": split_placeholders(text, media)}]


def _overall(row: dict[str, Any]) -> tuple[str, str]:
    """(chosen, rejected) of an align-anything row from `overall_response` (1 or 2)."""
    value = row.get("overall_response")
    # Exactly 1 or 2 (an integral float or a digit string from a CSV too); `int()` would turn 1.7 into 1 and `True`
    # into 1, training the wrong answer as preferred.
    choice = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_) and value in (1, 2):
        choice = int(value)
    elif isinstance(value, str) and value.strip() in ("1", "2"):
        choice = int(value.strip())
    if choice is None:
        raise ValueError(
            f"{row_name(row)} has `overall_response={row.get('overall_response')!r}`; expected 1 or 2 (which of "
            "`response_1` / `response_2` is preferred)."
        )
    responses = {1: _text(row, "response_1"), 2: _text(row, "response_2")}
    return responses[choice], responses[3 - choice]


def _pair(prompt: list[Message], chosen: str, rejected: str) -> PreferenceMessages:
    return PreferenceMessages(prompt, [assistant_message(chosen)], [assistant_message(rejected)])


@register_preference_template(
    "AA_TI2T",
    required_columns=("question", "image", "response_1", "response_2", "overall_response"),
    aliases=("align-anything-text-image-to-text",),
)
def aa_ti2t(row: dict[str, Any]) -> PreferenceMessages:
    """align-anything `text-image-to-text`: `question` + `image`; the answer `overall_response` (1 or 2) names is
    chosen, the other rejected."""
    if row.get("image") is None:
        raise ValueError(f"{row_name(row)} has no `image`.")
    chosen, rejected = _overall(row)
    return _pair(_prompt_with_media(row, _text(row, "question"), {"image": [row["image"]]}), chosen, rejected)


@register_preference_template(
    "AA_TA2T",
    required_columns=("prompt", "audio_path", "response_1", "response_2", "overall_response"),
    aliases=("align-anything-text-audio-to-text",),
)
def aa_ta2t(row: dict[str, Any]) -> PreferenceMessages:
    """align-anything `text-audio-to-text`: `prompt` + `audio_path` (an `{array, sampling_rate}` audio, or a path);
    the answer `overall_response` (1 or 2) names is chosen."""
    if row.get("audio_path") is None:
        raise ValueError(f"{row_name(row)} has no `audio_path`.")
    chosen, rejected = _overall(row)
    return _pair(_prompt_with_media(row, _text(row, "prompt"), {"audio": [row["audio_path"]]}), chosen, rejected)


@register_preference_template(
    "AA_TV2T",
    required_columns=("prompt", "video_path", "response_1", "response_2", "overall_response"),
    aliases=("align-anything-text-video-to-text",),
)
def aa_tv2t(row: dict[str, Any]) -> PreferenceMessages:
    """align-anything `text-video-to-text`: `prompt` (with `<video>`, or none: the video goes first) + `video_path`
    (a path, relative to the media root); the answer `overall_response` (1 or 2) names is chosen."""
    if row.get("video_path") is None:
        raise ValueError(f"{row_name(row)} has no `video_path`.")
    chosen, rejected = _overall(row)
    return _pair(_prompt_with_media(row, _text(row, "prompt"), {"video": [row["video_path"]]}), chosen, rejected)


@register_preference_template(
    "RLAIF-V", required_columns=("image", "question", "chosen", "rejected"), aliases=("RLAIF-V-Dataset",)
)
def rlaif_v(row: dict[str, Any]) -> PreferenceMessages:
    """openbmb/RLAIF-V-Dataset: `image`, `question`, `chosen`, `rejected` (strings)."""
    if row.get("image") is None:
        raise ValueError(f"{row_name(row)} has no `image`.")
    prompt = _prompt_with_media(row, _text(row, "question"), {"image": [row["image"]]})
    return _pair(prompt, _text(row, "chosen"), _text(row, "rejected"))


def _conversation(row: dict[str, Any], value: Any, key: str, media: dict[str, list]) -> list[Message]:
    """TRL message list(s) -> our format; media items without a ref (`{"type": "image"}`) take the next of `media`."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(m, Mapping) and "role" in m for m in value):
        raise ValueError(f"{row_name(row)}: `{key}` must be a string or a list of `{{role, content}}` messages.")
    messages = []
    for message in value:
        content = message.get("content")
        if isinstance(content, str):
            items = (
                split_placeholders(content, media)
                if message["role"] == "user"
                else [{"type": "text", "text": content}]
            )
        elif isinstance(content, list):
            items = []
            for item in content:
                kind = item.get("type")
                modality = by_content_type(kind)
                if modality is not None and item.get(modality.name) is None:
                    if not media[modality.name]:
                        raise ValueError(
                            f"{row_name(row)}: `{key}` has more `{{'type': '{kind}'}}` items than the row's "
                            f"`{modality.row_columns[0]}`."
                        )
                    items.append({"type": kind, modality.name: media[modality.name].pop(0)})
                elif modality is not None or kind == "text":
                    items.append(dict(item))
                else:
                    raise ValueError(f"{row_name(row)}: `{key}` has a content item of type `{kind}`.")
        else:
            raise ValueError(f"{row_name(row)}: a `{key}` message has content of type {type(content).__name__}.")
        messages.append({"role": message["role"], "content": items})
    return messages


def _count_media(messages: list[Message], name: str) -> int:
    return sum(modality.name == name for modality, _ in iter_media(messages))


@register_preference_template(
    "TRL-Preference", required_columns=("chosen", "rejected"), aliases=("TRL", "preference", "DPO")
)
def trl_preference(row: dict[str, Any]) -> PreferenceMessages:
    """TRL's preference format: `prompt` / `chosen` / `rejected` as strings or message lists, media in the modality
    table's row columns: `images` / `image`, `videos` / `video` and (ours) `audios` / `audio`.

    A string prompt places media at its placeholders (`<image>`, `<audio>`, `<video>`), or first when it has none.
    Message lists may hold `{"type": "image"}` / `{"type": "video"}` items (TRL's convention) that take the row's
    media in order. Without `prompt`,
    `chosen` and `rejected` are whole conversations and their shared first turns are the prompt (TRL's implicit
    prompt).
    """
    row_media = media_of(row)
    chosen, rejected = row.get("chosen"), row.get("rejected")
    prompt = row.get("prompt")
    if prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise ValueError(
                f"{row_name(row)} has no `prompt`, so `chosen` and `rejected` must be whole conversations (message "
                "lists) sharing their first turns."
            )
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise ValueError(f"{row_name(row)}: `chosen` and `rejected` share no first turn to use as the prompt.")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    media = {name: list(refs) for name, refs in row_media.items()}
    if isinstance(prompt, str):
        prompt_messages = _prompt_with_media(row, prompt, row_media)
        media = {}
    else:
        prompt_messages = _conversation(row, prompt, "prompt", media)
        for name, modality in MODALITIES.items():
            if media[name] and _count_media(prompt_messages, name) == 0:
                # Media given but not placed: in front of the first user turn, as for a string prompt.
                first = next((m for m in prompt_messages if m["role"] == "user"), None)
                if first is None:
                    raise ValueError(f"{row_name(row)} has {name} items but no user turn to attach them to.")
                first["content"] = [{"type": modality.content_type, name: ref} for ref in media[name]] + first[
                    "content"
                ]
                media[name] = []
    left = {kind: len(refs) for kind, refs in media.items() if refs}
    if left:
        raise ValueError(f"{row_name(row)} has media the prompt does not place: {left}. Add one item per medium.")

    def answer(value: Any, key: str) -> list[Message]:
        if isinstance(value, str):
            return [assistant_message(_text(row, key))]
        messages = _conversation(row, value, key, {name: [] for name in MODALITIES})
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"{row_name(row)}: `{key}` must end with an assistant message.")
        return messages

    return PreferenceMessages(prompt_messages, answer(chosen, "chosen"), answer(rejected, "rejected"))


# ---------------------------------------------------------------------------------------------------------------------
# Dataset


class PreferenceDataset(MultimodalDataset):
    """`MultimodalDataset` for preference templates: items are `{"messages": PreferenceMessages}` (media of the
    prompt loaded as usual). Loading, mixing, weights, `skip_bad_rows` and `validate_rows` are the SFT dataset's."""

    def __init__(self, specs, **kwargs):
        specs_list = [specs] if not isinstance(specs, list | tuple) else list(specs)
        not_preference = [spec.template for spec in specs_list if not is_preference_template(spec.template)]
        if not_preference:
            raise ValueError(
                f"Template(s) {', '.join(f'`{t}`' for t in not_preference)} give single answers, not preference "
                f"pairs. DPO needs one of {', '.join(f'`{t}`' for t in sorted(PREFERENCE_TEMPLATES))}."
            )
        super().__init__(specs, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Collator


class PreferenceCollator(MultimodalCollator):
    r"""
    Batch preference pairs as rows `[prompt | chosen | rejected]`: ONE layout for every batch shape.

    Same arguments as `MultimodalCollator` (rendering, media loading, label masks, `max_length` / `truncation`,
    `skip_bad_rows` / `bad_rows`, `allow_media_outside_root`, `ensure_image`, `padding_free` are its own). A pair's
    length is its row, `prompt + chosen + rejected` with media counted once (`sample_length`); `max_length` bounds
    it through the one rule, `fit_length`: `"error"` raises (a bad row), `"drop"` leaves it out (counted), `"text"`
    cuts the ends of the answers (the longer one first) so the row fits, and drops the pair when no answer token
    would remain.

    The prompt and its media appear once per pair; the rejected answer attends to the prompt but not to the chosen
    answer (a 4D attention mask) and its positions continue from the prompt's. So each image and clip of a pair is
    encoded once and the prompt runs through the language model once.

    Rows: by default one pair per row, prompts left-padded to end at the same column (so the answers of all rows
    share few columns); with `padding_free=True` (TRL's name) the whole batch is one row, and with `PackedDataset`
    items (`{"packed": [pair, ...]}`, bins of at most `max_length` tokens) each item is a row. A pair is never split.
    In every case the batch has the same keys (the pair batch schema):

    - `input_ids`, `position_ids` `(rows, L)`: positions restart at each pair; the rejected answer's continue from
      the prompt's end.
    - `attention_mask` `(rows, 1, L, L)` bool, True where attention is allowed (`pair_attention_mask`).
    - `mm_token_type_ids` `(rows, L)` when the processor gives them; the media tensors of the prompts
      (`pixel_values`, `input_features`, `is_longer`...), each item once, in row order.
    - `logits_to_keep` `(K,)`: the columns whose logits predict an answer token (the union over rows).
    - `answer_labels` `(rows, K)`: the answer token each kept column predicts in that row (`-100`: none);
      `answer_slots` `(rows, K)`: which answer it belongs to, `2 * pair + side` (side 0 chosen, 1 rejected; `-1`
      none). Pairs are numbered over the batch in row order.
    - `pair_mask` `(pairs,)`: False for a padding pair (a blank image added for `ensure_image`).
    - `pair_rows` `(pairs,)` and `answer_ends` `(pairs, 2)`: the row of each pair and the columns of the last token
      of its chosen (`[:, 0]`) and rejected (`[:, 1]`) answer: `hidden[pair_rows, answer_ends[:, side]]` is what a
      reward model scores (the answer's end sees its prompt and itself only).
    - `index`, `ref_chosen_logps`, `ref_rejected_logps` `(pairs,)`: when the samples carry them.

    `training.dpo.pair_logps(model, batch)` turns it into per-pair summed log-probs and token counts.
    """

    _length_name = "The preference pair (prompt + chosen + rejected)"

    @staticmethod
    def _last_span_start(labels: torch.Tensor) -> int | None:
        """Start of the last run of labelled positions: where the final assistant answer begins."""
        labelled = set((labels != IGNORE_INDEX).nonzero().flatten().tolist())
        if not labelled:
            return None
        start = max(labelled)
        while start - 1 in labelled:
            start -= 1
        return start

    def _check_sample_type(self, sample: Mapping[str, Any], index: int) -> None:
        super()._check_sample_type(sample, index)
        if not isinstance(sample["messages"], PreferenceMessages):
            raise ValueError(
                f"Sample {index} is not a preference pair (got {type(sample['messages']).__name__}); preference "
                f"data needs a preference template: {', '.join(f'`{t}`' for t in sorted(PREFERENCE_TEMPLATES))}."
            )

    def _encode_item(self, messages: PreferenceMessages, index: int) -> dict[str, Any] | None:
        return self._fit_pair(self._encode_pair(messages, index))

    def _encode_pair(self, messages: PreferenceMessages, index: int) -> dict[str, Any]:
        """A pair as `{prompt, chosen_ids, rejected_ids, chosen_labels, rejected_labels, media}` (not yet fitted)."""
        rejected_messages = [*messages.prompt, *messages.rejected]
        media = self._load_media(list(messages))
        chosen = self._encode(messages, index, media)
        # The media of a pair live in its shared prompt: read (decode, resample) them once for both sides.
        chosen_refs = [ref for _, ref in iter_media(list(messages))]
        rejected_refs = [ref for _, ref in iter_media(rejected_messages)]
        shared = len(chosen_refs) == len(rejected_refs) and all(
            x is y for x, y in zip(chosen_refs, rejected_refs, strict=True)
        )
        rejected = self._encode(rejected_messages, index, media if shared else None)
        start = self._last_span_start(chosen["labels"])
        if start is None or self._last_span_start(rejected["labels"]) != start:
            raise ValueError(
                f"Sample {index}: the chosen and rejected conversations do not share the prompt tokens; the answers "
                "must be the final assistant turn(s) after the same prompt."
            )
        if not torch.equal(chosen["input_ids"][:start], rejected["input_ids"][:start]):
            raise ValueError(f"Sample {index}: the chosen and rejected conversations render different prompts.")
        return {
            "prompt": {key: value[:start] for key, value in chosen.items() if key not in ("media", "labels")},
            "chosen_ids": chosen["input_ids"][start:],
            "rejected_ids": rejected["input_ids"][start:],
            "chosen_labels": chosen["labels"][start:],
            "rejected_labels": rejected["labels"][start:],
            "media": chosen["media"],
        }

    def _fit_pair(self, pair: dict[str, Any]) -> dict[str, Any] | None:
        """`max_length` on the pair's row through `fit_length`; `"text"` cuts the answers' ends, longer one first."""
        p, c, r = len(pair["prompt"]["input_ids"]), len(pair["chosen_ids"]), len(pair["rejected_ids"])
        media_mask = self._media_mask(pair["prompt"]).tolist() + [False] * (c + r)
        keep = self.fit_length(media_mask, name=self._length_name)
        if keep == p + c + r:
            return pair
        reason = "`truncation='drop'`" if self.truncation == "drop" else "a media span would be cut"
        if keep is not None:
            budget = keep - p
            keep_c = min(c, max(budget - r, budget // 2))
            keep_r = min(r, budget - keep_c)
            cut = {
                **pair,
                "chosen_ids": pair["chosen_ids"][:keep_c],
                "rejected_ids": pair["rejected_ids"][:keep_r],
                "chosen_labels": pair["chosen_labels"][:keep_c],
                "rejected_labels": pair["rejected_labels"][:keep_r],
            }
            if all((labels != IGNORE_INDEX).any() for labels in (cut["chosen_labels"], cut["rejected_labels"])):
                return cut
            reason = "cutting the answers would leave one without a token"
        return self._drop(f"a preference pair of {p + c + r} tokens", reason)

    def sample_length(self, messages: list[dict]) -> int:
        """Tokens of a pair's row, `prompt + chosen + rejected` (media counted once), without loading media: the
        length the dataset's length index holds, packing bins by and `max_length` bounds.

        Plain conversations get `MultimodalCollator.sample_length`.
        """
        if not isinstance(messages, PreferenceMessages):
            return super().sample_length(messages)
        chosen = super().sample_length(list(messages))
        rejected = super().sample_length([*messages.prompt, *messages.rejected])
        return chosen + rejected - self._prompt_length(messages.prompt)

    def _prompt_length(self, prompt: list[dict]) -> int:
        text = render_jinja_template(
            [media_as_types(prompt)],
            chat_template=self.chat_template,
            add_generation_prompt=True,
            **self.tokenizer.special_tokens_map,
        )[0][0]
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + self._media_length(prompt)

    def _blank_pair(self) -> dict[str, Any]:
        sample = self._blank_image_sample()
        empty = torch.zeros(0, dtype=torch.long)
        return {
            "prompt": {key: value for key, value in sample.items() if key not in ("media", "labels")},
            "chosen_ids": empty,
            "rejected_ids": empty,
            "chosen_labels": empty,
            "rejected_labels": empty,
            "media": sample["media"],
            "padding": True,
        }

    def _layout(self, rows: list[list[dict[str, Any]]], flat: bool) -> dict[str, Any]:
        """One pair per row (prompts aligned), or the given rows of pairs; then the per-pair extras."""
        if not flat:
            rows = [[pair] for pair in rows[0]]
        if self.ensure_image and not any("pixel_values" in pair["media"] for row in rows for pair in row):
            rows.append([self._blank_pair()])  # a row of its own: it never pushes a packed row past `max_length`
        # `single_row` does not apply: a pair row takes a dense 4D mask, whose cost grows with the row squared.
        return pair_rows(rows, self.tokenizer.pad_token_id, align_prompts=not flat)

    def empty_batch(self) -> dict[str, Any]:
        """`MultimodalCollator.empty_batch` as a pair batch: one text-only placeholder pair (`pair_mask` False, `index`
        -1), plus the blank image pair under `ensure_image`; the DPO loss of a batch without a real pair is zero."""
        logger.warning("Every pair of a batch was dropped or skipped; the step is skipped (counted).")
        token = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.pad_token_id
        ids = torch.tensor([token])
        placeholder = {"prompt": {"input_ids": ids}, "chosen_ids": ids, "rejected_ids": ids, "chosen_labels": ids,
                       "rejected_labels": ids, "media": {}, "padding": True}  # fmt: skip
        rows = [[placeholder]]
        if self.ensure_image:
            rows.insert(0, [self._blank_pair()])  # first: its keys (`mm_token_type_ids`) set the batch's
        batch = pair_rows(rows, self.tokenizer.pad_token_id)
        batch["index"] = torch.full((len(rows),), -1, dtype=torch.long)
        batch[EMPTY_BATCH_KEY] = True
        return batch

    def _finish(self, batch: dict[str, Any], kept: list[Mapping[str, Any]]) -> dict[str, Any]:
        """Per-pair extras the samples carry (`index`, reference log-probs), 0 for a padding pair."""
        num_pairs = len(batch["pair_mask"])
        for key in ("index", "ref_chosen_logps", "ref_rejected_logps"):
            if kept and all(key in sample for sample in kept):
                values = [sample[key] for sample in kept] + [0] * (num_pairs - len(kept))
                batch[key] = torch.tensor(values, dtype=torch.long if key == "index" else torch.float32)
        return super()._finish(batch, kept)


def pair_rows(rows: list[list[dict[str, Any]]], pad_token_id: int, align_prompts: bool = False) -> dict[str, Any]:
    """The pair batch (see `PreferenceCollator`) of encoded pairs, `rows[i]` the pairs of row `i` in order.

    `align_prompts` (one pair per row): each row is left-padded so every prompt ends at the same column; the answers
    of all rows then share few columns, so `logits_to_keep` stays about as long as the longest two answers.
    """
    sizes = [[(len(pair["prompt"]["input_ids"]), len(pair["chosen_ids"]), len(pair["rejected_ids"])) for pair in row]
             for row in rows]  # fmt: skip
    longest_prompt = max(row[0][0] for row in sizes) if align_prompts else 0
    lefts = [longest_prompt - row[0][0] if align_prompts else 0 for row in sizes]
    L = max(left + sum(p + c + r for p, c, r in row) for left, row in zip(lefts, sizes))
    n = len(rows)
    input_ids = torch.full((n, L), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n, L), dtype=torch.long)
    segment = torch.zeros((n, L), dtype=torch.long)  # 0 padding, 1 prompt, 2 chosen, 3 rejected
    pair_ids = torch.zeros((n, L), dtype=torch.long)  # 1-based pair of each column, 0 for padding
    token_types = {
        key: torch.zeros((n, L), dtype=torch.long)
        for key in ("mm_token_type_ids", "token_type_ids")
        if key in rows[0][0]["prompt"]
    }
    # Per row: (column whose logits predict the token, target, slot) of every answer token.
    targets: list[list[tuple[int, int, int]]] = []
    media: dict[str, list[torch.Tensor]] = {}
    ends: list[tuple[int, int, int]] = []  # per pair: its row, the columns of its chosen and rejected last tokens
    pair_index = 0
    for row, (pairs, left) in enumerate(zip(rows, lefts)):
        entries, offset = [], left
        for pair in pairs:
            p, c, r = len(pair["prompt"]["input_ids"]), len(pair["chosen_ids"]), len(pair["rejected_ids"])
            span = slice(offset, offset + p + c + r)
            input_ids[row, span] = torch.cat([pair["prompt"]["input_ids"], pair["chosen_ids"], pair["rejected_ids"]])
            position_ids[row, span] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
            segment[row, span] = torch.cat([torch.full((p,), 1), torch.full((c,), 2), torch.full((r,), 3)]).long()
            pair_ids[row, span] = pair_index + 1
            for key, tensor in token_types.items():
                tensor[row, offset : offset + p] = pair["prompt"].get(key, torch.zeros(p, dtype=torch.long))
            start = offset + p
            for side, labels, first in ((0, pair["chosen_labels"], start), (1, pair["rejected_labels"], start + c)):
                for k, label in enumerate(labels.tolist()):
                    if label != IGNORE_INDEX:
                        # Token k of an answer is predicted at the column before it; the first token of both
                        # answers from the last prompt column (the rejected answer does not see the chosen one).
                        entries.append((start - 1 if k == 0 else first + k - 1, label, 2 * pair_index + side))
            for key, value in pair["media"].items():
                media.setdefault(key, []).append(value)
            ends.append((row, start + c - 1 if c else start - 1, start + c + r - 1 if r else start - 1))
            offset += p + c + r
            pair_index += 1
        targets.append(entries)
    # One `logits_to_keep` for all rows: every column any row needs, as often as one row needs it.
    need: dict[int, int] = {}
    for entries in targets:
        counts: dict[int, int] = {}
        for column, _, _ in entries:
            counts[column] = counts.get(column, 0) + 1
        for column, count in counts.items():
            need[column] = max(need.get(column, 0), count)
    columns = sorted(column for column, count in need.items() for _ in range(count))
    first_slot: dict[int, int] = {}
    for k, column in enumerate(columns):
        first_slot.setdefault(column, k)
    K = max(len(columns), 1)
    answer_labels = torch.full((n, K), IGNORE_INDEX, dtype=torch.long)
    answer_slots = torch.full((n, K), -1, dtype=torch.long)
    for row, entries in enumerate(targets):
        used: dict[int, int] = {}
        for column, label, slot in entries:
            k = first_slot[column] + used.get(column, 0)
            used[column] = used.get(column, 0) + 1
            answer_labels[row, k], answer_slots[row, k] = label, slot
    batch = {
        "input_ids": input_ids,
        "attention_mask": pair_attention_mask(segment, pair_ids),
        "position_ids": position_ids,
        **token_types,
        "logits_to_keep": torch.tensor(columns if columns else [0], dtype=torch.long),
        "answer_labels": answer_labels,
        "answer_slots": answer_slots,
        "pair_mask": torch.tensor([not pair.get("padding", False) for pairs in rows for pair in pairs]),
        "pair_rows": torch.tensor([row for row, _, _ in ends], dtype=torch.long),
        "answer_ends": torch.tensor([[chosen, rejected] for _, chosen, rejected in ends], dtype=torch.long),
    }
    for key in sorted(media):
        batch[key] = concat_media(media[key])
    return batch


def pair_attention_mask(segment: torch.Tensor, pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """`(rows, 1, L, L)` bool mask from segment ids (0 pad, 1 prompt, 2 chosen, 3 rejected): causal, every answer
    sees the prompt and itself only; padding sees only itself (a row with nothing to attend to would give NaN).
    With `pair_ids` (which pair each column belongs to; packed rows), attention also stays inside each pair."""
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal & (key != 0) & ((key == 1) | (key == query))
    if pair_ids is not None:
        allowed &= pair_ids[:, :, None] == pair_ids[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool)
    return allowed[:, None]


__all__ = [
    "PREFERENCE_TEMPLATES",
    "PreferenceCollator",
    "PreferenceDataset",
    "PreferenceMessages",
    "is_preference_template",
    "pair_attention_mask",
    "pair_rows",
    "register_preference_template",
]
