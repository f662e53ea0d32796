"""Bad rows: the error that names one, and the log that counts them, caps them and says what probably went wrong.

A *bad row* is a dataset row that cannot become a training sample: a missing or corrupt media file, a value of the
wrong type, a conversation that breaks the rules, a sample longer than `max_length` under `truncation="error"`...
Without `skip_bad_rows` the first one stops the run with a `BadRowError` naming the dataset, the row and the fix.
With it, each bad row is recorded once in a `BadRowLog` (however often it is drawn), written to `bad_rows.jsonl`, and
training stops with a `TooManyBadRowsError` once a dataset has more bad rows than `max_bad_rows` allows: a wrong
`--media_root` must not leave a run training on the text rows alone.

Counts are per process (each DataLoader worker and rank keeps its own log); the file gathers them all, and
`BadRowLog.summary` reads it back, so the end-of-training summary counts every process' rows once.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

# 1% of a dataset's rows: a few missing files in a large corpus are skipped, a wrong media root is not.
DEFAULT_MAX_BAD_ROWS = 0.01
BAD_ROWS_FILE = "bad_rows.jsonl"

_FIXES = {
    "missing_media": "the media files are not where the rows say: check `--media_root` (relative paths start there){}",
    "media_outside_root": "the rows' media paths lead outside the media root: fix `--media_root`{}, or pass "
    "`--allow_media_outside_root True` if the dataset is trusted",
    "undecodable_media": "the media files are corrupt or in a format that cannot be read: re-download or convert them",
    "oversized_media": "the images have more pixels than PIL decodes safely (`PIL.Image.MAX_IMAGE_PIXELS`): resize "
    "them",
    "non_finite_media": "the media hold NaN or infinite values: regenerate the files",
    "empty_media": "the videos hold no frames: replace the files",
    "too_short_media": "the videos have fewer frames than the processor's `num_frames`: lower it, sample by `fps`, "
    "or replace the files",
    "too_long": "the samples are longer than `--max_length`: raise it, or pass `--truncation drop` / "
    "`--truncation text`",
    "wrongly_typed_value": "the rows hold values of the wrong type (a number where text is expected...): fix the file",
    "invalid_conversation": "the conversations break the rules (empty answers, roles out of order): fix the rows",
    "invalid_row": "the rows do not match the template: check `--train_template` for this dataset",
}


def cause_of(error: BaseException) -> str:
    """A short name for why a row is bad, from the error or the errors it was raised from."""
    seen = error
    while seen is not None:
        cause = getattr(seen, "cause", None)
        if isinstance(cause, str):
            return cause
        if isinstance(seen, FileNotFoundError):
            return "missing_media"
        seen = seen.__cause__
    return "invalid_row"


class BadRowError(ValueError):
    """A row that cannot become a training sample; names the dataset, the row index (and id) and the fix.

    Args:
        message: the full message (dataset, row, what is wrong, the fix).
        dataset: the dataset's name (`str(DatasetSpec)`).
        index: the row's index in that dataset (`None` for a sample that does not say which row it is).

    Everything but the message has a default so that the error survives the trip from a DataLoader worker, which
    re-creates it from its message alone.
        row_id: the row's `id` (or `question_id`...), when it has one.
        cause: a short name for what is wrong (see `cause_of`); taken from the error it was raised from if `None`.
    """

    def __init__(
        self,
        message: str,
        dataset: str | None = None,
        index: int | None = None,
        row_id: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.index = index
        self.row_id = row_id
        self._cause = cause

    @property
    def cause(self) -> str:
        if self._cause is not None:
            return self._cause
        return cause_of(self.__cause__) if self.__cause__ is not None else "invalid_row"


class TooManyBadRowsError(RuntimeError):
    """More bad rows than `max_bad_rows` allows: training stops, with a summary pointing at the likely cause."""


@dataclass
class BadRow:
    dataset: str
    index: int
    id: str | None
    cause: str
    error: str


def check_max_bad_rows(value: Any) -> float:
    """`max_bad_rows` as a number: a count (a whole number >= 1, or `inf`) or a fraction of each dataset's rows."""
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`max_bad_rows` must be a number, got {value!r}.") from error
    if math.isnan(number) or number < 0 or (1 <= number < math.inf and number != int(number)):
        raise ValueError(
            f"`max_bad_rows={value}` must be a whole number of rows (e.g. `100`), a fraction of each dataset's rows "
            "below 1 (e.g. `0.01`), `0` (no bad row allowed) or `inf` (no cap)."
        )
    return number


