"""Non-finite losses, gradients and weights: find them, name the rows of the batch, and never save them.

A NaN in one sample (a corrupt clip, a diverging step) spreads through the gradients into every trained weight within
one optimizer step; the stock `Trainer` keeps going (`logging_nan_inf_filter` only hides NaN losses from the *logged*
average) and saves the poisoned model. `MultimodalTrainer` uses the pieces here to stop at the first non-finite loss
or gradient with an error naming the step and the rows of its batch (or, with `--skip_nonfinite_steps True`, to skip
that optimizer update and count it), and to refuse to save non-finite weights.

Row identity travels with the batch: each sample carries `source` (`{"dataset", "index", "id"}`; `MultimodalDataset`
items have it, other datasets' items get their sample index from `RowIdentityDataset`), the collator wrapper
`RowIdCollator` puts the batch's list under `row_ids`, and the trainer removes that key before the model's forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

ROW_ID_KEY = "source"  # what `MultimodalDataset` items already carry (any2text.data.loading)
ROW_IDS_KEY = "row_ids"


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss, gradient or weight; the message names the step, the rows and the fix."""


def row_identity(index: int) -> dict[str, Any]:
    """`{"dataset", "index", "id"}` for sample `index` of a dataset whose items do not say which row they came from."""
    return {"dataset": None, "index": int(index), "id": None}


def describe_rows(rows: Sequence[Mapping[str, Any] | None]) -> str:
    """`row 3 of dataset `a.json` (id `x`), ...` for an error message."""
    if not rows or all(row is None for row in rows):
        return "(the batch carried no row identity)"
    parts = []
    for row in rows:
        if row is None:
            parts.append("an unnamed sample")
            continue
        dataset = row.get("dataset")
        if dataset and not str(dataset).startswith("`"):
            dataset = f"`{dataset}`"
        text = f"row {row.get('index')}" + (f" of dataset {dataset}" if dataset else "")
        parts.append(text + (f" (id `{row['id']}`)" if row.get("id") is not None else ""))
    return ", ".join(parts)


class RowIdentityDataset(torch.utils.data.Dataset):
    """`dataset` whose mapping samples also carry `source` (their sample index); composition, not a proxy: only
    the length index (`lengths`) is passed through, everything else is read from `.dataset`.

    For datasets whose items do not name their row themselves (`MultimodalDataset` items do). A sample that already
    has `source` keeps it.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if isinstance(sample, Mapping) and ROW_ID_KEY not in sample:
            sample = {**sample, ROW_ID_KEY: row_identity(index)}
        return sample

    @property
    def lengths(self) -> list[int] | None:
        """The wrapped dataset's length index (items keep their order here): `data.lengths.dataset_lengths`."""
        return getattr(self.dataset, "lengths", None)


class RowIdCollator:
    """`collator`, plus the batch's `row_ids` (one per sample, in order) when its samples carry `source`.

    Composition, not a proxy: the collator itself is `.collator`."""

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        batch = self.collator(samples)
        rows = [
            member.get(ROW_ID_KEY) if isinstance(member, Mapping) else None
            for sample in samples
            # A packed item (any2text.data.packing) holds its samples under "packed".
            for member in (sample.get("packed", [sample]) if isinstance(sample, Mapping) else [sample])
        ]
        if any(row is not None for row in rows):
            batch[ROW_IDS_KEY] = rows
        return batch


def _local_tensor(parameter: torch.nn.Parameter) -> torch.Tensor | None:
    """The values of `parameter` this rank holds: the parameter itself, or under DeepSpeed ZeRO-3 (where the parameter
    is an empty placeholder) its shard `ds_tensor` without the shard's padding.

    ZeRO-3 cuts a parameter of `ds_numel` values into equal shards; the last shard is padded with uninitialised memory,
    which is no weight and may hold anything, NaN included, so it is left out.
    """
    if not hasattr(parameter, "ds_tensor"):
        return parameter
    shard = parameter.ds_tensor
    if shard is None:
        return None
    group = getattr(parameter, "ds_process_group", None)
    rank = torch.distributed.get_rank(group=group) if torch.distributed.is_initialized() else 0
    start = shard.numel() * rank
    return shard.reshape(-1)[: max(0, min(shard.numel(), parameter.ds_numel - start))]


def non_finite_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Name -> number of non-finite values, for every parameter (this rank's shard under ZeRO-3) that has any."""
    bad = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            tensor = _local_tensor(parameter)
            if tensor is None or tensor.numel() == 0 or not tensor.is_floating_point():
                continue
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad[name] = count
    return bad


def gradients_are_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every gradient of `parameters` is finite (parameters without a gradient count as finite).

    Runs every optimizer step: pass the trainable parameters listed once (`MultimodalTrainer` does), not
    `model.parameters()`, whose walk over every module costs as much as the norm on a small model.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


__all__ = [
    "ROW_IDS_KEY",
    "ROW_ID_KEY",
    "NonFiniteError",
    "RowIdCollator",
    "RowIdentityDataset",
    "describe_rows",
    "gradients_are_finite",
    "non_finite_parameters",
    "row_identity",
]
