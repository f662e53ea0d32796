"""Evaluation rows come from the training loader: the one place the runner and predictors use `any2text.data`.

`load_rows` reads `--data` with `load_spec` (so a benchmark reads exactly what training reads: Hub ids, dataset
folders, `save_to_disk` folders, `.json` / `.jsonl` / `.parquet` / `.csv` / `.arrow` files, media left undecoded),
and `resolve_media` applies the training media-root policy (`--media_root`, `--allow_media_outside_root`) to an
item's media references.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import datasets

from ..data.loading import BAD_ROW_COLUMN, DatasetSpec, default_media_root, load_spec
from ..data.media import resolve_path
from ..data.messages import map_media
from ..data.templates import get_template, register_template

# `load_spec` checks a template's required columns. A generation benchmark checks its own instead: its template is a
# training template that also needs the answer column, which unlabelled test splits lack. Its rows are read with
# this template, which requires nothing and is never applied.
ROWS_TEMPLATE = "Benchmark-Rows"


@register_template(ROWS_TEMPLATE)
def _benchmark_rows(row: dict[str, Any]) -> Any:
    raise TypeError(
        f"Template `{ROWS_TEMPLATE}` only loads the rows of an `any2text eval` benchmark, whose own template builds "
        "the prompts; train with the dataset's template instead."
    )


@dataclass
class Rows:
    """A benchmark's rows as loaded: the dataset (media undecoded), where it came from and its media root."""

    dataset: datasets.Dataset
    data: str
    subset: str | None
    split: str
    media_root: str | None


def load_rows(
    data: str,
    split: str | None,
    default_split: str,
    subset: str | None,
    template: str | None,
    media_root: str | None,
) -> Rows:
    """Load `data` with the training loader; `template`'s required columns are checked unless it is `None`.

    Without `split`, a local file's one split (`train`) is read, else `default_split`; a file with another `split`
    is read whole, with `load_spec`'s warning.
    """
    if split is None:
        split = "train" if os.path.isfile(data) else default_split
    spec = DatasetSpec(path=data, template=template or ROWS_TEMPLATE, split=split, name=subset, media_root=media_root)
    return Rows(load_spec(spec), data, subset, spec.split, default_media_root(spec))


def bad_row_reason(row: dict[str, Any]) -> str | None:
    """Why the loader could not store `row` with the other rows' types (a JSON row), or `None` for a good row."""
    return row.get(BAD_ROW_COLUMN)


def resolve_media(messages: Any, media_root: str | None, allow_outside_root: bool) -> Any:
    """`messages` with each path reference made absolute against `media_root` (the training policy: a path leading
    outside it raises `MediaOutsideRootError` unless `allow_outside_root`; a missing file `FileNotFoundError`).

    Embedded media (`{"bytes": ...}`, arrays, PIL images) pass unchanged. A pair keeps its type.
    """

    def resolve(modality: Any, ref: Any) -> Any:
        options = {"allow_outside_root": allow_outside_root, "folders": modality.folders}
        if isinstance(ref, str | os.PathLike):
            return resolve_path(ref, media_root, **options)
        if isinstance(ref, dict) and ref.get("bytes") is None and ref.get("path") and "array" not in ref:
            return {**ref, "path": resolve_path(ref["path"], media_root, **options)}
        return ref

    return map_media(messages, resolve)


def is_prompt_template(template: str) -> bool:
    """Whether `template` is a one-turn template with a question to answer (`register_prompt_template`)."""
    return get_template(template).prompt_fn is not None


def prompt_text(template: str, row: dict[str, Any], suffix: str | None) -> str:
    """The question `template` asks of `row`, with `suffix` as the instruction (`None`: the template's)."""
    return get_template(template).prompt(row, suffix)


def is_pair_template(template: str) -> bool:
    """Whether `template` makes preference pairs (prompt, chosen, rejected)."""
    from ..data.preference import is_preference_template

    return is_preference_template(template)


def row_pair(template: str, row: dict[str, Any]) -> Any:
    """The preference pair (`PreferenceMessages`) `template` makes of `row`."""
    from ..data.preference import PreferenceMessages

    pair = get_template(template)(row)
    if not isinstance(pair, PreferenceMessages):
        raise TypeError(f"Template `{template}` gives single answers, not preference pairs.")
    return pair


__all__ = [
    "ROWS_TEMPLATE",
    "Rows",
    "bad_row_reason",
    "is_pair_template",
    "is_prompt_template",
    "load_rows",
    "prompt_text",
    "resolve_media",
    "row_pair",
]
