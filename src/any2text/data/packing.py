"""Padding-free and packed multimodal batches, under TRL's names (`padding_free`, `packing`, `packing_strategy`).

A padded batch spends compute on pad tokens; with LLaVA-like length spread that is a large share of every batch.
Here the samples of a row are concatenated instead, with `position_ids` restarting at 0 for each sample and no
`attention_mask`. transformers (`masking_utils.find_packed_sequence_indices`) reads the restarts as sample boundaries:
SDPA / eager attention get a block-diagonal causal mask, flash-attention its variable-length kernel. So attention
never crosses samples and the loss and gradients equal the padded batch's (`tests/test_packing.py`).

- **Padding-free** (`PackedCollator(collator)`): the samples of a batch, in order, become ONE row.
- **Packing** (`PackedDataset` + `PackedCollator(collator, packing=True)`): samples are bin-packed, best-fit
  decreasing on their exact lengths (media tokens counted, without loading media), into bins of at most
  `max_length` tokens; a dataset item is a bin and a batch holds `per_device_train_batch_size` bins, one row each
  (joined into one row without padding under flash-attention or `any2text_varlen_sdpa`, see `single_row`). A sample,
  and its media, is never split.

Worked example::

    >>> collator = MultimodalCollator(processor, max_length=2048)
    >>> lengths = [collator.sample_length(dataset.messages(i, decode_media=False)) for i in range(len(dataset))]
    >>> packed = PackedDataset(dataset, lengths, max_length=2048)
    >>> batch = PackedCollator(collator, packing=True)([packed[0], packed[1]])
    >>> sorted(batch)  # no attention_mask: `position_ids` carry the sample boundaries
    ['input_ids', 'labels', 'mm_token_type_ids', 'pixel_values', 'position_ids', 'use_cache']

Each sample's first label is `-100`, so no token is ever predicted from the previous sample's last one (the model's
shifted loss needs nothing else). `use_cache=False` rides in the batch: a model that builds a KV cache in training
(stock Llama does when `config.use_cache` is set) would otherwise make transformers skip packed-sequence detection.
"""

from __future__ import annotations

import bisect
import copy
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .collator import IGNORE_INDEX, MultimodalCollator, concat_media

logger = logging.get_logger(__name__)

PACKING_STRATEGIES = ("bfd",)
# Per-token keys of the collator's padded output; every other tensor is per media item.
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")
PACKED_KEY = "packed"
VARLEN_SDPA = "any2text_varlen_sdpa"


def bfd_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins whose lengths sum to at most `capacity`.

    Longest first, each into the fullest bin that still has room for it (a new bin when none has). Deterministic:
    the same lengths always give the same bins, which is what makes resuming a packed run exact. Runs in
    O(n log n) plus O(n * distinct free capacities) list moves, seconds for LLaVA-Instruct's 665K samples.

    Raises:
        ValueError: a length is larger than `capacity` (a sample is never split).
    """
    if capacity <= 0:
        raise ValueError(f"Packing needs a positive `max_length`, got {capacity}.")
    too_long = [i for i, length in enumerate(lengths) if length > capacity]
    if too_long:
        raise ValueError(
            f"Sample {too_long[0]} has {lengths[too_long[0]]} tokens, more than `max_length={capacity}` "
            f"({len(too_long)} such samples): packing never splits a sample. Raise `--max_length`, or pass "
            "`--truncation drop` / `--truncation text`."
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free_capacities: list[int] = []  # sorted distinct free capacities that some bin has
    bins_with_free: dict[int, list[int]] = {}  # free capacity -> bins with exactly that much room
    for index in order:
        length = lengths[index]
        slot = bisect.bisect_left(free_capacities, length)
        if slot < len(free_capacities):
            free = free_capacities[slot]
            bin_id = bins_with_free[free].pop()
            if not bins_with_free[free]:
                del bins_with_free[free]
                free_capacities.pop(slot)
        else:
            free, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(index)
        free -= length
        if free not in bins_with_free:
            bins_with_free[free] = []
            bisect.insort(free_capacities, free)
        bins_with_free[free].append(bin_id)
    return bins


def sample_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """`(start, end)` of each sample in each row of packed `position_ids` (a sample starts where positions restart)."""
    restarts = torch.diff(position_ids, dim=-1) != 1
    bounds = []
    for row in restarts:
        starts = [0, *(torch.nonzero(row).flatten() + 1).tolist()]
        bounds.append(list(zip(starts, [*starts[1:], position_ids.shape[-1]], strict=True)))
    return bounds


# The bounds of the last packed `position_ids` seen, with its version: every decoder layer of a forward gets the same
# tensor, so its samples are found once per forward (on a GPU, `.tolist()` is a device sync), not once per layer.
_last_bounds: tuple[weakref.ref, int, list[list[tuple[int, int]]]] | None = None


def _bounds_once(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    global _last_bounds
    if _last_bounds is not None and _last_bounds[0]() is position_ids and _last_bounds[1] == position_ids._version:
        return _last_bounds[2]
    bounds = sample_bounds(position_ids)
    _last_bounds = (weakref.ref(position_ids), position_ids._version, bounds)
    return bounds


def varlen_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA over each packed sample on its own (causal), instead of over the whole row under a block-diagonal mask.

    With packed `position_ids`, stock `sdpa` gets a dense `(row, row)` mask: its cost is the squared ROW length, and
    CPU kernels (and SDPA's masked paths on GPU) do not skip the masked blocks, so one padding-free row of 8 samples
    pays several times the attention of the padded batch. Per sample, causal, the cost is the sum of the squared
    sample lengths, below the padded batch's. Same math as the masked row, so losses and gradients match
    (`tests/test_packing.py`). Anything else (a 4D mask, a KV cache, one sample per row, bidirectional layers) goes
    to stock `sdpa` unchanged. Registered as `any2text_varlen_sdpa` (see `use_varlen_sdpa`).
    """
    position_ids = kwargs.get("position_ids")
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if (
        attention_mask is not None
        or position_ids is None
        or query.shape[2] != key.shape[2]
        or query.shape[2] != position_ids.shape[-1]
        or not getattr(module, "is_causal", True)
    ):
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError(
            f"`{VARLEN_SDPA}` computes full causal attention per sample; this layer asks for a sliding window or a "
            "logit softcap. Pass `--attn_implementation eager` (or `flash_attention_2` on GPU) for this model."
        )
    bounds = _bounds_once(position_ids if position_ids.dim() == 2 else position_ids.view(1, -1))
    if len(bounds) != query.shape[0]:  # one row of positions for the whole batch
        bounds = bounds * query.shape[0]
    if all(len(row) == 1 for row in bounds):
        return sdpa(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    rows = []
    # `split` (not slicing): its backward is one concatenation, where each slice's would be a zero-filled full row.
    for q, k, v, row in zip(query.unbind(0), key.unbind(0), value.unbind(0), bounds, strict=True):
        sizes = [end - start for start, end in row]
        parts = [
            torch.nn.functional.scaled_dot_product_attention(
                q_i[None], k_i[None], v_i[None], dropout_p=dropout, scale=scaling, is_causal=True
            )
            for q_i, k_i, v_i in zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1), strict=True)
        ]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _varlen_sdpa_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """No mask unless there is padding: `varlen_sdpa_attention_forward` finds sample bounds in `position_ids`."""
    if attention_mask is None:
        return None
    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention_forward)
