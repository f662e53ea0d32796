"""Evaluate a checkpoint on one benchmark: generate, save predictions as they come, score.

    python -m any2text.evaluation.evaluate --model ckpt/ --benchmark mme --data lmms-lab/MME --output_dir eval/

writes ``eval/mme/predictions.jsonl`` (one object per item: id, prompt, prediction, references, meta), appended and
flushed after every batch, then ``eval/mme/scores.json`` and ``eval/mme/scores.md``. Rerunning the same command
resumes: ids already in predictions.jsonl are not generated again. An item that cannot be evaluated (a corrupt image,
an unreadable row) stops the run with an error naming its id; with `--skip_bad_items True` it is skipped instead,
counted and listed in scores.json (a rerun tries it again). `--data` takes a Hub id, a local dataset folder,
or a single .parquet / .json / .jsonl / .csv / .arrow file; it defaults to the benchmark's lmms-eval source.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging

from ..cli import setup_logging
from ..data.loading import FILE_BUILDERS
from ..inference import DTypeName, decode_media, generate_batch, load_inference_model
from .benchmarks import BENCHMARKS, Benchmark, EvalItem, get_benchmark

# Under `python -m` __name__ is "__main__"; the spec name keeps the logger under the "any2text" hierarchy.
logger = logging.get_logger(__spec__.name if __spec__ is not None else __name__)


RUN_JSON = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
SCORES_JSON = "scores.json"
SCORES_MD = "scores.md"
# What a bad row or medium raises (media decoding, row readers, processors); anything else is a real failure.
_BAD_ITEM_ERRORS = (ValueError, TypeError, KeyError, OSError)


class BadItemError(ValueError):
    """An item that cannot be evaluated; names the benchmark, the item id, its row and the fix."""

    def __init__(self, message: str, item_id: str, row: int, reason: str):
        super().__init__(message)
        self.item_id = item_id
        self.row = row
        self.reason = reason


@dataclass
class EvalArguments:
    """Arguments of `python -m any2text.evaluation.evaluate` (and `any2text eval`)."""

    model: str = field(metadata={"help": "Checkpoint folder or Hub id loadable with AutoModelForImageTextToText."})
    benchmark: str = field(metadata={"help": f"One of {sorted(BENCHMARKS)}."})
    output_dir: str = field(metadata={"help": "Results go to OUTPUT_DIR/<benchmark>/."})
    data: str | None = field(
        default=None,
        metadata={"help": "Hub id, local dataset folder or .parquet/.json/.jsonl file. Default: the benchmark's."},
    )
    subset: str | None = field(default=None, metadata={"help": "Dataset config name (e.g. `en` for MMBench)."})
    split: str | None = field(default=None, metadata={"help": "Dataset split. Default: the benchmark's."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first LIMIT rows."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Default: the benchmark's budget."})
    prompt_suffix: str | None = field(
        default=None, metadata={"help": "Replace the benchmark's instruction appended to each question."}
    )
    dtype: DTypeName = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16 or float16."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Start over: delete earlier predictions (otherwise a rerun resumes where it stopped)."},
    )
    skip_bad_items: bool = field(
        default=False,
        metadata={
            "help": "Skip items whose row or media cannot be read (counted, logged, listed in scores.json under "
            "`skipped_items`) instead of stopping with an error naming the item."
        },
    )

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"Unknown `--benchmark {self.benchmark}`; choose one of {sorted(BENCHMARKS)}.")
        if self.batch_size < 1:
            raise ValueError(f"`--batch_size` must be >= 1, got {self.batch_size}.")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"`--limit` must be >= 0, got {self.limit}.")


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_eval_dataset(data: str, split: str | None = None, subset: str | None = None) -> datasets.Dataset:
    """Load `data` (Hub id, folder, or one file) as a `Dataset`, with audio kept as raw bytes.

    Image and audio columns are cast to `decode=False`: decoding happens later, item by item, with
    `any2text.data.media` (torchcodec, datasets' audio decoder, is not usable everywhere) and only for rows that are
    actually generated, so a corrupt medium is reported as that item's error rather than breaking a whole batch read.
    """
    path = Path(data)
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"`--data {data}`: unsupported file type; use one of {sorted(FILE_BUILDERS)}.")
        # A single file is always datasets' "train" split, whatever --split says.
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        dataset = datasets.load_dataset(data, subset, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"`--data {data}` has several splits {list(dataset)}; choose one with `--split`.")
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Audio(decode=False))
        elif isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def item_ids(benchmark: Benchmark, dataset: datasets.Dataset) -> list[str]:
    """Stable ids of every row, read without decoding any media; raises on duplicates (resume needs unique ids)."""
    columns = [c for c in benchmark.id_columns if c in dataset.column_names]
    table = dataset.select_columns(columns)[:] if columns else {}
    ids = [benchmark.item_id({c: table[c][i] for c in columns}, i) for i in range(len(dataset))]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(
            f"Benchmark `{benchmark.name}`: id `{duplicate}` (from column(s) {columns or 'row index'}) occurs more "
            "than once, so predictions could not be matched to rows on resume. Deduplicate the dataset first."
        )
    return ids


# ---------------------------------------------------------------------------------------------------------------------
# Predictions file


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a predictions.jsonl; a torn last line (a crash mid-write) is cut off the file with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    good_bytes = 0
    with path.open("rb") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                logger.warning(f"{path}: dropping an incomplete last line (interrupted write); it is regenerated.")
                with path.open("r+b") as handle:
                    handle.truncate(good_bytes)
                break
            raise ValueError(f"{path} line {number} is not valid JSON ({err}); fix or delete that line.") from err
        good_bytes += len(line)
    if lines and not lines[-1].endswith(b"\n") and len(records) == len(lines):
        # Cut just before its newline: complete, but the next append would join two records on one line.
        with path.open("ab") as handle:
            handle.write(b"\n")
    return records


def _append_predictions(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        # A killed job must not lose a finished batch.
        os.fsync(handle.fileno())


def _bad_item(benchmark: Benchmark, item_id: str, row: int, error: Exception) -> BadItemError:
    reason = str(error).strip().rstrip(".") or type(error).__name__
    return BadItemError(
        f"Benchmark `{benchmark.name}`: item `{item_id}` (row {row}) cannot be evaluated: {reason}. Fix or drop that "
        "row, or pass `--skip_bad_items True` to skip such items (counted, and listed in scores.json).",
        item_id=item_id,
        row=row,
        reason=reason,
    )


def _prepare_items(
    benchmark: Benchmark,
    dataset: datasets.Dataset,
    indices: Sequence[int],
    ids: Sequence[str],
    processor: Any,
    prompt_suffix: str | None,
) -> tuple[list[EvalItem], list[BadItemError]]:
    """The items of rows `indices` with their media decoded, and an error for each row that could not be prepared."""
    items, bad = [], []
    for row, index in zip(dataset.select(indices), indices):
        try:
            item = benchmark.build_item(row, index, prompt_suffix)
            item.messages = decode_media(item.messages, processor)
            items.append(item)
        except _BAD_ITEM_ERRORS as error:
            bad.append(_bad_item(benchmark, ids[index], index, error))
    return items, bad


def _generate(
    benchmark: Benchmark,
    model: Any,
    processor: Any,
    items: list[EvalItem],
    rows: dict[str, int],
    max_new_tokens: int,
    batch_size: int,
) -> tuple[list[tuple[EvalItem, str]], list[BadItemError]]:
    """Answers of `items`; when the batch fails on its data, the items are retried one by one to find the bad ones."""
    if not items:
        return [], []
    kwargs = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    if len(items) > 1:
        try:
            answers = generate_batch(model, processor, [item.messages for item in items], **kwargs)
            return list(zip(items, answers)), []
        except _BAD_ITEM_ERRORS:
            pass  # found item by item below
    done, bad = [], []
    for item in items:
        try:
            done.append((item, generate_batch(model, processor, [item.messages], **kwargs)[0]))
        except _BAD_ITEM_ERRORS as error:
            bad.append(_bad_item(benchmark, item.id, rows[item.id], error))
    return done, bad


# ---------------------------------------------------------------------------------------------------------------------
# Scores


def scores_markdown(benchmark: Benchmark, scores: dict[str, Any], num_items: int) -> str:
    """A Markdown table of the scores, headline first."""
    lines = [f"# {benchmark.name} ({benchmark.metric}, {num_items} items)", "", "| metric | value |", "|---|---|"]
    keys = sorted(scores, key=lambda k: (k != benchmark.primary_score, k))
    for key in keys:
        value = scores[key]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"


def score_predictions(benchmark: Benchmark | str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scores of prediction records (the objects of predictions.jsonl) with the benchmark's metric."""
    if isinstance(benchmark, str):
        benchmark = get_benchmark(benchmark)
    return benchmark.score(records)


# ---------------------------------------------------------------------------------------------------------------------
# Runner


def _check_run(
    out_dir: Path, predictions_path: Path, args: EvalArguments, data: str, subset: str | None, split: str | None
) -> None:
    """Resume only the same run: predictions of another model, dataset or prompt must not mix into one score."""
    run = {
        "model": args.model,
        "data": data,
        "subset": subset,
        "split": split,
        "prompt_suffix": args.prompt_suffix,
        "max_new_tokens": args.max_new_tokens,
    }
    run_path = out_dir / RUN_JSON
    if args.overwrite:
        predictions_path.unlink(missing_ok=True)
    elif predictions_path.exists() and run_path.exists():
        previous = json.loads(run_path.read_text(encoding="utf-8"))
        changed = {key: (previous.get(key), value) for key, value in run.items() if previous.get(key) != value}
        if changed:
            details = ", ".join(f"`{key}` {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"{predictions_path} holds predictions of another run ({details}). Use another `--output_dir`, or "
                "pass `--overwrite True` to start over."
            )
    run_path.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")


def merge_reference_rows(benchmark: Benchmark, dataset: datasets.Dataset) -> datasets.Dataset:
    """One item per clip for datasets that list one caption per row (AudioCaps val/test: 5 rows per clip).

    Scored row by row, every clip would be generated 5 times and CIDEr-D would see one reference per item (and
    duplicated document frequencies) instead of the standard 5. The first row of each group stays, with a
    `captions` column holding every caption of the group.
    """
    columns = benchmark.group_columns
    if not columns or "caption" not in dataset.column_names or not set(columns) <= set(dataset.column_names):
        return dataset
    keys = list(zip(*(dataset[column] for column in columns)))
    first: dict[tuple, int] = {}
    captions: dict[tuple, list[str]] = {}
    for index, (key, caption) in enumerate(zip(keys, dataset["caption"])):
        first.setdefault(key, index)
        captions.setdefault(key, []).append(caption)
    if len(first) == len(keys):
        return dataset
    kept = sorted(first.values())
    logger.info(f"`{benchmark.name}`: {len(keys)} rows are {len(kept)} items (all captions of an item as references).")
    merged = dataset.select(kept)
    if "captions" in merged.column_names:
        merged = merged.remove_columns("captions")
    return merged.add_column("captions", [captions[keys[index]] for index in kept])


def run_evaluation(args: EvalArguments, model: Any = None, processor: Any = None) -> dict[str, Any]:
    """Generate the missing predictions for `args.benchmark`, then score all of them; returns the scores.json dict.

    `model` / `processor` may be passed in (already loaded); otherwise they are loaded from `args.model`, and only
    if something is left to generate.
    """
    benchmark = get_benchmark(args.benchmark)
    data = args.data or benchmark.default_data
    if data is None:
        raise ValueError(f"Benchmark `{benchmark.name}` has no default dataset; pass `--data`.")
    split = args.split or benchmark.default_split
    subset = args.subset if args.subset is not None else (benchmark.default_subset if args.data is None else None)
    dataset = load_eval_dataset(data, split=split, subset=subset)
    benchmark.check_columns(dataset.column_names)
    dataset = merge_reference_rows(benchmark, dataset)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))

    out_dir = Path(args.output_dir) / benchmark.name
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = out_dir / PREDICTIONS_FILE
    _check_run(out_dir, predictions_path, args, data, subset, split)
    ids = item_ids(benchmark, dataset)
    done = {record["id"] for record in read_predictions(predictions_path)}
    pending = [i for i, item_id in enumerate(ids) if item_id not in done]
    logger.info(
        f"`{benchmark.name}`: {len(ids)} items, {len(ids) - len(pending)} already in {predictions_path}, "
        f"{len(pending)} to generate."
    )

    skipped: list[dict[str, Any]] = []
    if pending:
        if model is None or processor is None:
            model, processor = load_inference_model(args.model, args.dtype, args.device)
        max_new_tokens = args.max_new_tokens or benchmark.max_new_tokens
        rows = {ids[index]: index for index in pending}
        with tqdm(total=len(pending), desc=benchmark.name, unit="item") as progress:
            for start in range(0, len(pending), args.batch_size):
                chunk = pending[start : start + args.batch_size]
                items, bad = _prepare_items(benchmark, dataset, chunk, ids, processor, args.prompt_suffix)
                answered, failed = _generate(
                    benchmark, model, processor, items, rows, max_new_tokens, batch_size=args.batch_size
                )
                # The good items of the batch are kept before a bad one stops the run.
                _append_predictions(
                    predictions_path,
                    [
                        {
                            "id": item.id,
                            "prompt": item.prompt,
                            "prediction": answer,
                            "references": item.references,
                            "meta": item.meta,
                        }
                        for item, answer in answered
                    ],
                )
                for error in sorted(bad + failed, key=lambda e: e.row):
                    if not args.skip_bad_items:
                        raise error
                    skipped.append({"id": error.item_id, "row": error.row, "error": error.reason})
                    logger.warning(f"Skipping item `{error.item_id}` ({len(skipped)} skipped so far): {error}")
                progress.update(len(chunk))
        if skipped:
            logger.warning(
                f"`{benchmark.name}`: skipped {len(skipped)} bad item(s) of {len(pending)}; see scores.json."
            )

    # Score exactly the selected rows, in dataset order, even if the file holds more (an earlier larger --limit).
    by_id = {record["id"]: record for record in read_predictions(predictions_path)}
    records = [by_id[item_id] for item_id in ids if item_id in by_id]
    if skipped and not records:
        raise ValueError(
            f"Benchmark `{benchmark.name}`: every one of the {len(skipped)} items was bad (first: {skipped[0]['error']}); "
            "nothing to score. Check `--data`."
        )
    scores = score_predictions(benchmark, records)
    result = {
        "benchmark": benchmark.name,
        "metric": benchmark.metric,
        "primary_score": benchmark.primary_score,
        "num_items": len(records),
        "num_skipped": len(skipped),
        "skipped_items": skipped,
        "scores": scores,
        "model": args.model,
        "data": data,
        "subset": subset,
        "split": split,
        "arguments": asdict(args),
    }
    (out_dir / SCORES_JSON).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    markdown = scores_markdown(benchmark, scores, len(records))
    if skipped:
        markdown += (
            f"\n{len(skipped)} bad item(s) skipped (`--skip_bad_items`); see `skipped_items` in {SCORES_JSON}.\n"
        )
    (out_dir / SCORES_MD).write_text(markdown, encoding="utf-8")
    logger.info(f"`{benchmark.name}` scores written to {out_dir / SCORES_JSON}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; `argv` defaults to `sys.argv[1:]`. Prints the Markdown score table."""
    parser = HfArgumentParser(EvalArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    setup_logging()
    result = run_evaluation(args)
    print(scores_markdown(get_benchmark(args.benchmark), result["scores"], result["num_items"]))
    return result


if __name__ == "__main__":
    main()
