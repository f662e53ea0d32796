"""Dataset loading and mixing: comma-list specs -> `datasets.Dataset`s -> one `MultimodalDataset` of messages.

Typical use (what the train entry point does with `--train_datasets a,b, --train_template LLaVA,AudioCaps,`)::

    specs = parse_dataset_specs("data/llava,data/audiocaps,", templates="LLaVA,AudioCaps,", splits="train")
    train_dataset = MultimodalDataset(specs, sampling_rate=48000)
    train_dataset[0]  # {"messages": [{"role": "user", "content": [{"type": "image", "image": <PIL>}, ...]}, ...]}
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers.utils import logging

from ..modalities import Modality
from .bad_rows import DEFAULT_MAX_BAD_ROWS, BadRowError, BadRowLog
from .media import resolve_path
from .messages import map_media
from .script_datasets import load_hub_dataset
from .templates import Message, Template, check_conversation, get_template, row_id

logger = logging.get_logger(__name__)

_JSON_SUFFIXES = (".json", ".jsonl")
# The `datasets` builder that reads each kind of data file (training and evaluation alike).
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
# Set on rows of a JSON file that could not be stored with the other rows' types: the reason (else null).
BAD_ROW_COLUMN = "__bad_row__"
# Errors that mean "this row is bad" (not "the code is broken"): the only ones `skip_bad_rows` may skip.
_BAD_ROW_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError)


@dataclass
class DatasetSpec:
    """One training dataset.

    Args:
        path: a Hub dataset id, a local dataset folder (`save_to_disk` output or raw files), or a
            `.json` / `.jsonl` / `.parquet` file.
        template: name of the template turning rows into messages (see `available_templates()`).
        split: split to load.
        data_files: file(s) inside `path` to load (e.g. `llava_v1_5_mix665k.json`); relative to `path`.
        name: dataset configuration name (Hub datasets with several configs).
        size: keep a seeded random subset of this many rows.
        weight: sampling weight when mixing datasets; set it for all datasets or for none.
        media_root: folder that relative media paths in the rows are resolved against. Defaults to the dataset's
            own folder for local datasets (the folder of the file for a file).
    """

    path: str
    template: str
    split: str = "train"
    data_files: str | list[str] | None = None
    name: str | None = None
    size: int | None = None
    weight: float | None = None
    media_root: str | None = None

    def __str__(self) -> str:
        files = f" ({self.data_files})" if self.data_files else ""
        return f"`{self.path}`{files} [{self.split}]"


# ---------------------------------------------------------------------------------------------------------------------
# Parsing comma lists


def _split_list(value: Any) -> list[Any]:
    """`"a,b,"` -> `["a", "b"]` (the seed's trailing comma); lists pass through; `None` -> `[]`."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        if len(items) > 1 and items[-1] == "":
            items = items[:-1]
        return items
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _broadcast(argument: str, value: Any, count: int) -> list[Any]:
    items = _split_list(value)
    if not items:
        return [None] * count
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise ValueError(
            f"`{argument}` has {len(items)} values ({items}) but there are {count} datasets. Give one value per "
            "dataset, or a single value for all of them."
        )
    return items


def none_if_unset(value: Any) -> Any:
    """`None` for a value left unset on a command line or in a config file (`None`, "", "none", "null"), else it."""
    return (
        None if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")) else value
    )


def _to_number(argument: str, value: Any, cast: type) -> Any:
    value = none_if_unset(value)
    if value is None:
        return None
    message = f"`{argument}` value `{value}` must be a positive {cast.__name__}."
    try:
        number = cast(value)
    except (TypeError, ValueError) as error:
        raise ValueError(message) from error
    if number <= 0 or (cast is int and float(value) != number):
        raise ValueError(message)
    return number


def parse_dataset_specs(
    datasets: str | Sequence[str],
    templates: str | Sequence[str],
    splits: str | Sequence[str] = "train",
    data_files: str | Sequence[str | None] | None = None,
    names: str | Sequence[str | None] | None = None,
    sizes: int | str | Sequence[int | str | None] | None = None,
    weights: float | str | Sequence[float | str | None] | None = None,
    media_roots: str | Sequence[str | None] | None = None,
) -> list[DatasetSpec]:
    """Build one `DatasetSpec` per dataset from comma lists (or Python lists).

    Every argument takes one value per dataset, or a single value used for all of them. A trailing comma is
    allowed (`"a,b,"`, the seed's syntax); an empty item (or `none`) means "not set" for that dataset.
    Template names are checked here, so a typo fails before anything is loaded.

    Example:
        >>> [s.template for s in parse_dataset_specs("a.json,b.parquet,", templates="LLaVA,")]
        ['LLaVA', 'LLaVA']
    """
    paths = _split_list(datasets)
    if not paths or any(not isinstance(p, str) or not p for p in paths):
        raise ValueError(f"`datasets` must name at least one dataset and no empty ones, got {datasets!r}.")
    count = len(paths)
    columns = {
        "templates": _broadcast("templates", templates, count),
        "splits": _broadcast("splits", splits, count),
        "data_files": _broadcast("data_files", data_files, count),
        "names": _broadcast("names", names, count),
        "sizes": _broadcast("sizes", sizes, count),
        "weights": _broadcast("weights", weights, count),
        "media_roots": _broadcast("media_roots", media_roots, count),
    }
    if any(none_if_unset(t) is None for t in columns["templates"]):
        raise ValueError(f"Every dataset needs a template; got `templates={templates!r}` for {count} datasets.")
    specs = []
    for i, path in enumerate(paths):
        template = get_template(columns["templates"][i]).name
        specs.append(
            DatasetSpec(
                path=path,
                template=template,
                split=none_if_unset(columns["splits"][i]) or "train",
                data_files=none_if_unset(columns["data_files"][i]),
                name=none_if_unset(columns["names"][i]),
                size=_to_number("sizes", columns["sizes"][i], int),
                weight=_to_number("weights", columns["weights"][i], float),
                media_root=none_if_unset(columns["media_roots"][i]),
            )
        )
    return specs


# ---------------------------------------------------------------------------------------------------------------------
# Loading one dataset


def _parse_json_file(path: str) -> Any:
    """The parsed content of a `.json` / `.jsonl` file; a syntax error names the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            if not path.endswith(".jsonl"):
                try:
                    return json.load(f)
                except json.JSONDecodeError as error:
                    hint = (
                        " It holds more than one JSON value: if it has one object per line, name it `.jsonl`."
                        if error.msg == "Extra data"
                        else ""
                    )
                    raise ValueError(
                        f"`{path}` is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.{hint} "
                        "Fix the file (e.g. `python -m json.tool` shows the spot)."
                    ) from error
            rows = []
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"`{path}` line {number} is not valid JSON ({error.msg} at column {error.colno}); each line of "
                        "a `.jsonl` file must hold one JSON object. Fix or remove the line."
                    ) from error
            return rows
    except UnicodeDecodeError as error:
        raise ValueError(f"`{path}` is not UTF-8 text ({error}); is it really a JSON file?") from error


class _WronglyTypedRow(ValueError):
    cause = "wrongly_typed_value"


def _short(error: Exception, limit: int = 160) -> str:
    text = str(error)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _column_array(column: str, values: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    """`values` as one Arrow array, and the rows whose value had to be left out of it, with why.

    Arrow gives a column one type, and one row with `"value": 123` among strings (or a string where the other rows
    hold lists) makes the whole file fail to load. Then each row's type is inferred alone; the types are admitted
    most common first, as long as the column stays storable, and the rows of the types left over are bad rows (their
    value becomes null).
    """
    try:
        return pa.array(values), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    bad: dict[int, str] = {}
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(values):
        if value is None:
            continue
        try:
            groups.setdefault(str(pa.array([value]).type), []).append(index)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            bad[index] = (
                f"its `{column}` mixes values of different types ({_short(error)}); fix the row's value types."
            )
    admitted: list[int] = []
    reference = None
    for kind, rows in sorted(groups.items(), key=lambda item: -len(item[1])):
        try:
            pa.array([values[i] for i in admitted + rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            for index in rows:
                bad[index] = (
                    f"its `{column}` is `{kind}` but `{reference}` in the other rows (e.g. a number where text is "
                    "expected); fix the row's value types."
                )
            continue
        admitted += rows
        reference = reference or kind
    return pa.array([None if index in bad else value for index, value in enumerate(values)]), bad


def _read_json_rows(path: str) -> datasets.Dataset:
    """Read a JSON list / JSON-lines file with `json`, not the `datasets` json builder.

    LLaVA-Instruct mixes int and str `id`s, which Arrow's type inference rejects; ids are normalised to str. The
    columns are the union of all rows' keys (text-only LLaVA rows have no `image` key; `Dataset.from_list` would
    only look at the first row). A row that is not an object, or whose values cannot share a column's type with the
    other rows, is kept as a *bad row*: its values are emptied and the reason goes into the `BAD_ROW_COLUMN` column,
    so reading it raises a `BadRowError` naming the file and row (skippable like any other bad row) instead of the
    whole file failing to load.
    """
    rows = _parse_json_file(path)
    if not isinstance(rows, list) or not any(isinstance(row, dict) for row in rows):
        if isinstance(rows, list) and not rows:
            raise ValueError(f"`{path}` has no rows; point the dataset at a file with data.")
        raise ValueError(f"`{path}` must hold a JSON list of objects (one object per row, as LLaVA-Instruct does).")
    reasons = {
        i: f"it is a JSON {type(row).__name__}, not an object."
        for i, row in enumerate(rows)
        if not isinstance(row, dict)
    }
    rows = [row if isinstance(row, dict) else {} for row in rows]
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    columns = {key: [row.get(key) for row in rows] for key in keys}
    if "id" in columns:
        columns["id"] = [None if value is None else str(value) for value in columns["id"]]
    arrays = {}
    for key, values in columns.items():
        # Arrow arrays built here are handed over as they are: converting once is faster than `from_dict` on lists.
        arrays[key], bad = _column_array(key, values)
        for index, reason in bad.items():
            reasons.setdefault(index, reason)
    if reasons:
        arrays[BAD_ROW_COLUMN] = pa.array([reasons.get(index) for index in range(len(rows))], type=pa.string())
        first = min(reasons)
        logger.warning(
            f"`{path}`: {len(reasons)} row(s) cannot be stored with the types of the other rows, e.g. row {first}: "
            f"{reasons[first]} They are bad rows (see `skip_bad_rows`)."
        )
    return datasets.Dataset.from_dict(arrays)


def _local_file(spec: DatasetSpec) -> str | None:
    """The single local file a spec points at (`path` itself, or one `data_files` entry inside it), if any."""
    if os.path.isfile(spec.path):
        return spec.path
    if os.path.isdir(spec.path) and isinstance(spec.data_files, str):
        candidate = os.path.join(spec.path, spec.data_files)
        if os.path.isfile(candidate):
            return candidate
    return None


def _without_media_decoding(feature: Any) -> Any:
    """A copy of `feature` where every `Image` / `Audio` / `Video` (also nested in lists / dicts) has `decode=False`.

    Decoding then happens per item, on access, in `media.py`: datasets' `Audio()` / `Video()` decoding needs
    torchcodec, and decoding whole columns up front would hold every image in RAM.
    """
    if isinstance(feature, datasets.Image | datasets.Audio | datasets.Video):
        return type(feature)(decode=False) if feature.decode else feature
    if isinstance(feature, dict):
        return type(feature)({key: _without_media_decoding(value) for key, value in feature.items()})
    if isinstance(feature, datasets.LargeList):
        return datasets.LargeList(_without_media_decoding(feature.feature))
    if isinstance(feature, datasets.List):
        return datasets.List(_without_media_decoding(feature.feature), length=feature.length)
    return feature


def _load_file(spec: DatasetSpec, path: str) -> datasets.Dataset:
    """One local data file; a file that is not what its extension says names the file."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_BUILDERS:
        raise ValueError(
            f"Dataset file `{path}` has an unsupported extension; use one of "
            f"{', '.join(f'`{s}`' for s in FILE_BUILDERS)}, or a dataset folder / Hub id."
        )
    if spec.split != "train":
        # A file is one table: there is no other split to pick, and saying nothing would hide a wrong `split`.
        logger.warning(
            f"Dataset file `{path}` has no splits; `split={spec.split}` does not select anything and the whole file "
            "is used. Point the dataset at the file that holds that split if this is not what you meant."
        )
    if suffix in _JSON_SUFFIXES:
        dataset = _read_json_rows(path)
    else:
        try:
            if suffix == ".parquet":
                pq.read_metadata(path)  # checks the magic bytes and footer, in a moment
            dataset = datasets.load_dataset(FILE_BUILDERS[suffix], data_files={"train": path}, split="train")
        except (pa.ArrowException, datasets.exceptions.DatasetGenerationError, OSError, UnicodeDecodeError) as error:
            raise ValueError(
                f"Dataset file `{path}` could not be read as {suffix[1:]} ({type(error).__name__}: {error}). Is it "
                f"really a {suffix[1:]} file? Convert it, or rename it to its real extension."
            ) from error
    if len(dataset) == 0:
        raise ValueError(f"Dataset file `{path}` has no rows; point the dataset at a file with data.")
    return dataset