AttentionMaskInterface.register(VARLEN_SDPA, _varlen_sdpa_mask)


def use_varlen_sdpa(language_model: torch.nn.Module) -> bool:
    """Switch a language model that runs `sdpa` to `any2text_varlen_sdpa` for packed rows; True when switched.

    Only `sdpa` is switched: flash-attention has its own variable-length kernel, eager / flex are the user's choice.
    Models with sliding-window layers keep `sdpa` (the per-sample path computes full causal attention).
    """
    config = language_model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return False
    language_model.set_attn_implementation(VARLEN_SDPA)
    return True


class PackedDataset(torch.utils.data.Dataset):
    """A dataset whose items are bins of samples of `dataset`, packed best-fit decreasing into `max_length` tokens.

    Bins are fixed once, from exact sample lengths (`trainer.sample_lengths`), so the stock samplers (random,
    distributed, length-grouped through `lengths`) and the Trainer's resume work on bins unchanged. Multi-dataset
    mixing and weights are those of `dataset` (packing runs over its mixed index). Samples longer than `max_length`
    count as `max_length` long: the collator then cuts them (`truncation="text"`) or drops them (`"drop"`);
    with `truncation="error"` check lengths first (`any2text.train` does).

    Items are `{"packed": [sample, ...]}`; media are decoded when an item is read, i.e. in DataLoader workers.
    """

    def __init__(
        self, dataset: torch.utils.data.Dataset, lengths: Sequence[int], max_length: int, strategy: str = "bfd"
    ):
        if strategy not in PACKING_STRATEGIES:
            raise ValueError(
                f"`packing_strategy` must be one of {PACKING_STRATEGIES}, got `{strategy}`. (TRL's `wrapped` cuts "
                "samples at row ends, which would split an image or audio span.)"
            )
        if len(lengths) != len(dataset):
            raise ValueError(f"`lengths` has {len(lengths)} entries for a dataset of {len(dataset)} samples.")
        self.dataset = dataset
        self.max_length = max_length
        fitted = [min(int(length), max_length) for length in lengths]
        self.bins = bfd_bins(fitted, max_length)
        self.lengths = [sum(fitted[i] for i in bin_) for bin_ in self.bins]
        total = sum(fitted)
        logger.info(
            f"Packed {len(dataset)} samples into {len(self.bins)} rows of at most {max_length} tokens "
            f"({total / max(len(self.bins) * max_length, 1):.1%} filled)."
        )

    @property
    def samples_per_item(self) -> float:
        return len(self.dataset) / max(len(self.bins), 1)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> dict[str, list[Any]]:
        return {PACKED_KEY: [self.dataset[i] for i in self.bins[index]]}

    def log_skip_summary(self) -> None:
        if hasattr(self.dataset, "log_skip_summary"):
            self.dataset.log_skip_summary()


