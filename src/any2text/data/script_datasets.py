"""Hub datasets that are loading scripts: read their parquet conversion instead.

`datasets` 4 and later no longer run dataset loading scripts (`HuggingFaceM4/VQAv2`, many older benchmarks): loading
one raises `RuntimeError("Dataset scripts are no longer supported, but found VQAv2.py")`. The Hub's dataset viewer
keeps a parquet conversion of such datasets on the repository's `refs/convert/parquet` branch, laid out
`<config>/<split>/0000.parquet` (`<config>/partial-<split>/...` when only the first rows were converted: the viewer
converts the first 5 GB of each split).
`load_hub_dataset` loads that conversion when the dataset is a script, and says so in the log::

    load_hub_dataset("HuggingFaceM4/VQAv2", split="validation")  # = load_dataset(..., revision="refs/convert/parquet")

A local folder holding a script has no conversion to fall back to: that is an error saying how to convert it.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
from transformers.utils import logging

logger = logging.get_logger(__name__)

PARQUET_REVISION = "refs/convert/parquet"
DEFAULT_CONFIG = "default"  # the conversion's folder for a dataset (or script) without named configs


def is_script_dataset_error(error: BaseException) -> bool:
    """Whether `error` is `datasets` refusing to run a loading script (datasets >= 4: a `RuntimeError` whose message
    says dataset scripts are no longer supported)."""
    message = str(error).lower()
    return isinstance(error, RuntimeError) and "script" in message and "no longer supported" in message


def parquet_conversion_files(split: str, name: str | None = None) -> dict[str, list[str]]:
    """`data_files` selecting one config's split in the `refs/convert/parquet` layout (whole or partial)::

    parquet_conversion_files("train", "en")  # {"train": ["en/train/*.parquet", "en/partial-train/*.parquet"]}
    """
    config, split = name or DEFAULT_CONFIG, split.split("[", 1)[0]  # `train[:100]` slices the `train` files
    return {split: [f"{config}/{split}/*.parquet", f"{config}/partial-{split}/*.parquet"]}


def load_hub_dataset(
    path: str, name: str | None = None, data_files: Any = None, split: str | None = None
) -> datasets.Dataset | datasets.DatasetDict:
    """`datasets.load_dataset(path, name=..., data_files=..., split=...)`, falling back to the dataset's parquet
    conversion (`revision="refs/convert/parquet"`) when `path` is a Hub loading script.

    Raises:
        ValueError: `path` is a local folder holding a loading script, or the conversion has no files for the config
            and split (the message says which, and how to fix it).
    """
    try:
        return datasets.load_dataset(path, name=name, data_files=data_files, split=split)
    except RuntimeError as error:
        if not is_script_dataset_error(error):
            raise
        script_error = error
    if os.path.isdir(path):
        raise ValueError(
            f"`{path}` is a dataset loading script, which `datasets` {datasets.__version__} no longer runs "
            f"({script_error}). Convert it once with a `datasets` < 4 (`load_dataset(...).to_parquet(...)`) or export "
            "its rows to parquet / JSON, and point the dataset at those files."
        ) from script_error
    if data_files is not None:
        raise ValueError(
            f"`{path}` is a dataset loading script, which `datasets` {datasets.__version__} no longer runs, and "
            f"`data_files={data_files}` names files of the script's repository, not of its parquet conversion. Leave "
            f"`data_files` out to load the conversion (`revision={PARQUET_REVISION}`), or download the files and point "
            "the dataset at them."
        ) from script_error
    split = split or "train"
    config = name or DEFAULT_CONFIG
    logger.warning(
        f"`{path}` is a dataset loading script, which `datasets` {datasets.__version__} no longer runs: loading its "
        f"parquet conversion instead (`revision={PARQUET_REVISION}`, config `{config}`, split `{split}`)."
    )
    try:
        return datasets.load_dataset(
            path, revision=PARQUET_REVISION, data_files=parquet_conversion_files(split, name), split=split
        )
    except FileNotFoundError as error:  # datasets' "Unable to find ..." when no file matches the patterns
        raise ValueError(
            f"`{path}` is a dataset loading script and its parquet conversion (`revision={PARQUET_REVISION}`) has no "
            f"files for config `{config}`, split `{split}` ({error}). Its configs are the top folders of that branch "
            "(see the dataset page's viewer): pass the right one as the dataset's `name` (`--train_name`) and check "
            "the split."
        ) from error


__all__ = [
    "DEFAULT_CONFIG",
    "PARQUET_REVISION",
    "is_script_dataset_error",
    "load_hub_dataset",
    "parquet_conversion_files",
]
