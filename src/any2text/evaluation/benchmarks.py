"""Benchmark registry: which template prompts a row of each evaluation set, its references, and the metric.

The prompt is the named training template's (`any2text.data.templates`), so a model trained here is scored on the
instruction it learned; the templates follow lmms-eval's default `doc_to_text` where a standard exists, so numbers
are comparable with published ones::

    >>> from any2text.evaluation.benchmarks import get_benchmark
    >>> bench = get_benchmark("vqav2")
    >>> item = bench.build_item({"question_id": 1, "question": "How many dogs?", "image": img,
    ...                          "answers": [{"answer": "2"}] * 10}, row_index=0)
    >>> item.prompt
    'How many dogs?\\nAnswer the question using a single word or phrase.'

`item.messages` uses the project-wide format ``[{"role": "user", "content": [{"type": "image", "image": ...},
{"type": "text", "text": ...}]}]``; media are passed through as stored in the row (PIL image, ``{"bytes", "path"}``
or ``{"array", "sampling_rate"}``) and loaded by `any2text.inference`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from ..data.templates import (
    LETTERS,
    SHORT_ANSWER_PROMPT,
    Template,
    as_list,
    get_template,
    is_missing,
    mmbench_choices,
)
from .metrics import load_metric

logger = logging.get_logger(__name__)

# lmms-eval's OK-VQA instruction; the other benchmarks ask what their template does. `--prompt_suffix` overrides both.
OKVQA_SUFFIX = "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER_PROMPT

# Metrics whose `references` input is one string per item (the others take a list of acceptable answers).
_SCALAR_REFERENCE_METRICS = {"mme", "mmbench", "wer"}


@dataclass
class EvalItem:
    """One evaluation example: a stable `id`, chat `messages`, acceptable `references` and extra metric inputs."""

    id: str
    messages: list[dict[str, Any]]
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text of the user turn (media left out), as recorded in predictions.jsonl."""
        return "".join(part["text"] for part in self.messages[-1]["content"] if part["type"] == "text")


# (row, row index) -> (references, metric meta).
ReferenceReader = Callable[[dict[str, Any], int], tuple[list[str], dict[str, Any]]]


