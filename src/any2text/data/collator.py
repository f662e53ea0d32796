"""Batch chat samples into model inputs: render the chat template, load media, run the processor, mask labels, pad.

Worked example (a tiny processor; any `LlamaVisionAudioProcessor` or stock `LlavaProcessor` works the same)::

    >>> collator = MultimodalCollator(processor, max_length=2048, truncation="drop")
    >>> batch = collator([
    ...     {"messages": [
    ...         {"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "What?"}]},
    ...         {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ...     ]},
    ...     {"messages": [
    ...         {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ...         {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
    ...     ]},
    ... ])
    >>> sorted(batch)
    ['attention_mask', 'input_ids', 'labels', 'mm_token_type_ids', 'pixel_values']

The first sample renders (Llama-3 chat format) as::

    <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n<image>\\nWhat?<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\nA cat.<|eot_id|>

`<image>` then becomes `image_seq_length` image tokens, and `labels` equals `input_ids` on `A cat.<|eot_id|>` only
(the assistant's text and the token that ends its turn, so the model learns to stop); it is `-100` on the system and
user turns, the headers, every media token and the padding. Every assistant turn of a multi-turn conversation is
labelled. The second sample has no media: samples with any media of the modality table (`any2text.modalities`:
images, audio, videos) or none mix freely in one batch (each medium's processor outputs, `pixel_values`,
`input_features`, `pixel_values_videos`..., hold the media of the samples that have them, in order).

Assistant spans come from the chat template's `{% generation %}` markers when it has them (the default template of
`LlamaVisionAudioProcessor` does); otherwise from rendering the conversation turn by turn, which works for any
template whose rendering of a conversation starts with the rendering of its first turns (Llama-3, ChatML...).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from transformers.utils import logging
from transformers.utils.chat_template_utils import render_jinja_template

from ..modalities import MODALITIES, Modality, media_options
from .bad_rows import BadRowError, BadRowLog, cause_of
from .messages import media_as_types, media_refs
from .truncation import TRUNCATION_MODES, fit_to_max_length

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
# Keys the processor returns per token (padded here) rather than per media item (concatenated here).
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
_DROPPED_KEYS = ("offset_mapping", "text_replacement_offsets")
# Errors that mean "this sample is bad" (as in `loading._BAD_ROW_ERRORS`): named after its row, skippable.
_BAD_SAMPLE_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError)
_NO_SOURCE = "(samples without a `source`)"
# Set (True) on a batch with no sample left in it: the trainer skips that step instead of training on a placeholder.
EMPTY_BATCH_KEY = "empty_batch"


class SampleTooLongError(ValueError):
    """A sample longer than `max_length` under `truncation="error"`."""

    cause = "too_long"


class MultimodalCollator:
    r"""
    Turn samples `{"messages": [...]}` (the output of `MultimodalDataset`, media decoded or as references) into a
    padded batch with `labels`.

    Args:
        processor (`ProcessorMixin`):
            A `LlamaVisionAudioProcessor`, or any processor with a tokenizer and an `image_token` (stock
            `LlavaProcessor`). It takes a medium of the modality table when it has its placeholder (`<name>_token`);
            decoding follows its settings (`feature_extractor.sampling_rate`, `num_frames` / `fps`).
        max_length (`int`, *optional*):
            Longest sequence, in tokens after media expansion. `None` keeps every sample whole.
        truncation (`str`, *optional*, defaults to `"error"`):
            What happens to a sample longer than `max_length`. Media spans are never cut, whatever the mode:
            - `"error"`: raise a `ValueError` naming the sample and the fix (the default: a too-small
              `max_length` is a configuration mistake best found at the first batch, not hidden).
            - `"drop"`: leave the sample out of the batch; it is counted in `num_dropped` and logged.
            - `"text"`: cut text tokens off the end so the sample fits, when every media span lies before the cut;
              otherwise drop it (counted and logged).
        media_root (`str`, *optional*):
            Folder that relative media paths are resolved against, for samples whose media are still references.
        padding_side (`str`, *optional*, defaults to `"right"`):
            Training pads on the right whatever the tokenizer's (generation) setting is.
        pad_to_multiple_of (`int`, *optional*):
            Pad the sequence length to a multiple of this (tensor-core friendly shapes on GPUs).
        ensure_image (`bool`, *optional*, defaults to `False`):
            Give every batch at least one image: a batch without any gets an extra row holding one blank image and
            no labels (its loss and gradients are exactly zero). Under DeepSpeed ZeRO-3 every rank must run the vision
            tower every step; LlamaVisionAudio models do that themselves, a stock `LlavaForConditionalGeneration`
            does not, so `any2text.train` turns this on for stock models under ZeRO-3.
        skip_bad_rows (`bool`, *optional*, defaults to `False`):
            A sample that fails (a media file that cannot be read, a clip the feature extractor refuses, a sample
            over `max_length` under `truncation="error"`) is left out of the batch and recorded once in `bad_rows`,
            instead of stopping with an error. Either way the error names the dataset row (from the sample's
            `source`, which `MultimodalDataset` adds), not the sample's place in the batch.
        bad_rows (`BadRowLog`, *optional*):
            Where skipped samples are recorded (and capped); share the dataset's (`dataset.bad_rows`) so one count
            and one `bad_rows.jsonl` cover both. A fresh log with the default cap when not given.
        allow_media_outside_root (`bool`, *optional*, defaults to `False`):
            Read media paths that lead outside `media_root` (refused otherwise).
        return_sources (`bool`, *optional*, defaults to `False`):
            Add `"sources"` to the batch: the `source` of each sample kept, in row order (`None` for samples without
            one). A training loop that reports a bad step by row pops it before calling the model.
        padding_free (`bool`, *optional*, defaults to `False`):
            TRL's name: the samples of a batch become ONE row without padding, `position_ids` restarting per sample
            (see `any2text.data.packing`). `PackedDataset` items (`{"packed": [sample, ...]}`) always become one row
            each, whatever this says.
        single_row (`bool`, *optional*, defaults to `False`):
            Join the rows of a packed batch into one row (flash-attention's variable-length path reads packed
            `position_ids` only in a batch of one row; see `packing.PackedCollator`).

    A batch where every sample was dropped (or skipped as a bad row) is `empty_batch()`: one placeholder row without
    labels marked `EMPTY_BATCH_KEY`, which `MultimodalTrainer` skips (counted) instead of training on it.
    `sample_length(messages)` gives a sample's exact length without loading its media (the dataset's length index
    and `check_sample` use it); `fit_length` is the one rule for a sample longer than `max_length`.
    """

    def __init__(
        self,
        processor: Any,
        max_length: int | None = None,
        truncation: Literal["error", "drop", "text"] = "error",
        media_root: str | None = None,
        padding_side: Literal["right", "left"] = "right",
        pad_to_multiple_of: int | None = None,
        ensure_image: bool = False,
        skip_bad_rows: bool = False,
        bad_rows: BadRowLog | None = None,
        allow_media_outside_root: bool = False,
        return_sources: bool = False,
        padding_free: bool = False,
        single_row: bool = False,
    ):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"`truncation` must be one of {TRUNCATION_MODES}, got `{truncation}`.")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"`max_length` must be positive, got {max_length}.")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "The processor's tokenizer has no pad token: set one (`tokenizer.pad_token = '<pad>'` after adding it "
                "as a special token, as the builders do) and save the processor again."
            )
        self.chat_template = processor.chat_template or self.tokenizer.chat_template
        if isinstance(self.chat_template, dict):
            self.chat_template = self.chat_template.get("default")
        if not self.chat_template:
            raise ValueError("The processor has no chat template; set `processor.chat_template` and save it again.")
        self.max_length = max_length
        self.truncation = truncation
        self.media_root = media_root
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ensure_image = ensure_image
        self.skip_bad_rows = skip_bad_rows
        self.bad_rows = bad_rows if bad_rows is not None else BadRowLog()
        self.allow_media_outside_root = allow_media_outside_root
        self.return_sources = return_sources
        self.padding_free = padding_free
        self.single_row = single_row
        self.image_token = getattr(processor, "image_token", None)  # `ensure_image`'s blank image
        # What each medium's decoder needs from the processor (`sampling_rate`, `num_frames` / `fps`).
        self.media_options = media_options(processor)
        self.media_token_ids = {
            token_id
            for modality in MODALITIES.values()
            if (token := modality.processor_token(processor)) is not None
            and (token_id := self.tokenizer.convert_tokens_to_ids(token)) is not None
        }
        # Built once: the masks below run for every sample.
        self._media_ids = torch.tensor(sorted(self.media_token_ids), dtype=torch.long)
        self.num_dropped = 0
        self._tokens_per_item: dict[str, int] = {}

    # -----------------------------------------------------------------------------------------------------------------
    # Rendering

    def _render(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The conversation as text (media as placeholders) and the character spans of the assistant turns."""
        if not any(message.get("role") == "assistant" for message in messages):
            raise ValueError("A training sample needs at least one assistant turn; it has nothing to learn from.")
        plain = media_as_types(messages)
        special = self.tokenizer.special_tokens_map
        rendered, indices = render_jinja_template(
            [plain], chat_template=self.chat_template, return_assistant_tokens_mask=True, **special
        )
        text, spans = rendered[0], [tuple(span) for span in indices[0]]
        if spans:
            return text, spans
        # No `{% generation %}` markers: an assistant turn is what rendering it adds after the generation prompt.
        for index, message in enumerate(plain):
            if message["role"] != "assistant":
                continue
            before = render_jinja_template(
                [plain[:index]], chat_template=self.chat_template, add_generation_prompt=True, **special
            )[0][0]
            after = render_jinja_template([plain[: index + 1]], chat_template=self.chat_template, **special)[0][0]
            if not (after.startswith(before) and text.startswith(after)):
                raise ValueError(
                    "Cannot find the assistant turns in the chat template's output: the template has no "
                    "`{% generation %}` markers and does not render conversations turn by turn. Add "
                    "`{% generation %}...{% endgeneration %}` around assistant content in `processor.chat_template`."
                )
            spans.append((len(before), len(after)))
        return text, spans

    def _check_placeholders(self, text: str, media: Mapping[str, list], index: int) -> None:
        for name, items in media.items():
            if not items:
                continue
            token = MODALITIES[name].processor_token(self.processor)
            if token is None:
                raise ValueError(
                    f"Sample {index} has {len(items)} {name} item(s) but the processor "
                    f"(`{type(self.processor).__name__}`) takes no {name}. Use a model and processor with a {name} "
                    f"encoder, or leave {name} datasets out."
                )
            found = text.count(token)
            if found != len(items):
                raise ValueError(
                    f"Sample {index} has {len(items)} {name} item(s) but its chat template renders {found} `{token}` "
                    f"placeholder(s). The processor's chat template must write `{token}` for each `{{'type': "
                    f"'{name}'}}` content item (LlamaVisionAudioProcessor's default template does); set "
                    "`processor.chat_template` accordingly."
                )

    # -----------------------------------------------------------------------------------------------------------------
    # Media

    def _load_media(self, messages: list[dict]) -> dict[str, list]:
        """Modality name -> the sample's decoded items, in order (by the table's decoders, with the processor's
        settings). A medium the processor does not take stays undecoded: `_check_placeholders` names it."""
        media = {}
        for name, refs in media_refs(messages).items():
            modality = MODALITIES[name]
            if refs and modality.processor_token(self.processor) is not None:
                refs = [self._decode(modality, ref) for ref in refs]
            media[name] = refs
        return media

    def _decode(self, modality: Modality, ref: Any) -> Any:
        return modality.decoder(
            ref, self.media_root, allow_outside_root=self.allow_media_outside_root, **self.media_options
        )

    # -----------------------------------------------------------------------------------------------------------------
    # One sample

    def _process(self, text: str, media: Mapping[str, list]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "text": [text],
            "return_offsets_mapping": True,
            # Stock processors expand placeholders in the text; this says where, so offsets can be mapped back.
            "return_text_replacement_offsets": True,
            # The chat template writes the BOS token itself.
            "add_special_tokens": False,
            "return_tensors": "pt",
        }
        for name, items in media.items():
            if not items:
                continue
            modality = MODALITIES[name]
            if modality.check is not None:
                modality.check(self.processor, items)
            kwargs[modality.processor_kwarg] = items
            kwargs.update({option: self.media_options[option] for option in modality.processor_options})
            kwargs.update(modality.processor_kwargs)
        return dict(self.processor(**kwargs))

    def _encode(self, messages: list[dict], index: int, media: Mapping[str, list] | None = None) -> dict[str, Any]:
        """One sample's tokens, labels and processed media; `media` (modality name -> items) when already loaded."""
        text, spans = self._render(messages)
        media = self._load_media(messages) if media is None else media
        self._check_placeholders(text, media, index)
        encoded = self._process(text, media)
        input_ids = encoded["input_ids"][0]
        offsets = encoded.pop("offset_mapping")[0].tolist()
        replacements = encoded.pop("text_replacement_offsets", None)
        spans = _shift_spans(spans, replacements[0] if replacements else [])
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for pos, (start, end) in enumerate(offsets):
            if start < end and any(start < span_end and end > span_start for span_start, span_end in spans):
                labels[pos] = input_ids[pos]
        sample = {key: value[0] for key, value in encoded.items() if key in _PER_TOKEN_KEYS}
        labels[self._media_mask(sample)] = IGNORE_INDEX
        sample["labels"] = labels
        sample["media"] = {key: value for key, value in encoded.items() if key not in _PER_TOKEN_KEYS}
        return sample

    def _media_mask(self, row: dict[str, Any]) -> torch.Tensor:
        """Media positions of one row (`input_ids` and, when the processor gives them, `mm_token_type_ids`)."""
        mask = torch.isin(row["input_ids"], self._media_ids.to(row["input_ids"].dtype))
        if "mm_token_type_ids" in row:
            mask |= row["mm_token_type_ids"] != 0
        return mask

    def _fit(self, sample: dict[str, Any], index: int) -> dict[str, Any] | None:
        """Apply `max_length`: the sample unchanged, cut (text only), or `None` (dropped)."""
        keep = self.fit_length(self._media_mask(sample).tolist())
        if keep == len(sample["input_ids"]):
            return sample
        reason = "a media span would be cut" if self.truncation == "text" else "`truncation='drop'`"
        if keep is not None:
            cut = {key: value[:keep] if key != "media" else value for key, value in sample.items()}
            if (cut["labels"] != IGNORE_INDEX).any():
                return cut
            # Every labelled token lies past the cut: such a sample would train at loss 0.
            reason = "cutting the text would leave no labelled token"
        return self._drop(f"a sample of {len(sample['input_ids'])} tokens", reason)

    def _drop(self, what: str, reason: str) -> None:
        self.num_dropped += 1
        logger.warning(
            f"Dropped {what} (> `max_length={self.max_length}`; {reason}); {self.num_dropped} dropped so far."
        )
        return None

    def fit_length(self, media_mask: list[bool], name: str = "The sample") -> int | None:
        """THE rule for a sample (or a preference pair's row) against `max_length`, for every stage and layout.

        Returns how many leading tokens to keep: all of them when it fits, fewer under `truncation="text"` (media
        spans never cut), `None` to drop it (`"drop"`, or `"text"` when the cut would go through a media span).
        `media_mask` is per token (True on media tokens); only its length matters unless a cut is needed.
        The rule and its message are `any2text.data.truncation.fit_to_max_length`.

        Raises:
            SampleTooLongError: (a `ValueError`, a bad row: named, skippable) over `max_length` under `"error"`.
        """
        if self.max_length is None:
            return len(media_mask)
        try:
            return fit_to_max_length(media_mask, self.max_length, self.truncation, name=name)
        except ValueError as error:
            raise SampleTooLongError(str(error)) from None

    def check_sample(self, messages: list[dict]) -> int:
        """The sample's exact length (see `sample_length`), checked against `max_length` under `truncation="error"`.

        Cheap (no media are loaded), so it runs as the row is read (`MultimodalDataset(check_sample=...)`): a
        sample that can never be used is a bad row named after its dataset row, skippable, found by validation.

        Raises:
            SampleTooLongError: (a `ValueError`) the sample is longer than `max_length` and `truncation="error"`.
        """
        length = self.sample_length(messages)
        if self.max_length is not None and self.truncation == "error" and length > self.max_length:
            self.fit_length([False] * length, name=self._length_name)  # raises, the message every over-long one gets
        return length

    _length_name = "The sample"

    # -----------------------------------------------------------------------------------------------------------------
    # The batch

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The batch: one row per sample (padded), one row per `PackedDataset` item, or one row (`padding_free`)."""
        from .packing import PACKED_KEY

        flat = self.padding_free or bool(samples and all(PACKED_KEY in sample for sample in samples))
        if samples and all(PACKED_KEY in sample for sample in samples):
            groups = [list(sample[PACKED_KEY]) for sample in samples]
        else:
            groups = [list(samples)]
        rows, kept = [], []
        for group in groups:
            encoded, kept_samples = self._encode_samples(group)
            if encoded:
                rows.append(encoded)
                kept += kept_samples
        if not rows:
            return self.empty_batch()
        return self._finish(self._layout(rows, flat), kept)

    def _finish(self, batch: dict[str, Any], kept: list[Mapping[str, Any]]) -> dict[str, Any]:
        """What the kept samples add beside their tokens: their `sources` when asked for."""
        if self.return_sources:
            batch["sources"] = [sample.get("source") for sample in kept]
        return batch

    def _encode_samples(self, samples: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[Mapping[str, Any]]]:
        """Encoded samples (fitted to `max_length`; dropped and skipped ones left out) and the samples they came from.

        A sample that fails is a bad row named after its dataset row: an error, or with `skip_bad_rows` recorded in
        `bad_rows` (counted once, capped by `max_bad_rows`) and left out.
        """
        encoded, kept = [], []
        for index, sample in enumerate(samples):
            self._check_sample_type(sample, index)
            try:
                item = self._encode_item(sample["messages"], index)
            except _BAD_SAMPLE_ERRORS as error:
                bad = self._bad_sample(sample, index, error)
                if not self.skip_bad_rows:
                    raise bad from error
                self.bad_rows.record(bad)
                continue
            if item is not None:
                encoded.append(item)
                kept.append(sample)
        return encoded, kept

    def _check_sample_type(self, sample: Mapping[str, Any], index: int) -> None:
        if "messages" not in sample:
            raise ValueError(
                f"Sample {index} has keys {sorted(sample)}; expected `messages` (what `MultimodalDataset` "
                "yields). With the Trainer, set `remove_unused_columns=False` so `messages` reaches the collator."
            )

    def _encode_item(self, messages: list[dict], index: int) -> dict[str, Any] | None:
        """One sample encoded and fitted to `max_length` (`None`: dropped)."""
        return self._fit(self._encode(messages, index), index)

    def _layout(self, rows: list[list[dict[str, Any]]], flat: bool) -> dict[str, Any]:
        """Padded rows, one per sample; or (`flat`) each group of samples one padding-free row."""
        from .packing import concat_rows, flatten_padded_batch, stack_rows

        if not flat:
            (encoded,) = rows
            if self.ensure_image and not any("pixel_values" in sample["media"] for sample in encoded):
                encoded = [*encoded, self._blank_image_sample()]
            return self._pad(encoded)
        flat_rows = [flatten_padded_batch(self._pad(encoded)) for encoded in rows]
        if self.ensure_image and not any("pixel_values" in row for row in flat_rows):
            # A row of its own: a blank image inside a packed row could push it over `max_length`.
            flat_rows.append(flatten_padded_batch(self._pad([self._blank_image_sample()])))
        if self.single_row and len(flat_rows) > 1:
            flat_rows = [concat_rows(flat_rows)]
        return stack_rows(flat_rows, self.tokenizer.pad_token_id)

    def empty_batch(self) -> dict[str, Any]:
        """What a batch whose every sample was dropped or skipped becomes, marked `EMPTY_BATCH_KEY: True`.

        `MultimodalTrainer` skips the step, counted. Under DeepSpeed or several processes it instead runs the stage's
        own loss on this placeholder times zero, so every rank issues the same collectives (ZeRO-3 gathers, DDP's
        all-reduce, metric gathers) as the others: hence one placeholder row with one labelled token (a finite loss),
        and a blank image too under `ensure_image`.
        """
        logger.warning("Every sample of a batch was dropped or skipped; the step is skipped (counted).")
        token = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.pad_token_id
        samples = [{
            "input_ids": torch.tensor([token, token]),
            "attention_mask": torch.tensor([1, 1]),
            "labels": torch.tensor([IGNORE_INDEX, token]),
            "media": {},
        }]  # fmt: skip
        if self.ensure_image:
            samples.insert(0, self._blank_image_sample())  # first: its keys (`mm_token_type_ids`) set the batch's
        batch = self._pad(samples)
        batch[EMPTY_BATCH_KEY] = True
        return batch

    def _bad_sample(self, sample: Mapping[str, Any], index: int, error: BaseException) -> BadRowError:
        """`error` as a `BadRowError` naming the sample's dataset row (its `source`), or its place in the batch."""
        source = sample.get("source") or {}
        fix = (
            "Fix or drop the row, or pass `skip_bad_rows=True` to skip bad rows (each counted once, logged, and "
            "capped by `max_bad_rows`)."
        )
        if source.get("dataset") is None:
            return BadRowError(
                f"Sample {index} of the batch cannot be used: {error} {fix}", _NO_SOURCE, None, cause=cause_of(error)
            )
        named = f"id `{source['id']}`, " if source.get("id") is not None else ""
        return BadRowError(
            f"Row {source['index']} of dataset {source['dataset']} ({named}sample {index} of the batch) cannot be "
            f"used: {error} {fix}",
            dataset=source["dataset"],
            index=source.get("index"),
            row_id=source.get("id"),
            cause=cause_of(error),
        )

    def _blank_image_sample(self) -> dict[str, Any]:
        """A row of one blank image and nothing to learn: it runs the vision tower without touching the loss."""
        if self.image_token is None:
            raise ValueError("`ensure_image=True` needs a processor with an image token.")
        image = MODALITIES["image"]
        encoded = self._process(self.image_token, {image.name: [image.blank(self.media_options)]})
        sample = {key: value[0] for key, value in encoded.items() if key in _PER_TOKEN_KEYS}
        sample["labels"] = torch.full_like(sample["input_ids"], IGNORE_INDEX)
        sample["media"] = {
            key: value for key, value in encoded.items() if key not in _PER_TOKEN_KEYS and key not in _DROPPED_KEYS
        }
        return sample

    def _pad(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        target = max(len(sample["input_ids"]) for sample in samples)
        if self.pad_to_multiple_of:
            target = -(-target // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fill = {"input_ids": self.tokenizer.pad_token_id, "labels": IGNORE_INDEX}
        keys = [key for key in samples[0] if key != "media"]
        batch: dict[str, torch.Tensor] = {}
        for key in keys:
            rows = []
            for sample in samples:
                # An all-dropped placeholder row may lack optional per-token keys (`mm_token_type_ids`).
                row = sample.get(key, torch.zeros_like(sample["input_ids"]))
                pad = torch.full((target - len(row),), fill.get(key, 0), dtype=row.dtype)
                rows.append(torch.cat([row, pad] if self.padding_side == "right" else [pad, row]))
            batch[key] = torch.stack(rows)
        media_keys = {key for sample in samples for key in sample["media"]}
        for key in sorted(media_keys):
            batch[key] = concat_media([sample["media"][key] for sample in samples if key in sample["media"]])
        return batch

    # -----------------------------------------------------------------------------------------------------------------
    # Lengths without media

    def sample_length(self, messages: list[dict]) -> int:
        """Exact token count of a sample after media expansion, computed without decoding any media."""
        text, _ = self._render(messages)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + self._media_length(messages)

    def _media_length(self, messages: list[dict]) -> int:
        """Tokens the media of `messages` add beyond their one placeholder token each, without decoding media: an
        item becomes `units` (video: frames, from the container's metadata at most) times the tokens of a unit."""
        extra = 0
        for name, refs in media_refs(messages).items():
            modality = MODALITIES[name]
            if not refs or modality.processor_token(self.processor) is None:
                continue  # an error when the sample is encoded
            per_unit = self._tokens_per(modality)
            for ref in refs:
                extra += self._units(modality, ref) * per_unit - 1
        return extra

    def _units(self, modality: Modality, ref: Any) -> int:
        if modality.units is None:
            return 1
        return modality.units(ref, self.media_root, self.allow_media_outside_root, **self.media_options)

    def _tokens_per(self, modality: Modality) -> int:
        """Tokens one unit of a medium becomes, measured once by running the processor on a blank unit."""
        if modality.name not in self._tokens_per_item:
            blank = modality.blank(self.media_options)
            encoded = self._process(modality.processor_token(self.processor), {modality.name: [blank]})
            row = {key: value[0] for key, value in encoded.items() if key in _PER_TOKEN_KEYS}
            self._tokens_per_item[modality.name] = int(self._media_mask(row).sum())
        return self._tokens_per_item[modality.name]


def concat_media(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """One media tensor of the samples' items, in order (concatenated along dim 0).

    Videos come from the processor as one row per video, `(videos, T, C, H, W)`, when a sample's videos have the same
    frame count `T` (else as frames, `(total_frames, C, H, W)`); items whose layouts differ (other `T`, or frames) are
    joined as frames. The model reads both layouts.
    """
    values = list(values)
    if len({tuple(value.shape[1:]) for value in values}) > 1:
        values = [value.flatten(0, 1) if value.ndim == 5 else value for value in values]
    return torch.cat(values)


def _shift_spans(spans: list[tuple[int, int]], replacements: list[dict]) -> list[tuple[int, int]]:
    """Map character spans of the rendered text to the text a stock processor tokenized after expanding placeholders."""
    if not replacements:
        return spans
    ends = [r["span"][1] for r in replacements]
    # `span` is in the rendered text, `new_span` in the expanded one, so each difference of ends is cumulative.
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    return [tuple(char + gained[bisect.bisect_right(ends, char)] for char in span) for span in spans]


__all__ = ["EMPTY_BATCH_KEY", "IGNORE_INDEX", "MultimodalCollator", "SampleTooLongError", "concat_media"]