class PackedCollator:
    r"""
    `collator` with its batches padding-free (one row) or packed (one row per `PackedDataset` bin).

    The rows are laid out by the collator itself (`MultimodalCollator(padding_free=...)`: SFT samples and DPO pairs
    alike); this class only holds the switches, for code that builds them apart from the collator.

    Args:
        collator (`MultimodalCollator`):
            Renders, loads media, runs the processor and masks labels, exactly as for padded batches (its
            `max_length` / `truncation` apply per sample).
        packing (`bool`, *optional*, defaults to `False`):
            `False`: samples in, the whole batch becomes one row. `True`: `PackedDataset` items in, one row per bin.
        ensure_image (`bool`, *optional*, defaults to `False`):
            A batch without any image gets an extra row with one blank image and no labels (stock Llava under
            ZeRO-3 must run its vision tower every step; see `MultimodalCollator`).
        single_row (`bool`, *optional*, defaults to `False`):
            Put every row of a packed batch into ONE row, with no pad tail. Needed for flash-attention, whose
            variable-length path (transformers' `_is_packed_sequence`) reads `position_ids` only for a batch of one
            row; with several rows it would attend across samples. Also used with `any2text_varlen_sdpa` (attention
            per sample: a longer row costs nothing, and the shorter rows' padding is gone). Stock SDPA / eager keep
            several rows: their dense block-diagonal mask is quadratic in the row length.

    Rows are right-padded to the longest row; pad positions form one more "sample" of their own, with no labels.
    """

    def __init__(
        self, collator: MultimodalCollator, packing: bool = False, ensure_image: bool = False, single_row: bool = False
    ):
        self.collator = copy.copy(collator)
        self.collator.padding_free = True
        self.collator.ensure_image = ensure_image or collator.ensure_image
        self.collator.single_row = single_row
        self.packing = packing

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if self.packing and any(PACKED_KEY not in feature for feature in features):
            raise ValueError(
                "`PackedCollator(packing=True)` takes `PackedDataset` items (`{'packed': [...]}`); wrap the "
                "dataset in `PackedDataset`, or use `packing=False` for padding-free batches of plain samples."
            )
        return self.collator(features)


def flatten_padded_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A padded batch (`attention_mask` marking real tokens) as one padding-free row of 1-D per-token tensors.

    `position_ids` restart at 0 for each sample and each sample's first label becomes `-100`; per-media tensors
    (`pixel_values`, `input_features`, `is_longer`...) stay as they are, already in the order of their tokens.
    """
    keep = batch["attention_mask"].bool()
    lengths = keep.sum(-1)
    row = {key: batch[key][keep] for key in _PER_TOKEN_KEYS if key in batch and key != "attention_mask"}
    row["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths])
    starts = torch.cumsum(lengths, 0) - lengths
    row["labels"] = row["labels"].clone()
    row["labels"][starts[lengths > 0]] = IGNORE_INDEX
    row.update({key: value for key, value in batch.items() if key not in _PER_TOKEN_KEYS})
    return row


def concat_rows(rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Padding-free rows joined into one (positions keep restarting per sample; media stay in token order)."""
    keys = {key for row in rows for key in row}
    joined = {}
    for key in sorted(keys):
        if key in (*_PER_TOKEN_KEYS, "position_ids"):
            joined[key] = torch.cat([row.get(key, torch.zeros_like(row["input_ids"])) for row in rows])
        else:
            joined[key] = concat_media([row[key] for row in rows if key in row])
    return joined


def stack_rows(rows: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad padding-free rows to one `(rows, length)` batch; media tensors are concatenated in row order."""
    target = max(len(row["input_ids"]) for row in rows)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    token_keys = [key for key in (*_PER_TOKEN_KEYS, "position_ids") if key in rows[0]]
    batch: dict[str, Any] = {}
    for key in token_keys:
        padded = []
        for row in rows:
            value = row.get(key, torch.zeros_like(row["input_ids"]))
            pad = target - len(value)
            if key == "position_ids":
                # The pad tail is a sequence of its own (positions restart), so nothing real attends to it.
                tail = torch.arange(pad, dtype=value.dtype)
            else:
                tail = torch.full((pad,), fill.get(key, 0), dtype=value.dtype)
            padded.append(torch.cat([value, tail]))
        batch[key] = torch.stack(padded)
    media_keys = sorted({key for row in rows for key in row if key not in token_keys})
    for key in media_keys:
        batch[key] = concat_media([row[key] for row in rows if key in row])
    batch["use_cache"] = False
    return batch


__all__ = [
    "PACKING_STRATEGIES",
    "PackedCollator",
    "PackedDataset",
    "VARLEN_SDPA",
    "bfd_bins",
    "concat_rows",
    "flatten_padded_batch",
    "sample_bounds",
    "stack_rows",
    "use_varlen_sdpa",
    "varlen_sdpa_attention_forward",
]