def _load_raw(spec: DatasetSpec) -> datasets.Dataset:
    local_file = _local_file(spec)
    if local_file is not None:
        return _load_file(spec, local_file)
    saved_markers = (
        "state.json",
        "dataset_dict.json",
    )  # written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
    if os.path.isdir(spec.path) and any(os.path.isfile(os.path.join(spec.path, m)) for m in saved_markers):
        loaded = datasets.load_from_disk(spec.path)
        if isinstance(loaded, datasets.DatasetDict):
            if spec.split not in loaded:
                raise ValueError(
                    f"Dataset {spec} has no split `{spec.split}`; available splits: "
                    f"{', '.join(f'`{s}`' for s in loaded)}. Set the dataset's split."
                )
            loaded = loaded[spec.split]
        return loaded
    # A folder of raw files or a Hub id: let `datasets` resolve it (Hub ids need network access; a loading script is
    # read from its parquet conversion).
    return load_hub_dataset(spec.path, name=spec.name, data_files=spec.data_files, split=spec.split)


def load_spec(spec: DatasetSpec, seed: int = 42) -> datasets.Dataset:
    """Load the dataset a spec describes, ready for lazy access.

    - `.json` / `.jsonl` files are parsed with `json` (see `_read_json_rows`); `.parquet` / `.csv` / `.arrow` with
      the matching `datasets` builder; `save_to_disk` folders with `load_from_disk`; anything else (a folder of
      data files, a Hub id) with `datasets.load_dataset`.
    - `Image` / `Audio` columns are cast to `decode=False`, so rows hold `{"bytes", "path"}` dicts.
    - `size` keeps a seeded random subset (in original row order, which keeps reads local).
    - The template's required columns are checked here, before any training step.

    Raises:
        ValueError: a required column is missing (the message names the dataset, the column and the columns it has),
            or the split does not exist.
    """
    template = get_template(spec.template)
    dataset = _load_raw(spec)
    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict):
        raise ValueError(f"Dataset {spec} did not load as one map-style split; set its `split`.")

    missing = template.missing_columns(dataset.column_names)
    if missing:
        raise ValueError(
            f"Dataset {spec} has no column {', '.join(f'`{m}`' for m in missing)} required by template "
            f"`{template.name}`. Available columns: {', '.join(f'`{c}`' for c in dataset.column_names)}. "
            "Pick the template matching this dataset, or rename the column (`Dataset.rename_column`)."
        )

    for column, feature in dataset.features.items():
        undecoded = _without_media_decoding(feature)
        if undecoded != feature:
            # A top-level Image/Audio column is re-typed in place; a nested one (a list of images) is rewritten.
            dataset = dataset.cast_column(column, undecoded)

    if spec.size is not None:
        if spec.size >= len(dataset):
            logger.warning(
                f"Dataset {spec} has {len(dataset)} rows, fewer than `size={spec.size}`; using all of them."
            )
        else:
            rng = np.random.default_rng(seed)
            dataset = dataset.select(np.sort(rng.choice(len(dataset), size=spec.size, replace=False)))
    return dataset


