"""The data side of a training stage: datasets from `DataArguments`, the collator, and packing when asked for."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from transformers import TrainingArguments

from ..data.bad_rows import BAD_ROWS_FILE, BadRowLog
from ..data.collator import MultimodalCollator
from ..data.loading import MultimodalDataset
from .arguments import DataArguments
from .throughput import PackedData, prepare_packing


def build_dataset(
    data_args: DataArguments,
    split: Literal["train", "eval"],
    processor: Any,
    seed: int,
    bad_rows: BadRowLog | None = None,
    check_sample=None,
    validate: bool | None = None,
) -> MultimodalDataset | None:
    """The `train` or `eval` dataset `data_args` describes (`None` when none is given).

    `bad_rows` (shared with the collator) records skipped rows; `check_sample` runs on each row as it is read (the
    collator's length check); `validate` (default `--validate_rows`) checks every row now.
    """
    specs = data_args.dataset_specs(split)
    if specs is None:
        return None
    feature_extractor = getattr(processor, "feature_extractor", None)
    return MultimodalDataset(
        specs,
        sampling_rate=getattr(feature_extractor, "sampling_rate", None),
        skip_bad_rows=data_args.skip_bad_rows,
        num_samples=data_args.train_num_samples if split == "train" else None,
        seed=seed,
        validate_rows=data_args.validate_rows if validate is None else validate,
        max_bad_rows=data_args.max_bad_rows,
        bad_rows=bad_rows,
        allow_media_outside_root=data_args.allow_media_outside_root,
        check_sample=check_sample,
    )


def build_training_data(
    data_args: DataArguments,
    training_args: TrainingArguments,
    processor: Any,
    ensure_image: bool = False,
    attn_implementation: str | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[MultimodalCollator, PackedData]:
    """The collator, and the datasets with the collator the Trainer is given: packed ones with `--padding_free` /
    `--packing` (`throughput.prepare_packing`), else the same. The datasets and collator share one bad-row record.

    `ensure_image`: give every batch an image (a stock model under ZeRO-3). `attn_implementation`: the language
    model's, which decides how packed rows are laid out; `model`, to switch its `sdpa` to per-sample attention for
    packed rows (`throughput.prepare_packing`).
    """
    # One record of bad rows for the datasets and the collator: each row counted once, one cap, one file.
    bad_rows = BadRowLog(data_args.max_bad_rows, path=os.path.join(training_args.output_dir, BAD_ROWS_FILE))
    flat = data_args.padding_free or data_args.packing  # the packing wrapper adds the blank image row itself
    collator = MultimodalCollator(
        processor,
        max_length=data_args.max_length,
        truncation=data_args.truncation,
        ensure_image=ensure_image and not flat,
        skip_bad_rows=data_args.skip_bad_rows,
        bad_rows=bad_rows,
        allow_media_outside_root=data_args.allow_media_outside_root,
    )
    # Lengths are known as soon as a row is read: a sample too long under `--truncation error` is a bad row then.
    check = collator.check_sample if data_args.max_length is not None and data_args.truncation == "error" else None
    # Measuring lengths (for grouping or packing: `trainer.sample_lengths`) validates every row in the same pass.
    measured = training_args.train_sampling_strategy == "group_by_length" or data_args.packing
    validate = data_args.validate_rows and not measured
    train_dataset = build_dataset(data_args, "train", processor, training_args.seed, bad_rows, check, validate)
    eval_dataset = build_dataset(data_args, "eval", processor, training_args.seed, bad_rows, check)
    packed = prepare_packing(
        data_args, collator, train_dataset, eval_dataset, ensure_image, attn_implementation, model=model
    )
    return collator, packed


__all__ = ["build_dataset", "build_training_data"]
