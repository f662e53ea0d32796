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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from transformers.utils import logging

from .media import load_audio, load_image, resolve_path
from .templates import Message, Template, get_template

logger = logging.get_logger(__name__)

_JSON_SUFFIXES = (".json", ".jsonl")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
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


def _optional(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")) else value


def _to_number(argument: str, value: Any, cast: type) -> Any:
    value = _optional(value)
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
    if any(_optional(t) is None for t in columns["templates"]):
        raise ValueError(f"Every dataset needs a template; got `templates={templates!r}` for {count} datasets.")
    specs = []
    for i, path in enumerate(paths):
        template = get_template(columns["templates"][i]).name
        specs.append(
            DatasetSpec(
                path=path,
                template=template,
                split=_optional(columns["splits"][i]) or "train",
                data_files=_optional(columns["data_files"][i]),
                name=_optional(columns["names"][i]),
                size=_to_number("sizes", columns["sizes"][i], int),
                weight=_to_number("weights", columns["weights"][i], float),
                media_root=_optional(columns["media_roots"][i]),
            )
        )
    return specs


# ---------------------------------------------------------------------------------------------------------------------
# Loading one dataset


def _read_json_rows(path: str) -> datasets.Dataset:
    """Read a JSON list / JSON-lines file with `json`, not the `datasets` json builder.

    LLaVA-Instruct mixes int and str `id`s, which Arrow's type inference rejects; ids are normalised to str. The
    columns are the union of all rows' keys (text-only LLaVA rows have no `image` key; `Dataset.from_list` would
    only look at the first row).
    """
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = json.load(f)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"`{path}` must hold a JSON list of objects (one object per row, as LLaVA-Instruct does).")
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    columns = {key: [row.get(key) for row in rows] for key in keys}
    if "id" in columns:
        columns["id"] = [None if value is None else str(value) for value in columns["id"]]
    return datasets.Dataset.from_dict(columns)


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
    """A copy of `feature` where every `Image` / `Audio` (also nested in lists / dicts) has `decode=False`.

    Decoding then happens per item, on access, in `media.py`: datasets' `Audio()` decoding needs torchcodec, and
    decoding whole columns up front would hold every image in RAM.
    """
    if isinstance(feature, datasets.Image | datasets.Audio):
        return type(feature)(decode=False) if feature.decode else feature
    if isinstance(feature, dict):
        return type(feature)({key: _without_media_decoding(value) for key, value in feature.items()})
    if isinstance(feature, datasets.LargeList):
        return datasets.LargeList(_without_media_decoding(feature.feature))
    if isinstance(feature, datasets.List):
        return datasets.List(_without_media_decoding(feature.feature), length=feature.length)
    return feature


def _load_raw(spec: DatasetSpec) -> datasets.Dataset:
    local_file = _local_file(spec)
    if local_file is not None:
        suffix = os.path.splitext(local_file)[1].lower()
        if suffix in _JSON_SUFFIXES:
            return _read_json_rows(local_file)
        if suffix not in _FILE_BUILDERS:
            raise ValueError(
                f"Dataset file `{local_file}` has an unsupported extension; use one of "
                f"{', '.join(f'`{s}`' for s in _FILE_BUILDERS)}, or a dataset folder / Hub id."
            )
        return datasets.load_dataset(_FILE_BUILDERS[suffix], data_files={spec.split: local_file}, split=spec.split)
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
    # A folder of raw files or a Hub id: let `datasets` resolve it (Hub ids need network access).
    return datasets.load_dataset(spec.path, name=spec.name, data_files=spec.data_files, split=spec.split)


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


class BadRowError(ValueError):
    """A row that cannot become a training sample; names the dataset, the row index and the fix."""

    def __init__(self, message: str, dataset: str, index: int):
        super().__init__(message)
        self.dataset = dataset
        self.index = index