class BadRowLog:
    """Unique bad rows per dataset and cause, a cap, and a `bad_rows.jsonl` file.

    Args:
        max_bad_rows: per dataset, the most bad rows tolerated before training stops: a count (`100`), a fraction of
            the dataset's rows (`0.01`, the default), `0` or `inf`.
        path: file each new bad row is appended to as one JSON line (`output_dir/bad_rows.jsonl` in training).

    Example:
        >>> log = BadRowLog(max_bad_rows=1)
        >>> log.add_dataset("`a.json` [train]", num_rows=100)
        >>> log.record(BadRowError("Row 3 is bad.", dataset="`a.json` [train]", index=3))
        True
        >>> log.record(BadRowError("Row 3 is bad.", dataset="`a.json` [train]", index=3))  # already counted
        False
    """

    def __init__(self, max_bad_rows: float | int | str = DEFAULT_MAX_BAD_ROWS, path: str | None = None) -> None:
        self.max_bad_rows = check_max_bad_rows(max_bad_rows)
        self.path = path
        self.rows: dict[tuple[str, int], BadRow] = {}
        self.dataset_sizes: dict[str, int] = {}
        self.media_roots: dict[str, str | None] = {}
        self._unnamed = 0

    def add_dataset(self, name: str, num_rows: int, media_root: str | None = None) -> None:
        """Declare a dataset: its size sets a fractional cap, its media root goes into the hints."""
        self.dataset_sizes[name] = num_rows
        self.media_roots[name] = media_root

    def limit(self, dataset: str) -> float:
        """How many bad rows `dataset` may have before training stops."""
        if self.max_bad_rows >= 1 or self.max_bad_rows == 0:
            return self.max_bad_rows
        size = self.dataset_sizes.get(dataset)
        return math.inf if size is None else math.floor(self.max_bad_rows * size)

    def record(self, error: BadRowError) -> bool:
        """Count the row of `error` once; `True` when it is new.

        Raises:
            TooManyBadRowsError: the row's dataset now has more bad rows than `max_bad_rows` allows.
        """
        index = error.index
        if index is None:  # a sample that came without its row: every occurrence counts
            self._unnamed += 1
            index = -self._unnamed
        key = (error.dataset, index)
        if key in self.rows:
            return False
        row = BadRow(dataset=error.dataset, index=index, id=error.row_id, cause=error.cause, error=str(error))
        self.rows[key] = row
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # One short line per write, in append mode: processes sharing the file do not tear each other's lines.
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(row)) + "\n")
        count = sum(1 for name, _ in self.rows if name == error.dataset)
        logger.warning(f"Skipping bad row ({count} in this dataset so far): {error}")
        if count > self.limit(error.dataset):
            raise TooManyBadRowsError(self._stop_message(error.dataset))
        return True

    # -----------------------------------------------------------------------------------------------------------------
    # Reporting

    def all_rows(self) -> list[BadRow]:
        """This process' bad rows plus those other processes wrote to `path`, each once."""
        rows = dict(self.rows)
        if self.path is not None and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = BadRow(**json.loads(line))
                    except (json.JSONDecodeError, TypeError):
                        continue  # a line cut short by a killed process
                    rows.setdefault((row.dataset, row.index), row)
        return list(rows.values())

    def counts(self) -> Counter[tuple[str, str]]:
        """Unique bad rows per `(dataset, cause)`, all processes included."""
        return Counter((row.dataset, row.cause) for row in self.all_rows())

    @property
    def num_rows(self) -> int:
        return len(self.all_rows())

    def likely_cause(self, dataset: str) -> str:
        """What most of `dataset`'s bad rows have in common, and the fix, in one sentence."""
        rows = [row for row in self.all_rows() if row.dataset == dataset]
        if not rows:
            return ""
        cause, count = Counter(row.cause for row in rows).most_common(1)[0]
        root = self.media_roots.get(dataset)
        where = f" (now `{root}`)" if root else ""
        fix = _FIXES.get(cause, _FIXES["invalid_row"]).format(where)
        example = next(row for row in rows if row.cause == cause)
        share = "All" if count == len(rows) else f"{count} of {len(rows)}"
        return f"{share} of its bad rows are `{cause}`: {fix}. Example: {example.error}"

    def summary(self) -> str:
        """Unique bad rows per dataset and cause, and where the full list is; empty when there are none."""
        counts = self.counts()
        if not counts:
            return ""
        per_dataset: dict[str, list[str]] = {}
        for (dataset, cause), count in sorted(counts.items()):
            per_dataset.setdefault(dataset, []).append(f"{count} {cause}")
        total = sum(counts.values())
        lines = [f"Skipped {total} bad row{'s' if total != 1 else ''} (each counted once):"]
        lines += [f"  {dataset}: {', '.join(causes)}" for dataset, causes in per_dataset.items()]
        if self.path is not None:
            lines.append(f"The list is in `{self.path}`.")
        return "\n".join(lines)

    def _stop_message(self, dataset: str) -> str:
        count = sum(1 for name, _ in self.rows if name == dataset)
        size = self.dataset_sizes.get(dataset)
        of = f" of its {size} rows" if size is not None else ""
        allowed = (
            f"`max_bad_rows={self.max_bad_rows:g}`"
            if self.max_bad_rows >= 1 or self.max_bad_rows == 0
            else f"`max_bad_rows={self.max_bad_rows:g}` ({self.limit(dataset):g} rows)"
        )
        return (
            f"Stopping: dataset {dataset} has {count} bad rows{of} so far, more than {allowed} allows. "
            f"{self.likely_cause(dataset)}\n{self.summary()}\nFix the data, or raise `--max_bad_rows` if skipping "
            "that many rows is intended."
        )


__all__ = [
    "BAD_ROWS_FILE",
    "DEFAULT_MAX_BAD_ROWS",
    "BadRow",
    "BadRowError",
    "BadRowLog",
    "TooManyBadRowsError",
    "cause_of",
    "check_max_bad_rows",
]