@dataclass(frozen=True)
class Benchmark:
    """Everything the runner needs to know about one benchmark.

    Args:
        name: registry key, e.g. `"vqav2"`.
        metric: packaged metric name (see `any2text.evaluation.metrics.METRIC_NAMES`).
        modality: `"image"` or `"audio"`: the media column put in front of the prompt.
        media_column: the row column holding the image / audio.
        required_columns: columns a row must have; checked once before generation starts.
        id_columns: columns tried in order for a stable item id; the row index is used when none is present.
        template: the registered template whose `prompt(row, suffix)` asks the question.
        references: reads a row's references and the metric's extra inputs.
        prompt_suffix: the instruction appended to the question when it is not the template's own; `None`: the
            template's.
        default_data / default_subset / default_split: where lmms-eval reads the benchmark from.
        max_new_tokens: generation budget used unless the caller sets one.
        primary_score: the headline key of the metric's result.
        group_columns: for datasets with one reference per row (AudioCaps: 5 rows per clip), the columns that
            identify one item; its rows become one item with every reference.
    """

    name: str
    metric: str
    modality: str
    media_column: str
    required_columns: tuple[str, ...]
    id_columns: tuple[str, ...]
    template: str
    references: ReferenceReader
    default_data: str | None
    default_split: str
    max_new_tokens: int
    primary_score: str
    default_subset: str | None = None
    prompt_suffix: str | None = None
    group_columns: tuple[str, ...] = ()

    @property
    def prompt_template(self) -> Template:
        return get_template(self.template)

    def item_id(self, row: dict[str, Any], row_index: int) -> str:
        for column in self.id_columns:
            if column in row and row[column] is not None:
                return str(row[column])
        return str(row_index)

    def check_columns(self, column_names: Sequence[str]) -> None:
        missing = [c for c in self.required_columns if c not in column_names]
        if missing:
            raise ValueError(
                f"Benchmark `{self.name}` needs columns {missing} that the dataset lacks (it has "
                f"{list(column_names)}). Point `--data` at a {self.name} dataset (default `{self.default_data}`) "
                "or pick the matching `--benchmark`."
            )

    def build_item(self, row: dict[str, Any], row_index: int, prompt_suffix: str | None = None) -> EvalItem:
        """Turn one dataset row into an `EvalItem`; `prompt_suffix` overrides the benchmark's default."""
        suffix = next((s for s in (prompt_suffix, self.prompt_suffix) if s is not None), None)
        try:
            text = self.prompt_template.prompt(row, suffix)
            references, meta = self.references(row, row_index)
        except (KeyError, TypeError, ValueError, SyntaxError) as err:
            raise ValueError(f"Benchmark `{self.name}`: cannot read row {row_index}: {err!r}.") from err
        media = row.get(self.media_column)
        if media is None:
            raise ValueError(
                f"Benchmark `{self.name}`: row {row_index} has no `{self.media_column}`; drop rows without media "
                "before evaluating (a text-only answer would silently be scored)."
            )
        content = [{"type": self.modality, self.modality: media}, {"type": "text", "text": text}]
        return EvalItem(
            id=self.item_id(row, row_index),
            messages=[{"role": "user", "content": content}],
            references=references,
            meta=meta,
        )

    def metric_inputs(self, records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """Keyword arguments for the metric's `compute` from prediction records (predictions.jsonl objects)."""
        inputs: dict[str, list[Any]] = {"predictions": [r["prediction"] for r in records]}
        if self.metric in _SCALAR_REFERENCE_METRICS:
            inputs["references"] = [r["references"][0] for r in records]
        else:
            inputs["references"] = [list(r["references"]) for r in records]
        for key in records[0].get("meta", {}) if records else ():
            inputs[key] = [r["meta"][key] for r in records]
        return inputs

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Score prediction records with the benchmark's metric; records without references are left out."""
        labelled = [r for r in records if r.get("references")]
        if len(labelled) < len(records):
            logger.warning(
                f"`{self.name}`: {len(records) - len(labelled)} of {len(records)} predictions have no references "
                "(an unlabelled test split?) and are not scored."
            )
        if not labelled:
            return {}
        return load_metric(self.metric).compute(**self.metric_inputs(labelled))


# ---------------------------------------------------------------------------------------------------------------------
# Row readers


def _answer_strings(value: Any) -> list[str]:
    """VQAv2 answers are dicts `{answer, answer_confidence, answer_id}`; OK-VQA / A-OKVQA plain strings."""
    if value is None:
        return []
    answers = []
    for answer in as_list(value):
        answers.append(str(answer["answer"] if isinstance(answer, dict) else answer))
    return answers


def _captions(row: dict[str, Any]) -> list[str]:
    """Reference captions from the layouts in use: a list column, Clotho's caption_1..5, or joined text."""
    for column in ("captions", "raw_text", "caption"):
        value = row.get(column)
        if isinstance(value, (list, tuple)) and value:
            return [str(c) for c in value]
    numbered = [row[f"caption_{i}"] for i in range(1, 6) if isinstance(row.get(f"caption_{i}"), str)]
    if numbered:
        return numbered
    for column in ("caption", "raw_text", "text"):
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            if column == "caption":
                return [value]
            # CLAPv2/Clotho stores the 5 captions joined by ". ".
            return [c.strip() for c in re.split(r"\.\s+", value.strip().rstrip(".")) if c.strip()]
    raise ValueError("no reference captions in `captions`, `raw_text`, `caption`, `caption_1..5` or `text`")


def _answers(column: str) -> ReferenceReader:
    return lambda row, row_index: (_answer_strings(row.get(column)), {})


def _aokvqa_mc(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    correct = row.get("correct_choice_idx")
    references = [] if is_missing(correct) else [LETTERS[int(correct)]]
    # Each row is its own group: the mmbench metric then reduces to plain multiple-choice accuracy.
    return references, {"index": row_index, "category": "aokvqa", "choices": [str(c) for c in as_list(row["choices"])]}


def _answer(row: dict[str, Any]) -> list[str]:
    answer = row.get("answer")
    return [] if is_missing(answer) else [str(answer).strip()]


def _mme(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    return _answer(row), {"question_id": str(row["question_id"]), "category": str(row["category"])}


def _mmbench(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    return _answer(row), {
        "index": int(row["index"]),
        "category": str(row["category"]),
        "choices": mmbench_choices(row),
    }


def _asr(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    return [] if is_missing(row["text"]) else [str(row["text"])], {}


def _aqa(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    answer = row.get("answer")
    return [] if is_missing(answer) else _answer_strings(answer), {}


# ---------------------------------------------------------------------------------------------------------------------
# Registry

_IMAGE = {"modality": "image", "media_column": "image"}
_AUDIO = {"modality": "audio", "media_column": "audio"}

BENCHMARKS: dict[str, Benchmark] = {
    bench.name: bench
    for bench in (
        Benchmark(
            name="vqav2",
            metric="vqa_accuracy",
            **_IMAGE,
            required_columns=("image", "question"),
            id_columns=("question_id",),
            template="VQAv2",
            references=_answers("answers"),
            default_data="lmms-lab/VQAv2",
            default_split="validation",
            max_new_tokens=16,
            primary_score="accuracy",
        ),
        Benchmark(
            name="okvqa",
            metric="vqa_accuracy",
            **_IMAGE,
            required_columns=("image", "question", "answers"),
            id_columns=("question_id",),
            template="OK-VQA",
            references=_answers("answers"),
            prompt_suffix=OKVQA_SUFFIX,
            default_data="lmms-lab/OK-VQA",
            default_split="val2014",
            max_new_tokens=16,
            primary_score="accuracy",
        ),
        Benchmark(
            name="aokvqa_mc",
            metric="mmbench",
            **_IMAGE,
            required_columns=("image", "question", "choices"),
            id_columns=("question_id",),
            template="A-OKVQA-MC",
            references=_aokvqa_mc,
            default_data="HuggingFaceM4/A-OKVQA",
            default_split="validation",
            max_new_tokens=8,
            primary_score="accuracy",
        ),
        Benchmark(
            name="aokvqa_da",
            metric="vqa_accuracy",
            **_IMAGE,
            required_columns=("image", "question", "direct_answers"),
            id_columns=("question_id",),
            template="A-OKVQA-DA",
            references=_answers("direct_answers"),
            default_data="HuggingFaceM4/A-OKVQA",
            default_split="validation",
            max_new_tokens=16,
            primary_score="accuracy",
        ),
        Benchmark(
            name="mme",
            metric="mme",
            **_IMAGE,
            required_columns=("image", "question", "question_id", "category"),
            # `question_id` is the image path, shared by the two questions of an image: not unique.
            id_columns=(),
            template="MME",
            references=_mme,
            default_data="lmms-lab/MME",
            default_split="test",
            max_new_tokens=16,
            primary_score="total",
        ),
        Benchmark(
            name="mmbench",
            metric="mmbench",
            **_IMAGE,
            required_columns=("image", "question", "index", "category", "A", "B"),
            id_columns=("index",),
            template="MMBench",
            references=_mmbench,
            default_data="lmms-lab/MMBench",
            default_subset="en",
            default_split="dev",
            max_new_tokens=16,
            primary_score="accuracy",
        ),
        Benchmark(
            name="clotho",
            metric="cider",
            **_AUDIO,
            required_columns=("audio",),
            id_columns=("index", "file_name", "id"),
            template="Clotho",
            references=lambda row, row_index: (_captions(row), {}),
            default_data="CLAPv2/Clotho",
            default_split="test",
            max_new_tokens=48,
            primary_score="cider",
        ),
        Benchmark(
            name="audiocaps",
            metric="cider",
            **_AUDIO,
            required_columns=("audio",),
            id_columns=("audiocap_id", "id"),
            template="AudioCaps",
            references=lambda row, row_index: (_captions(row), {}),
            default_data="jp1924/AudioCaps",
            default_split="test",
            max_new_tokens=48,
            primary_score="cider",
            group_columns=("youtube_id", "start_time"),
        ),
        Benchmark(
            name="librispeech",
            metric="wer",
            **_AUDIO,
            required_columns=("audio", "text"),
            id_columns=("id",),
            template="LibriSpeech",
            references=_asr,
            default_data="openslr/librispeech_asr",
            default_subset="clean",
            default_split="test",
            max_new_tokens=256,
            primary_score="wer",
        ),
        Benchmark(
            name="clotho_aqa",
            metric="exact_match",
            **_AUDIO,
            required_columns=("audio", "question", "answer"),
            id_columns=("id",),
            template="Clotho-AQA",
            references=_aqa,
            default_data="lmms-lab/ClothoAQA",
            default_subset="clotho_aqa",
            default_split="clotho_aqa_val_filtered",
            max_new_tokens=8,
            primary_score="exact_match",
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registered `Benchmark` called `name`."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark `{name}`; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "EvalItem", "get_benchmark"]
