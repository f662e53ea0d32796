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

Templates: `AA_TI2T` / `AA_TA2T` (align-anything's `text-image-to-text` / `text-audio-to-text`), `RLAIF-V`, and
`TRL-Preference` (TRL's `prompt` / `chosen` / `rejected` format, strings or message lists, with `images` / `audios`;
also the implicit-prompt form where `chosen` and `rejected` are whole conversations sharing their first turns).

`PreferenceCollator` turns pairs into ONE row per pair, `[prompt | chosen | rejected]`: the prompt and its media
appear once, the rejected answer attends to the prompt but not to the chosen answer (a 4D attention mask) and its
positions continue from the prompt's. So each image and clip of a pair is encoded once and the prompt runs through
the language model once; see `any2text.training.dpo` for the step that reads the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging
from transformers.utils.chat_template_utils import render_jinja_template

from .collator import IGNORE_INDEX, MultimodalCollator, SampleTooLongError
from .loading import MultimodalDataset
from .media import media_refs
from .packing import PACKED_KEY
from .templates import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    Message,
    assistant_message,
    get_template,
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


def _prompt_with_media(row: dict[str, Any], text: str, images: list, audios: list) -> list[Message]:
    """A user turn: placeholders in `text` place the media; without any, media go first (the LLaVA convention)."""
    counts = {"image": text.count(IMAGE_PLACEHOLDER), "audio": text.count(AUDIO_PLACEHOLDER)}
    media = {"image": list(images), "audio": list(audios)}
    if not any(counts.values()):
        return [user_message(text, images=images, audios=audios)]
    for modality, count in counts.items():
        if count != len(media[modality]):
            raise ValueError(
                f"{row_name(row)} has {count} `<{modality}>` placeholder(s) but {len(media[modality])} {modality} "
                "item(s). Make the counts match (one placeholder per item), or leave the placeholders out."
            )
    return [{"role": "user", "content": split_placeholders(text, media)}]


def _overall(row: dict[str, Any]) -> tuple[str, str]:
    """(chosen, rejected) of an align-anything row from `overall_response` (1 or 2)."""
    choice = row.get("overall_response")
    try:
        choice = int(choice)
    except (TypeError, ValueError):
        choice = None
    if choice not in (1, 2):
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
    return _pair(_prompt_with_media(row, _text(row, "question"), [row["image"]], []), chosen, rejected)


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
    return _pair(_prompt_with_media(row, _text(row, "prompt"), [], [row["audio_path"]]), chosen, rejected)


@register_preference_template(
    "RLAIF-V", required_columns=("image", "question", "chosen", "rejected"), aliases=("RLAIF-V-Dataset",)
)
def rlaif_v(row: dict[str, Any]) -> PreferenceMessages:
    """openbmb/RLAIF-V-Dataset: `image`, `question`, `chosen`, `rejected` (strings)."""
    if row.get("image") is None:
        raise ValueError(f"{row_name(row)} has no `image`.")
    prompt = _prompt_with_media(row, _text(row, "question"), [row["image"]], [])
    return _pair(prompt, _text(row, "chosen"), _text(row, "rejected"))


def _media_list(row: dict[str, Any], single: str, plural: str) -> list[Any]:
    many = row.get(plural)
    if many is not None:
        return list(many) if isinstance(many, list | tuple) else [many]
    return [] if row.get(single) is None else [row[single]]


def _conversation(row: dict[str, Any], value: Any, key: str, media: dict[str, list]) -> list[Message]:
    """TRL message list(s) -> our format; `{"type": "image"}` items without a ref take the next of `media`."""
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
                if kind in ("image", "audio") and item.get(kind) is None:
                    if not media[kind]:
                        raise ValueError(
                            f"{row_name(row)}: `{key}` has more `{{'type': '{kind}'}}` items than the row's `{kind}s`."
                        )
                    items.append({"type": kind, kind: media[kind].pop(0)})
                elif kind in ("image", "audio", "text"):
                    items.append(dict(item))
                else:
                    raise ValueError(f"{row_name(row)}: `{key}` has a content item of type `{kind}`.")
        else:
            raise ValueError(f"{row_name(row)}: a `{key}` message has content of type {type(content).__name__}.")
        messages.append({"role": message["role"], "content": items})
    return messages


def _count_media(messages: list[Message], kind: str) -> int:
    return sum(item["type"] == kind for message in messages for item in message["content"])


@register_preference_template(
    "TRL-Preference", required_columns=("chosen", "rejected"), aliases=("TRL", "preference", "DPO")
)
def trl_preference(row: dict[str, Any]) -> PreferenceMessages:
    """TRL's preference format: `prompt` / `chosen` / `rejected` as strings or message lists, media in `images` /
    `image` and (ours) `audios` / `audio`.

    A string prompt places media at its `<image>` / `<audio>` placeholders, or first when it has none. Message lists
    may hold `{"type": "image"}` items (TRL's convention) that take the row's images in order. Without `prompt`,
    `chosen` and `rejected` are whole conversations and their shared first turns are the prompt (TRL's implicit
    prompt).
    """
    images, audios = _media_list(row, "image", "images"), _media_list(row, "audio", "audios")
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
    media = {"image": list(images), "audio": list(audios)}
    if isinstance(prompt, str):
        prompt_messages = _prompt_with_media(row, prompt, images, audios)
        media = {"image": [], "audio": []}
    else:
        prompt_messages = _conversation(row, prompt, "prompt", media)
        for kind in ("image", "audio"):
            if media[kind] and _count_media(prompt_messages, kind) == 0:
                # Media given but not placed: in front of the first user turn, as for a string prompt.
                first = next((m for m in prompt_messages if m["role"] == "user"), None)
                if first is None:
                    raise ValueError(f"{row_name(row)} has {kind} items but no user turn to attach them to.")
                first["content"] = [{"type": kind, kind: ref} for ref in media[kind]] + first["content"]
                media[kind] = []
    left = {kind: len(refs) for kind, refs in media.items() if refs}
    if left:
        raise ValueError(f"{row_name(row)} has media the prompt does not place: {left}. Add one item per medium.")

    def answer(value: Any, key: str) -> list[Message]:
        if isinstance(value, str):
            return [assistant_message(_text(row, key))]
        messages = _conversation(row, value, key, {"image": [], "audio": []})
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

    def _resolve_media(self, messages, media_root, decode):
        resolved = super()._resolve_media(messages, media_root, decode)
        return messages.with_messages(resolved) if isinstance(messages, PreferenceMessages) else resolved


class IndexedDataset(torch.utils.data.Dataset):
    """Each item of `dataset` with its `index` (and, once known, its reference log-probs) added."""

    def __init__(self, dataset: torch.utils.data.Dataset, ref_logps: dict[int, tuple[float, float]] | None = None):
        self.dataset = dataset
        self.ref_logps = ref_logps

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {**self.dataset[index], "index": index}
        if self.ref_logps is not None:
            item["ref_chosen_logps"], item["ref_rejected_logps"] = self.ref_logps[index]
        return item

    def __getattr__(self, name: str) -> Any:
        # `log_skip_summary`, `skipped`, `messages`... of the wrapped dataset.
        if name in ("dataset", "ref_logps"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


# ---------------------------------------------------------------------------------------------------------------------
# Collator


class PreferenceCollator(MultimodalCollator):
    r"""
    Batch preference pairs as one row per pair, `[left padding | prompt | chosen | padding | rejected | padding]`.

    Same arguments as `MultimodalCollator` (rendering, media loading, label masks and `max_length` / `truncation`
    are its own; `max_length` applies to `prompt + chosen` and to `prompt + rejected`, as in TRL, and a pair is
    dropped, counted in `num_dropped`, when either side is). Prompts are left-padded so that every chosen answer
    starts at the same column `P` and every rejected one at `P + C`; the model then computes logits only at the
    columns listed in `logits_to_keep`.

    Returns a dict with the model inputs `input_ids`, `attention_mask` (4D, `(pairs, 1, L, L)`, True where attention
    is allowed), `position_ids`, `mm_token_type_ids` (when the processor gives them), the media tensors of the
    prompts (each item once), `logits_to_keep` (1D columns), `chosen_labels` `(pairs, C)` and `rejected_labels`
    `(pairs, R)` (the target tokens at those columns, `-100` elsewhere), `pair_mask` (False for a padding row added
    for `ensure_image`), and `index` / `ref_chosen_logps` / `ref_rejected_logps` when the samples carry them.

    **Padding-free and packed batches** (`padding_free=True`, TRL's name; `any2text.dpo --padding_free` /
    `--packing`): several pairs share a row, `[prompt 1 | chosen 1 | rejected 1 | prompt 2 | ...]`, positions restart
    at each pair and the 4D mask keeps attention inside each pair (and the rejected answer off the chosen one), so
    loss and gradients equal the one-row-per-pair batch's. With `padding_free` the whole batch is one row; with
    `PackedDataset` items (`{"packed": [pair, ...]}`, bins of at most `max_length` tokens, pair lengths from
    `sample_length`) each item is a row, and a pair whose `prompt + chosen + rejected` exceeds `max_length` is never
    split: an error under `truncation="error"`, else dropped and counted. The answers' targets then come as
    `answer_labels` / `answer_slots` `(rows, K)` (slot `2 * pair + side`, side 0 chosen, 1 rejected, -1 none) with
    `logits_to_keep` the union of the rows' answer columns; `pair_mask`, `index` and reference log-probs are per pair.
    """

    def __init__(self, *args, padding_free: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.padding_free = padding_free

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

    def _encode_pair(self, messages: PreferenceMessages, index: int) -> dict[str, Any] | None:
        rejected_messages = [*messages.prompt, *messages.rejected]
        media = self._load_media(list(messages))
        chosen = self._encode(messages, index, media)
        # The media of a pair live in its shared prompt: read (decode, resample) them once for both sides.
        shared = all(
            len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
            for a, b in zip(media_refs(list(messages)), media_refs(rejected_messages), strict=True)
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
        # `max_length` as TRL applies it: to prompt + chosen and to prompt + rejected.
        fitted = [self._fit(side, index) for side in (chosen, rejected)]
        if any(side is None for side in fitted):
            return None
        chosen, rejected = fitted
        completion_labels = [side["labels"][start:] for side in (chosen, rejected)]
        if start >= len(chosen["input_ids"]) or any((c != IGNORE_INDEX).sum() == 0 for c in completion_labels):
            self.num_dropped += 1
            logger.warning(f"Dropped a pair whose answer was cut away entirely; {self.num_dropped} dropped so far.")
            return None
        prompt = {key: value[:start] for key, value in chosen.items() if key not in ("media", "labels")}
        return {
            "prompt": prompt,
            "chosen_ids": chosen["input_ids"][start:],
            "rejected_ids": rejected["input_ids"][start:],
            "chosen_labels": completion_labels[0],
            "rejected_labels": completion_labels[1],
            "media": chosen["media"],
        }

    def sample_length(self, messages: list[dict]) -> int:
        """Tokens of a pair's packed layout, `prompt + chosen + rejected` (media counted once), without loading media.

        Plain conversations get `MultimodalCollator.sample_length`. Packing bins pairs by this length; the row is
        checked again with the real encoding, so a pair is never split and no row exceeds `max_length`.
        """
        if not isinstance(messages, PreferenceMessages):
            return super().sample_length(messages)
        chosen = super().sample_length(list(messages))
        rejected = super().sample_length([*messages.prompt, *messages.rejected])
        return chosen + rejected - self._prompt_length(messages.prompt)

    def _prompt_length(self, prompt: list[dict]) -> int:
        plain = [{**m, "content": [{"type": i["type"]} if i.get("type") in ("image", "audio") else i
                                   for i in m["content"]]} if isinstance(m.get("content"), list) else m
                 for m in prompt]  # fmt: skip
        text = render_jinja_template(
            [plain], chat_template=self.chat_template, add_generation_prompt=True, **self.tokenizer.special_tokens_map
        )[0][0]
        length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        for token, modality in ((self.image_token, "image"), (self.audio_token, "audio")):
            if token is not None and (count := text.count(token)):
                length += count * (self._tokens_per(modality) - 1)
        return length

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

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if samples and all(PACKED_KEY in sample for sample in samples):
            return self._call_packed([list(sample[PACKED_KEY]) for sample in samples])
        if self.padding_free:
            return self._call_packed([list(samples)])
        pairs, extras = self._encode_samples(samples)
        if self.ensure_image and not any("pixel_values" in pair["media"] for pair in pairs):
            pairs.append(self._blank_pair())
        batch = self._layout(pairs)
        self._add_extras(batch, extras, len(pairs))
        return batch

    @staticmethod
    def _add_extras(batch: dict[str, torch.Tensor], extras: list[Mapping[str, Any]], num_pairs: int) -> None:
        for key in ("index", "ref_chosen_logps", "ref_rejected_logps"):
            if extras and all(key in sample for sample in extras):
                values = [sample[key] for sample in extras] + [0] * (num_pairs - len(extras))
                batch[key] = torch.tensor(values, dtype=torch.long if key == "index" else torch.float32)

    def _encode_samples(self, samples: Sequence[Mapping[str, Any]], check_empty: bool = True):
        """Encoded pairs (dropped ones left out) and the samples they came from."""
        pairs, extras = [], []
        for index, sample in enumerate(samples):
            messages = sample.get("messages")
            if not isinstance(messages, PreferenceMessages):
                raise ValueError(
                    f"Sample {index} is not a preference pair (got {type(messages).__name__}); DPO data needs a "
                    f"preference template: {', '.join(f'`{t}`' for t in sorted(PREFERENCE_TEMPLATES))}."
                )
            pair = self._encode_pair(messages, index)
            if pair is not None:
                pairs.append(pair)
                extras.append(sample)
        if check_empty and not pairs:
            raise ValueError(
                "Every pair of a batch was dropped (longer than `max_length`): raise `--max_length` or lower "
                "`--per_device_train_batch_size`."
            )
        return pairs, extras

    # -- padding-free / packed rows -----------------------------------------------------------------------------------

    @staticmethod
    def _pair_length(pair: dict[str, Any]) -> int:
        return len(pair["prompt"]["input_ids"]) + len(pair["chosen_ids"]) + len(pair["rejected_ids"])

    def _fits_packed_row(self, pair: dict[str, Any]) -> bool:
        """A pair is never split across rows: one longer than `max_length` as a whole is an error or a counted drop."""
        length = self._pair_length(pair)
        if self.max_length is None or length <= self.max_length:
            return True
        message = (
            f"A preference pair has {length} tokens (prompt + chosen + rejected, media included), more than "
            f"`max_length={self.max_length}`, and a packed row never splits a pair. Raise `--max_length`, or pass "
            "`--truncation drop` to skip such pairs (counted and logged)."
        )
        if self.truncation == "error":
            raise SampleTooLongError(message)
        self.num_dropped += 1
        logger.warning(f"{message} Dropped; {self.num_dropped} dropped so far.")
        return False

    def _call_packed(self, groups: list[list[Mapping[str, Any]]]) -> dict[str, torch.Tensor]:
        rows, extras = [], []
        for group in groups:
            pairs, samples = self._encode_samples(group, check_empty=False)
            kept = [(pair, sample) for pair, sample in zip(pairs, samples) if self._fits_packed_row(pair)]
            if kept:
                rows.append([pair for pair, _ in kept])
                extras += [sample for _, sample in kept]
        if not rows:
            raise ValueError(
                "Every pair of a batch was dropped (longer than `max_length`): raise `--max_length` or lower "
                "`--per_device_train_batch_size`."
            )
        num_pairs = len(extras)
        if self.ensure_image and not any("pixel_values" in pair["media"] for row in rows for pair in row):
            rows.append([self._blank_pair()])  # a row of its own: it never pushes a packed row past `max_length`
            num_pairs += 1
        batch = self._packed_layout(rows)
        self._add_extras(batch, extras, num_pairs)
        return batch

    def _packed_layout(self, rows: list[list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        lengths = [sum(self._pair_length(pair) for pair in row) for row in rows]
        L = max(lengths)
        n = len(rows)
        input_ids = torch.full((n, L), self.tokenizer.pad_token_id, dtype=torch.long)
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
        pair_index = 0
        for row, pairs in enumerate(rows):
            entries, offset = [], 0
            for pair in pairs:
                p, c, r = len(pair["prompt"]["input_ids"]), len(pair["chosen_ids"]), len(pair["rejected_ids"])
                span = slice(offset, offset + p + c + r)
                input_ids[row, span] = torch.cat(
                    [pair["prompt"]["input_ids"], pair["chosen_ids"], pair["rejected_ids"]]
                )
                position_ids[row, span] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
                segment[row, span] = torch.cat([torch.full((p,), 1), torch.full((c,), 2), torch.full((r,), 3)]).long()
                pair_ids[row, span] = pair_index + 1
                for key, tensor in token_types.items():
                    tensor[row, offset : offset + p] = pair["prompt"].get(key, torch.zeros(p, dtype=torch.long))
                start = offset + p
                for side, labels, first in (
                    (0, pair["chosen_labels"], start),
                    (1, pair["rejected_labels"], start + c),
                ):
                    for k, label in enumerate(labels.tolist()):
                        if label != IGNORE_INDEX:
                            # Token k of an answer is predicted at the column before it; the first token of both
                            # answers from the last prompt column (the rejected answer does not see the chosen one).
                            entries.append((start - 1 if k == 0 else first + k - 1, label, 2 * pair_index + side))
                for key, value in pair["media"].items():
                    media.setdefault(key, []).append(value)
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
        first_slot = {}
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
        all_pairs = [pair for pairs in rows for pair in pairs]
        batch = {
            "input_ids": input_ids,
            "attention_mask": pair_attention_mask(segment, pair_ids),
            "position_ids": position_ids,
            **token_types,
            "logits_to_keep": torch.tensor(columns if columns else [0], dtype=torch.long),
            "answer_labels": answer_labels,
            "answer_slots": answer_slots,
            "pair_mask": torch.tensor([not pair.get("padding", False) for pair in all_pairs]),
        }
        for key in sorted(media):
            batch[key] = torch.cat(media[key])
        return batch

    def _layout(self, pairs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        P = max(len(pair["prompt"]["input_ids"]) for pair in pairs)
        C = max(max(len(pair["chosen_ids"]) for pair in pairs), 1)
        R = max(max(len(pair["rejected_ids"]) for pair in pairs), 1)
        L = P + C + R
        pad_id = self.tokenizer.pad_token_id
        n = len(pairs)
        input_ids = torch.full((n, L), pad_id, dtype=torch.long)
        position_ids = torch.zeros((n, L), dtype=torch.long)
        segment = torch.zeros((n, L), dtype=torch.long)  # 0 padding, 1 prompt, 2 chosen, 3 rejected
        chosen_labels = torch.full((n, C), IGNORE_INDEX, dtype=torch.long)
        rejected_labels = torch.full((n, R), IGNORE_INDEX, dtype=torch.long)
        token_types = {
            key: torch.zeros((n, L), dtype=torch.long)
            for key in ("mm_token_type_ids", "token_type_ids")
            if key in pairs[0]["prompt"]
        }
        for row, pair in enumerate(pairs):
            p, c, r = len(pair["prompt"]["input_ids"]), len(pair["chosen_ids"]), len(pair["rejected_ids"])
            input_ids[row, P - p : P] = pair["prompt"]["input_ids"]
            input_ids[row, P : P + c] = pair["chosen_ids"]
            input_ids[row, P + C : P + C + r] = pair["rejected_ids"]
            position_ids[row, P - p : P] = torch.arange(p)
            position_ids[row, P : P + c] = torch.arange(p, p + c)
            position_ids[row, P + C : P + C + r] = torch.arange(p, p + r)
            segment[row, P - p : P] = 1
            segment[row, P : P + c] = 2
            segment[row, P + C : P + C + r] = 3
            chosen_labels[row, :c] = pair["chosen_labels"]
            rejected_labels[row, :r] = pair["rejected_labels"]
            for key, tensor in token_types.items():
                tensor[row, P - p : P] = pair["prompt"].get(key, torch.zeros(p, dtype=torch.long))
        # Token at column P + j (chosen) is predicted at column P - 1 + j; rejected token j at P + C - 1 + j, except
        # the first, predicted from the last prompt column (the rejected answer does not see the chosen one).
        logits_to_keep = torch.cat(
            [torch.arange(P - 1, P - 1 + C), torch.tensor([P - 1]), torch.arange(P + C, P + C + R - 1)]
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": pair_attention_mask(segment),
            "position_ids": position_ids,
            **token_types,
            "logits_to_keep": logits_to_keep,
            "chosen_labels": chosen_labels,
            "rejected_labels": rejected_labels,
            "pair_mask": torch.tensor([not pair.get("padding", False) for pair in pairs]),
        }
        media_keys = sorted({key for pair in pairs for key in pair["media"]})
        for key in media_keys:
            batch[key] = torch.cat([pair["media"][key] for pair in pairs if key in pair["media"]])
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
    "IndexedDataset",
    "PreferenceCollator",
    "PreferenceDataset",
    "PreferenceMessages",
    "is_preference_template",
    "pair_attention_mask",
    "register_preference_template",
]
