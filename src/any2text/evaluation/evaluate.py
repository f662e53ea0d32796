"""Evaluate a checkpoint on one registered benchmark: predict, save predictions as they come, score.

    python -m any2text.evaluation.evaluate --model ckpt/ --benchmark mme --data lmms-lab/MME --output_dir eval/
    any2text eval --model out/dpo --benchmark preference --ref_model out/stage2 --data pairs.jsonl --output_dir eval/

One runner serves every benchmark of `any2text.evaluation.benchmarks.BENCHMARKS` (`register_benchmark` adds one),
whether it predicts by generating (`vqav2`, `mme`, `clotho`, ...) or by scoring pairs (`preference`, `reward`). It
writes ``eval/<benchmark>/predictions.jsonl`` (one object per item: id, prompt, the prediction fields, references,
meta), appended and flushed after every batch, then ``scores.json`` and ``scores.md``. Rerunning the same command
resumes: ids already in predictions.jsonl are not predicted again; a rerun with another model, dataset, template or
prediction setting into the same folder is refused unless `--overwrite True`. An item that cannot be evaluated (a
corrupt image, an unreadable row, a media path outside the media root) stops the run with an error naming its id;
with `--skip_bad_items True` it is skipped instead, counted and listed in scores.json (a rerun tries it again).
`--data` is read by the training loader (`any2text.data.loading.load_spec`): a Hub id, a dataset folder, or a single
.parquet / .json / .jsonl / .csv / .arrow file; it defaults to the benchmark's lmms-eval source. Relative media
paths start from `--media_root` (default: the data file's folder); paths leading outside it need
`--allow_media_outside_root True`.
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
from ..inference import DTypeName
from .benchmarks import BENCHMARKS, Benchmark, EvalItem, PredictFn, get_benchmark
from .rows import Rows, bad_row_reason, load_rows, resolve_media

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
    """Arguments of `any2text eval` (and `python -m any2text.evaluation.evaluate`), for every benchmark."""

    model: str = field(
        metadata={"help": "Checkpoint folder or Hub id: the generative model, or the reward model for `reward`."}
    )
    benchmark: str = field(metadata={"help": f"One of {sorted(BENCHMARKS)}."})
    output_dir: str = field(metadata={"help": "Results go to OUTPUT_DIR/<benchmark>/."})
    data: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, dataset folder or .parquet/.json/.jsonl/.csv/.arrow file. Default: the benchmark's."
        },
    )
    subset: str | None = field(default=None, metadata={"help": "Dataset config name (e.g. `en` for MMBench)."})
    split: str | None = field(
        default=None, metadata={"help": "Dataset split. Default: the benchmark's (a single file: its only split)."}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Template reading the rows instead of the benchmark's (pairs: AA_TI2T, AA_TA2T, RLAIF-V...)."
        },
    )
    media_root: str | None = field(
        default=None, metadata={"help": "Folder relative media paths start from. Default: the data file's folder."}
    )
    allow_media_outside_root: bool = field(
        default=False, metadata={"help": "Read media paths that lead outside the media root (refused otherwise)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first LIMIT rows."})
    batch_size: int = field(default=8, metadata={"help": "Items per batch (per forward / generation call)."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generation benchmarks: answer budget. Default: the benchmark's."}
    )
    prompt_suffix: str | None = field(
        default=None,
        metadata={"help": "Generation benchmarks: replace the instruction appended to each question."},
    )
    ref_model: str | None = field(
        default=None,
        metadata={"help": "`preference`: reference checkpoint; scores implicit-reward accuracy against it."},
    )
    score_blind: bool = field(
        default=True,
        metadata={"help": "Pair benchmarks: also score every pair with its media withheld (`blind_*` scores)."},
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
        options = get_benchmark(self.benchmark).predict.options
        for name in _PREDICTOR_OPTIONS:
            if getattr(self, name) is not None and name not in options:
                users = sorted(n for n, b in BENCHMARKS.items() if name in b.predict.options)
                raise ValueError(
                    f"`--{name}` does not apply to `--benchmark {self.benchmark}` (it is read by {users}); drop it."
                )


# Arguments only some predictors read (unset: None); passing one to a benchmark that ignores it is an error.
_PREDICTOR_OPTIONS = ("max_new_tokens", "prompt_suffix", "ref_model")


# ---------------------------------------------------------------------------------------------------------------------
# Data


def load_benchmark_rows(benchmark: Benchmark, args: EvalArguments) -> Rows:
    """The rows `args` select for `benchmark`, read by the training loader, columns checked."""
    data = args.data or benchmark.default_data
    if data is None:
        raise ValueError(f"Benchmark `{benchmark.name}` has no default dataset; pass `--data`.")
    subset = args.subset if args.subset is not None else (benchmark.default_subset if args.data is None else None)
    template = args.template or benchmark.template
    benchmark.predict.check(benchmark, template)
    # Without its own column list, a benchmark's rows are its template's: the loader checks them.
    checked = template if benchmark.required_columns is None else None
    rows = load_rows(data, args.split, benchmark.default_split, subset, checked, args.media_root)
    benchmark.check_columns(rows.dataset.column_names, template)
    return rows


def load_eval_dataset(data: str, split: str | None = None, subset: str | None = None) -> datasets.Dataset:
    """`data` (Hub id, folder, or one file) as the runner reads it: the training loader, media left undecoded."""
    return load_rows(data, split, split or "train", subset, None, None).dataset


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
    benchmark: Benchmark, dataset: datasets.Dataset, indices: Sequence[int], ids: Sequence[str],
    args: EvalArguments, media_root: str | None,
) -> tuple[list[EvalItem], list[BadItemError]]:  # fmt: skip
    """The items of rows `indices`, media paths resolved, and an error for each row that could not be prepared."""
    items, bad = [], []
    template = args.template or benchmark.template
    for row, index in zip(dataset.select(indices), indices):
        try:
            reason = bad_row_reason(row)
            if reason is not None:
                raise ValueError(reason)
            item = benchmark.build_item(row, index, args.prompt_suffix, template)
            item.messages = resolve_media(item.messages, media_root, args.allow_media_outside_root)
            items.append(item)
        except _BAD_ITEM_ERRORS as error:
            bad.append(_bad_item(benchmark, ids[index], index, error))
    return items, bad


def _predict(
    benchmark: Benchmark, predict: PredictFn, items: list[EvalItem], rows: dict[str, int]
) -> tuple[list[tuple[EvalItem, dict[str, Any]]], list[BadItemError]]:
    """Predictions of `items`; when the batch fails on its data, the items are retried one by one to find the bad
    ones."""
    if not items:
        return [], []
    if len(items) > 1:
        try:
            return list(zip(items, predict(items))), []
        except _BAD_ITEM_ERRORS:
            pass  # found item by item below
    done, bad = [], []
    for item in items:
        try:
            done.append((item, predict([item])[0]))
        except _BAD_ITEM_ERRORS as error:
            bad.append(_bad_item(benchmark, item.id, rows[item.id], error))
    return done, bad


# ---------------------------------------------------------------------------------------------------------------------
# Scores


def scores_markdown(benchmark: Benchmark, scores: dict[str, Any], num_items: int) -> str:
    """A Markdown table of the scores, headline first."""
    lines = [f"# {benchmark.name} ({benchmark.metric_name}, {num_items} items)", "", "| metric | value |", "|---|---|"]
    primary = benchmark.primary_key(scores)
    keys = sorted(scores, key=lambda k: (k != primary, k))
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


def _check_run(out_dir: Path, predictions_path: Path, benchmark: Benchmark, args: EvalArguments, rows: Rows) -> None:
    """Resume only the same run: predictions of another model, dataset or prompt must not mix into one score."""
    run = {"model": args.model, "data": rows.data, "subset": rows.subset, "split": rows.split}
    if args.template is not None:
        run["template"] = args.template
    run.update({key: getattr(args, key) for key in benchmark.predict.run_keys})
    run_path = out_dir / RUN_JSON
    if args.overwrite:
        predictions_path.unlink(missing_ok=True)
    elif predictions_path.exists():
        previous = json.loads(run_path.read_text(encoding="utf-8")) if run_path.exists() else {}
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
    """Predict the missing items of `args.benchmark`, then score all of them; returns the scores.json dict.

    `model` / `processor` may be passed in (already loaded); otherwise the benchmark's predictor loads them from
    `args.model`, and only if something is left to predict.
    """
    benchmark = get_benchmark(args.benchmark)
    rows = load_benchmark_rows(benchmark, args)
    dataset = merge_reference_rows(benchmark, rows.dataset)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))

    out_dir = Path(args.output_dir) / benchmark.name
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = out_dir / PREDICTIONS_FILE
    _check_run(out_dir, predictions_path, benchmark, args, rows)
    ids = item_ids(benchmark, dataset)
    done = {record["id"] for record in read_predictions(predictions_path)}
    pending = [i for i, item_id in enumerate(ids) if item_id not in done]
    logger.info(
        f"`{benchmark.name}`: {len(ids)} items, {len(ids) - len(pending)} already in {predictions_path}, "
        f"{len(pending)} to predict."
    )

    skipped: list[dict[str, Any]] = []
    if pending:
        predict = benchmark.predict.load(benchmark, args, model, processor)
        row_of = {ids[index]: index for index in pending}
        with tqdm(total=len(pending), desc=benchmark.name, unit="item") as progress:
            for start in range(0, len(pending), args.batch_size):
                chunk = pending[start : start + args.batch_size]
                items, bad = _prepare_items(benchmark, dataset, chunk, ids, args, rows.media_root)
                predicted, failed = _predict(benchmark, predict, items, row_of)
                # The good items of the batch are kept before a bad one stops the run.
                _append_predictions(
                    predictions_path,
                    [
                        {
                            "id": item.id,
                            "prompt": item.prompt,
                            **prediction,
                            "references": item.references,
                            "meta": item.meta,
                        }
                        for item, prediction in predicted
                    ],  # fmt: skip
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
        "metric": benchmark.metric_name,
        "primary_score": benchmark.primary_key(scores),
        "num_items": len(records),
        "num_skipped": len(skipped),
        "skipped_items": skipped,
        "scores": scores,
        "model": args.model,
        "data": rows.data,
        "subset": rows.subset,
        "split": rows.split,
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
    parser = HfArgumentParser(
        EvalArguments, prog="any2text eval", description="Score a checkpoint on a registered benchmark."
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    setup_logging()
    result = run_evaluation(args)
    print(scores_markdown(get_benchmark(args.benchmark), result["scores"], result["num_items"]))
    return result


if __name__ == "__main__":
    main()