class MultimodalDataset(torch.utils.data.Dataset):
    """Messages from one or many datasets, concatenated or mixed by weight, with media loaded on access.

    Each item is `{"messages": [...]}` in the project-wide message format. With `decode_media=True` (default)
    images are RGB `PIL.Image`s and audio clips mono float32 numpy arrays at `sampling_rate`; with
    `decode_media=False` media stay references, with relative paths made absolute against the dataset's media root.
    Nothing is decoded at construction: rows are read and media decoded in `__getitem__`.

    Args:
        specs: one or many `DatasetSpec`s.
        loaded: already loaded datasets, one per spec (skips `load_spec`; useful for in-memory data).
        sampling_rate: rate audio is resampled to (the audio encoder's; CLAP: 48000). Needed when decoding audio.
        decode_media: decode media in `__getitem__` (see above).
        skip_bad_rows: instead of raising on a bad row, skip it (using the next row), count it in `skipped` and log
            it. Counts are per process (each DataLoader worker keeps its own).
        num_samples: length of the weighted mix (only with weights); defaults to the total number of rows.
        seed: seed for `size` subsets and the weighted mix.
        validate_rows: run every row's template (and check that media files exist) at construction, so bad rows
            fail (or, with `skip_bad_rows`, are dropped) before training starts. Costs one pass over the rows.

    Mixing: without weights the datasets are concatenated. With weights (on every spec) each dataset gets
    `round(num_samples * weight / sum(weights))` samples, drawn without replacement and cycling through the rows
    when it needs more than it has; the combined index list is shuffled with `seed`, so a run is reproducible.

    Raises:
        BadRowError: (in `__getitem__`) a row's template or media failed; names dataset, row index and fix.
    """

    def __init__(
        self,
        specs: DatasetSpec | Sequence[DatasetSpec],
        *,
        loaded: Sequence[datasets.Dataset] | None = None,
        sampling_rate: int | None = None,
        decode_media: bool = True,
        skip_bad_rows: bool = False,
        num_samples: int | None = None,
        seed: int = 42,
        validate_rows: bool = False,
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
        self.decode_media = decode_media
        self.skip_bad_rows = skip_bad_rows
        self.skipped: Counter[str] = Counter()
        self._dataset_index, self._row_index = self._build_index(num_samples, seed)
        if validate_rows:
            self._validate_rows()
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
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def log_skip_summary(self) -> None:
        """Log how many bad rows were skipped, per dataset (call it at the end of training, for example)."""
        if self.skipped:
            per_dataset = ", ".join(f"{name}: {count}" for name, count in self.skipped.items())
            logger.warning(f"Skipped {self.num_skipped} bad rows ({per_dataset}).")

    def messages(self, index: int, decode_media: bool | None = None) -> list[Message]:
        """The messages of sample `index`; raises `BadRowError` for a bad row, whatever `skip_bad_rows` says."""
        decode = self.decode_media if decode_media is None else decode_media
        dataset_id, row = int(self._dataset_index[index]), int(self._row_index[index])
        spec = self.specs[dataset_id]
        try:
            messages = self.templates[dataset_id](self.datasets[dataset_id][row])
            return self._resolve_media(messages, self.media_roots[dataset_id], decode)
        except _BAD_ROW_ERRORS as error:
            raise BadRowError(
                f"Row {row} of dataset {spec} (template `{spec.template}`) cannot be used: {error} "
                "Fix or drop the row, or pass `skip_bad_rows=True` to skip bad rows (counted and logged).",
                dataset=str(spec),
                index=row,
            ) from error

    def __getitem__(self, index: int) -> dict[str, list[Message]]:
        if not self.skip_bad_rows:
            return {"messages": self.messages(index)}
        for attempt in range(len(self)):
            try:
                return {"messages": self.messages((index + attempt) % len(self))}
            except BadRowError as error:
                self.skipped[error.dataset] += 1
                logger.warning(f"Skipping bad row ({self.num_skipped} skipped so far): {error}")
        raise ValueError("Every row of the dataset is bad; see the warnings above.")

    def _resolve_media(self, messages: list[Message], media_root: str | None, decode: bool) -> list[Message]:
        """Copy `messages` with each media ref decoded (or, without decoding, its relative path made absolute)."""
        resolved = []
        for message in messages:
            content = []
            for item in message["content"]:
                kind = item["type"]
                if kind == "image":
                    ref = (
                        load_image(item["image"], media_root) if decode else self._absolute(item["image"], media_root)
                    )
                    item = {"type": "image", "image": ref}
                elif kind == "audio":
                    if decode and self.sampling_rate is None:
                        raise RuntimeError(
                            "`MultimodalDataset` needs `sampling_rate` (the audio encoder's rate) to decode audio."
                        )
                    ref = (
                        load_audio(item["audio"], self.sampling_rate, media_root)
                        if decode
                        else self._absolute(item["audio"], media_root)
                    )
                    item = {"type": "audio", "audio": ref}
                content.append(item)
            resolved.append({**message, "content": content})
        return resolved

    @staticmethod
    def _absolute(ref: Any, media_root: str | None) -> Any:
        """Make a path ref (or a bytes-less `{"bytes", "path"}` ref) absolute and check that the file exists."""
        if isinstance(ref, str | os.PathLike):
            return resolve_path(ref, media_root)
        if isinstance(ref, dict) and ref.get("bytes") is None and ref.get("path"):
            return {**ref, "path": resolve_path(ref["path"], media_root)}
        return ref

    def _validate_rows(self) -> None:
        """Run every row's template and check media files exist, without decoding; drop or raise on bad rows."""
        bad: set[tuple[int, int]] = set()
        for dataset_id, (spec, dataset) in enumerate(zip(self.specs, self.datasets)):
            template, media_root = self.templates[dataset_id], self.media_roots[dataset_id]
            # Batched reads: one `dataset[i]` per row costs a table lookup each; batches are ~10x faster.
            for row_id, row in enumerate(_iter_rows(dataset)):
                try:
                    self._resolve_media(template(row), media_root, decode=False)
                except _BAD_ROW_ERRORS as error:
                    if not self.skip_bad_rows:
                        raise BadRowError(
                            f"Row {row_id} of dataset {spec} (template `{spec.template}`) cannot be used: {error} "
                            "Fix or drop the row, or pass `skip_bad_rows=True` to drop bad rows (counted and logged).",
                            dataset=str(spec),
                            index=row_id,
                        ) from error
                    self.skipped[str(spec)] += 1
                    bad.add((dataset_id, row_id))
                    logger.warning(f"Dropping row {row_id} of dataset {spec}: {error}")
        if bad:
            keep = np.array(
                [(int(d), int(r)) not in bad for d, r in zip(self._dataset_index, self._row_index)], dtype=bool
            )
            self._dataset_index, self._row_index = self._dataset_index[keep], self._row_index[keep]
            self.log_skip_summary()
