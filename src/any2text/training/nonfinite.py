"""Non-finite losses, gradients and weights: find them, name the rows of the batch, and never save them.

A NaN in one sample (a corrupt clip, a diverging step) spreads through the gradients into every trained weight within
one optimizer step; the stock `Trainer` keeps going (`logging_nan_inf_filter` only hides NaN losses from the *logged*
average) and saves the poisoned model. `MultimodalTrainer` uses the pieces here to stop at the first non-finite loss
or gradient with an error naming the step and the rows of its batch (or, with `--skip_nonfinite_steps True`, to skip
that optimizer update and count it), and to refuse to save non-finite weights.

Row identity travels with the batch: each sample carries `source` (`{"dataset", "index", "id"}`; `MultimodalDataset`
items have it, other datasets get it from `RowIdentityDataset`), the collator wrapper
`RowIdCollator` puts the batch's list under `row_ids`, and the trainer removes that key before the model's forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

ROW_ID_KEY = "source"  # what `MultimodalDataset` items already carry (any2text.data.loading)
ROW_IDS_KEY = "row_ids"


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss, gradient or weight; the message names the step, the rows and the fix."""


_ID_COLUMNS = ("id", "question_id", "sample_id")


def row_identity(dataset: Any, index: int, _id_views: dict[int, Any] | None = None) -> dict[str, Any]:
    """`{"dataset", "index", "id"}` of sample `index` of `dataset`: which source row it came from.

    Uses `dataset.row_identity(index)` when the dataset provides it. For a `MultimodalDataset` that does not (yet), the
    row is found through its sample -> (dataset, row) map, and `id` is the row's `id` (or `question_id`) column when it
    has one, read from a one-column view (`_id_views` caches them) so no media bytes are read. Any other dataset is
    named by the sample index alone.
    """
    describe = getattr(dataset, "row_identity", None)
    if callable(describe):
        return describe(index)
    # `MultimodalDataset` (any2text.data.loading) keeps sample -> (dataset, row) as two index arrays.
    dataset_index, row_index = getattr(dataset, "_dataset_index", None), getattr(dataset, "_row_index", None)
    if dataset_index is None or row_index is None:
        return {"dataset": None, "index": int(index), "id": None}
    source, row = int(dataset_index[index]), int(row_index[index])
    views = {} if _id_views is None else _id_views
    if source not in views:
        raw = dataset.datasets[source]
        column = next((c for c in _ID_COLUMNS if c in getattr(raw, "column_names", ())), None)
        views[source] = (raw.select_columns([column]), column) if column else None
    row_id = views[source][0][row][views[source][1]] if views[source] else None
    return {"dataset": str(dataset.specs[source]), "index": row, "id": row_id}


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
    """`dataset` whose mapping samples also carry `source` (see `row_identity`); everything else is `dataset`'s.

    A sample that already has `source` (set by the dataset itself, as `MultimodalDataset` does) keeps it.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        self._id_views: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if isinstance(sample, Mapping) and ROW_ID_KEY not in sample:
            sample = {**sample, ROW_ID_KEY: row_identity(self.dataset, index, self._id_views)}
        return sample

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in (
            "dataset",
            "_id_views",
        ):  # keeps pickling (DataLoader workers) from recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)


class RowIdCollator:
    """`collator`, plus the batch's `row_ids` (one per sample, in order) when its samples carry `source`."""

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

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


def _local_tensor(parameter: torch.nn.Parameter) -> torch.Tensor:
    # Under DeepSpeed ZeRO-3 a parameter is an empty placeholder; this rank's shard is `ds_tensor`.
    return getattr(parameter, "ds_tensor", None) if hasattr(parameter, "ds_tensor") else parameter


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


def gradients_are_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient of `model` is finite (parameters without a gradient count as finite)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
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