def default_media_root(spec: DatasetSpec) -> str | None:
    """`spec.media_root`, else the dataset's folder (the file's folder for a file); `None` for Hub datasets."""
    if spec.media_root is not None:
        return spec.media_root
    if os.path.isdir(spec.path):
        return spec.path
    if os.path.isfile(spec.path):
        return os.path.dirname(os.path.abspath(spec.path))
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The training dataset


def _iter_rows(dataset: datasets.Dataset, batch_size: int = 1024) -> Any:
    for batch in dataset.iter(batch_size=batch_size):
        columns = list(batch)
        yield from (dict(zip(columns, values)) for values in zip(*batch.values()))


class MultimodalDataset(torch.utils.data.Dataset):
    """Messages from one or many datasets, concatenated or mixed by weight, with media loaded on access.

    Each item is `{"messages": [...]}` in the project-wide message format. With `decode_media=True` (default)
    images are RGB `PIL.Image`s, audio clips mono float32 numpy arrays at `sampling_rate` and videos uint8 frames
    `(T, H, W, 3)` sampled as `media_options` say (each medium by its decoder in the modality table); with
    `decode_media=False` media stay references, with relative paths made absolute against the dataset's media root.
    Nothing is decoded at construction: rows are read and media decoded in `__getitem__`.

    Args:
        specs: one or many `DatasetSpec`s.
        loaded: already loaded datasets, one per spec (skips `load_spec`; useful for in-memory data).
        sampling_rate: rate audio is resampled to (the audio encoder's; CLAP: 48000). Needed when decoding audio.
        media_options: what the decoders need from the processor (`any2text.modalities.media_options(processor)`:
            `sampling_rate`, `num_frames` / `fps`); `sampling_rate`, when given, is added to them.
        decode_media: decode media in `__getitem__` (see above).
        skip_bad_rows: instead of raising on a bad row, skip it (using the next row) and record it once in
            `bad_rows`, which stops training when a dataset has more than `max_bad_rows` of them.
        num_samples: length of the weighted mix (only with weights); defaults to the total number of rows.
        seed: seed for `size` subsets and the weighted mix.
        validate_rows: check every row at construction (see `validate`), so bad rows fail (or, with
            `skip_bad_rows`, are dropped) before training starts. Costs one pass over the rows.
        max_bad_rows: the cap of the `BadRowLog` made when `bad_rows` is not given: per dataset, a count (`100`) or
            a fraction of its rows (`0.01`, the default).
        bad_rows: a `BadRowLog` to record skipped rows in (one log can serve several datasets and the collator).
        allow_media_outside_root: read media paths that lead outside the dataset's media root (refused otherwise).
        check_sample: called with each sample's messages (media not decoded) as the row is read; a `ValueError`
            makes the row a bad row. Returns the sample's length in tokens (see `validate`). The train entry point
            passes `MultimodalCollator.check_sample`, so a sample longer than `max_length` under
            `truncation="error"` is found when its row is read, not in the middle of a batch.

    Items are `{"messages": [...], "source": {"dataset": ..., "index": ..., "id": ...}, "index": i}`: `source` names
    the row the sample came from, so that errors raised later (in the collator, in the training step) can name it
    too; `index` is the item's own index `i` (the key of per-item tables such as DPO's reference log-probs; with
    `skip_bad_rows` a bad row's item is the next good row's sample, the same one every time).

    The length index: `lengths` (item order) once `validate(length_fn=...)` measured every sample from its row
    alone, media never decoded (the stage set-up does it for `--packing` and `group_by_length`).

    Mixing: without weights the datasets are concatenated. With weights (on every spec) each dataset gets
    `round(num_samples * weight / sum(weights))` samples, drawn without replacement and cycling through the rows
    when it needs more than it has; the combined index list is shuffled with `seed`, so a run is reproducible.

    Raises:
        BadRowError: (in `__getitem__`) a row's template or media failed; names dataset, row index and fix.
        TooManyBadRowsError: (with `skip_bad_rows`) a dataset has more bad rows than `max_bad_rows` allows.
    """

    def __init__(
        self,
        specs: DatasetSpec | Sequence[DatasetSpec],
        *,
        loaded: Sequence[datasets.Dataset] | None = None,
        sampling_rate: int | None = None,
        media_options: dict[str, Any] | None = None,
        decode_media: bool = True,
        skip_bad_rows: bool = False,
        num_samples: int | None = None,
        seed: int = 42,
        validate_rows: bool = False,
        max_bad_rows: float | int | str = DEFAULT_MAX_BAD_ROWS,
        bad_rows: BadRowLog | None = None,
        allow_media_outside_root: bool = False,
        check_sample: Callable[[list[Message]], int] | None = None,
    ):
        self.specs = [specs] if isinstance(specs, DatasetSpec) else list(specs)
        if not self.specs:
            raise ValueError("`MultimodalDataset` needs at least one `DatasetSpec`.")
        if loaded is not None and len(loaded) != len(self.specs):
            raise ValueError(f"`loaded` has {len(loaded)} datasets for {len(self.specs)} specs; give one per spec.")
        self.datasets = list(loaded) if loaded is not None else [load_spec(spec, seed=seed) for spec in self.specs]
        self.templates: list[Template] = [get_template(spec.template) for spec in self.specs]
        self.media_roots = [default_media_root(spec) for spec in self.specs]
        self.sampling_rate = sampling_rate
        self.media_options = dict(media_options or {})
        if sampling_rate is not None:
            self.media_options["sampling_rate"] = sampling_rate
        self.decode_media = decode_media
        self.skip_bad_rows = skip_bad_rows
        self.allow_media_outside_root = allow_media_outside_root
        self.check_sample = check_sample
        self.bad_rows = bad_rows if bad_rows is not None else BadRowLog(max_bad_rows)
        for spec, dataset, media_root in zip(self.specs, self.datasets, self.media_roots):
            self.bad_rows.add_dataset(str(spec), len(dataset), media_root)
        # Exact sample lengths, in index order, once `validate(length_fn=...)` has measured them.
        self.lengths: list[int] | None = None
        self._dataset_index, self._row_index = self._build_index(num_samples, seed)
        if validate_rows:
            self.validate()
        sizes = ", ".join(f"{spec} x{int((self._dataset_index == i).sum())}" for i, spec in enumerate(self.specs))
        logger.info(f"MultimodalDataset: {len(self)} samples from {sizes}.")

    def _build_index(self, num_samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        lengths = [len(dataset) for dataset in self.datasets]
        for spec, length in zip(self.specs, lengths):
            if length == 0:
                raise ValueError(f"Dataset {spec} is empty; check its `split`, `data_files` and `size`.")
        weights = [spec.weight for spec in self.specs]
        if all(weight is None for weight in weights):
            if num_samples is not None:
                raise ValueError("`num_samples` only applies to a weighted mix; set `weight` on every dataset.")
            dataset_index = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
            row_index = np.concatenate([np.arange(length, dtype=np.int64) for length in lengths])
            return dataset_index, row_index
        if any(weight is None for weight in weights):
            raise ValueError(
                f"Sampling weights are set for some datasets but not all ({weights}); set a weight on every dataset."
            )
        total = num_samples if num_samples is not None else sum(lengths)
        shares = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        counts = np.round(shares * total).astype(np.int64)
        rng = np.random.default_rng(seed)
        row_parts = []
        for length, count in zip(lengths, counts):
            repeats = -(-int(count) // length)  # ceil: cycle through the rows, each pass in a fresh order
            row_parts.append(np.concatenate([rng.permutation(length) for _ in range(max(repeats, 1))])[:count])
        dataset_index = np.repeat(np.arange(len(lengths), dtype=np.int32), counts)
        row_index = np.concatenate(row_parts).astype(np.int64)
        order = rng.permutation(len(row_index))
        return dataset_index[order], row_index[order]

    def __len__(self) -> int:
        return len(self._row_index)

    @property
    def skipped(self) -> Counter[str]:
        """Bad rows skipped so far in this process, per dataset, each row counted once."""
        names = {str(spec) for spec in self.specs}
        return Counter(dataset for dataset, _ in self.bad_rows.rows if dataset in names)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def log_skip_summary(self) -> None:
        """Log the bad rows skipped, per dataset and cause (call it at the end of training, for example)."""
        summary = self.bad_rows.summary()
        if summary:
            logger.warning(summary)

    def messages(self, index: int, decode_media: bool | None = None) -> list[Message]:
        """The messages of sample `index`; raises `BadRowError` for a bad row, whatever `skip_bad_rows` says."""
        return self._sample(index, decode_media)[0]

    def _sample(self, index: int, decode_media: bool | None = None) -> tuple[list[Message], dict[str, Any]]:
        decode = self.decode_media if decode_media is None else decode_media
        dataset_id, row = int(self._dataset_index[index]), int(self._row_index[index])
        return self._row_messages(dataset_id, row, self.datasets[dataset_id][row], decode)

    def _row_messages(
        self, dataset_id: int, row: int, data: dict[str, Any], decode: bool
    ) -> tuple[list[Message], dict[str, Any]]:
        """Template, conversation rules, `check_sample`, then media, for one row; a `BadRowError` names the row."""
        spec = self.specs[dataset_id]
        source = {"dataset": str(spec), "index": row, "id": row_id(data)}
        try:
            reason = data.get(BAD_ROW_COLUMN)
            if reason is not None:
                raise _WronglyTypedRow(reason)
            messages = self._conversation(dataset_id, data)
            # Paths made absolute (and checked) first: a video's length under `fps` reads its container's metadata.
            messages = self._resolve_media(messages, self.media_roots[dataset_id], decode=False)
            if self.check_sample is not None:
                self.check_sample(messages)
            return (self._resolve_media(messages, None, decode=True) if decode else messages), source
        except _BAD_ROW_ERRORS as error:
            named = f"id `{source['id']}`, " if source["id"] is not None else ""
            raise BadRowError(
                f"Row {row} of dataset {spec} ({named}template `{spec.template}`) cannot be used: {error} "
                "Fix or drop the row, or pass `skip_bad_rows=True` to skip bad rows (each counted once, logged, and "
                "capped by `max_bad_rows`).",
                dataset=str(spec),
                index=row,
                row_id=source["id"],
            ) from error

    def _conversation(self, dataset_id: int, data: dict[str, Any]) -> list[Message]:
        """The row through its dataset's template, checked against the conversation rules (`PromptDataset` makes it a
        prompt here)."""
        messages = self.templates[dataset_id](data)
        check_conversation(messages)
        return messages

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.skip_bad_rows:
            messages, source = self._sample(index)
            return {"messages": messages, "source": source, "index": index}
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            key = (str(self.specs[int(self._dataset_index[position])]), int(self._row_index[position]))
            if key in self.bad_rows.rows:
                continue  # known bad: not read (nor its media decoded) again
            try:
                messages, source = self._sample(position)
                return {"messages": messages, "source": source, "index": index}
            except BadRowError as error:
                self.bad_rows.record(error)
        raise ValueError("Every row of the dataset is bad; see the warnings above.")

    def _resolve_media(self, messages: list[Message], media_root: str | None, decode: bool) -> list[Message]:
        """Copy `messages` with each media ref decoded (or, without decoding, its relative path made absolute)."""
        outside = self.allow_media_outside_root

        def resolve(modality: Modality, ref: Any) -> Any:
            if decode:
                return modality.decoder(ref, media_root, allow_outside_root=outside, **self.media_options)
            return self._absolute(ref, media_root, outside, folders=modality.folders)

        return map_media(messages, resolve)

    @staticmethod
    def _absolute(ref: Any, media_root: str | None, allow_outside_root: bool = False, folders: bool = False) -> Any:
        """Make a path ref (or a bytes-less `{"bytes", "path"}` ref) absolute and check that the file exists."""
        if isinstance(ref, str | os.PathLike):
            return resolve_path(ref, media_root, allow_outside_root=allow_outside_root, folders=folders)
        if isinstance(ref, dict) and ref.get("bytes") is None and ref.get("path"):
            path = resolve_path(ref["path"], media_root, allow_outside_root=allow_outside_root, folders=folders)
            return {**ref, "path": path}
        return ref

    def validate(self, length_fn: Callable[[list[Message]], int] | None = None) -> list[int] | None:
        """Check every row now, before training: template, conversation rules, `check_sample`, media files exist.

        Media are not decoded (a corrupt file is still found when read). Bad rows raise a `BadRowError`, or with
        `skip_bad_rows` are recorded in `bad_rows` and leave the index. With `length_fn` (e.g.
        `MultimodalCollator.sample_length`) the exact length of every remaining sample is measured in the same pass,
        kept in `lengths` and returned (index order). Costs one pass over the rows.
        """
        wanted = {(int(d), int(r)) for d, r in zip(self._dataset_index, self._row_index)}
        measured: dict[tuple[int, int], int] = {}
        for dataset_id, dataset in enumerate(self.datasets):
            # Batched reads: one `dataset[i]` per row costs a table lookup each; batches are ~10x faster.
            for row, data in enumerate(_iter_rows(dataset)):
                if (dataset_id, row) not in wanted:
                    continue
                try:
                    messages, _ = self._row_messages(dataset_id, row, data, decode=False)
                except BadRowError as error:
                    if not self.skip_bad_rows:
                        raise
                    self.bad_rows.record(error)
                    continue
                if length_fn is not None:
                    measured[(dataset_id, row)] = length_fn(messages)
        known_bad = set(self.bad_rows.rows)
        keep = np.array(
            [(str(self.specs[int(d)]), int(r)) not in known_bad for d, r in zip(self._dataset_index, self._row_index)],
            dtype=bool,
        )
        if not keep.all():
            self._dataset_index, self._row_index = self._dataset_index[keep], self._row_index[keep]
            self.log_skip_summary()
        if not len(self):
            raise ValueError("Every row of the dataset is bad; see the warnings above.")
        if length_fn is None:
            return None
        self.lengths = [measured[(int(d), int(r))] for d, r in zip(self._dataset_index, self._row_index)]
        return self.lengths
