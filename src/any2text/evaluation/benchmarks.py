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
from typing import Any, Protocol, runtime_checkable

from transformers.utils import logging

from ..data.templates import (
    LETTERS,
    SHORT_ANSWER_PROMPT,
    Template,
    as_list,
    get_template,
    is_missing,
    mmbench_choices,
    register_prompt_template,
    row_name,
)
from .metrics import load_metric
from .predictors import Generate, ScorePairs, pair_scores
from .preference import load_policy, load_reward_model, logp_scorer, reward_scorer

logger = logging.get_logger(__name__)

# lmms-eval's OK-VQA instruction; the other benchmarks ask what their template does. `--prompt_suffix` overrides both.
OKVQA_SUFFIX = "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER_PROMPT

# Metrics whose `references` input is one string per item (the others take a list of acceptable answers).
_SCALAR_REFERENCE_METRICS = {"mme", "mmbench", "wer"}


@dataclass
class EvalItem:
    """One evaluation example: a stable `id`, chat `messages`, acceptable `references` and extra metric inputs.

    For a scoring benchmark `messages` is the pair (`PreferenceMessages`: prompt + chosen, `rejected` attached) and
    `references` is empty.
    """

    id: str
    messages: list[dict[str, Any]]
    references: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text of the last user turn (media left out), as recorded in predictions.jsonl."""
        user = [message for message in self.messages if message["role"] == "user"] or self.messages
        content = user[-1]["content"]
        if isinstance(content, str):
            return content
        return "".join(part["text"] for part in content if part["type"] == "text")


# (row, row index) -> (references, metric meta).
ReferenceReader = Callable[[dict[str, Any], int], tuple[list[str], dict[str, Any]]]
# Prediction records (predictions.jsonl objects) -> scores (`{name: value}`).
MetricFn = Callable[[Sequence[dict[str, Any]]], dict[str, Any]]


@runtime_checkable
class Predictor(Protocol):
    """How a benchmark predicts: by generating text (`Generate`) or by scoring pairs (`ScorePairs`).

    `check` refuses a template that cannot serve (before any row is read); `build_item` turns a row into an `EvalItem` with the benchmark's template; `load` loads what predicting needs
    (from `args.model`, unless `model` / `processor` are given) and returns a function from a batch of items to one
    prediction record per item (the fields written to predictions.jsonl beside `id`, `prompt`, `references`,
    `meta`). That function raises `ValueError` / `TypeError` / `KeyError` / `OSError` for bad data (the runner then
    retries the batch item by item to name the bad ones); anything else stops the run. `options` are the
    `EvalArguments` fields only this kind of predictor reads; `run_keys` those that change its predictions (a
    resumed run must have the same values).
    """

    options: tuple[str, ...]
    run_keys: tuple[str, ...]

    def check(self, benchmark: Benchmark, template: str) -> None:
        """Raise a `ValueError` naming the fix when `template` cannot make this predictor's items."""

    def build_item(self, benchmark: Benchmark, row: dict[str, Any], row_index: int, template: str,
                   prompt_suffix: str | None = None) -> EvalItem: ...  # fmt: skip

    def load(self, benchmark: Benchmark, args: Any, model: Any = None, processor: Any = None) -> PredictFn: ...


PredictFn = Callable[[list[EvalItem]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: where its rows come from, the template that prompts them, how to predict, the metric.

    Args:
        name: registry key and `--benchmark` value, e.g. `"vqav2"`.
        template: the registered template (`any2text.data.templates`) that turns a row into the prompt (generation)
            or the pair (scoring); `--template` replaces it.
        predict: how to predict: `Generate()` (the default) or `ScorePairs(...)` (see `any2text.evaluation.predictors`).
        metric: a packaged metric name (see `any2text.evaluation.metrics.METRIC_NAMES`), fed `predictions`,
            `references` and the items' `meta`; or a function `records -> scores` for predictions that are not text.
        primary_score: the headline key of the scores; a tuple: the first of these keys the scores have.
        default_data / default_subset / default_split: where the rows are read from when `--data` (`--subset`,
            `--split`) is not given; a local file's only split is `train`.
        required_columns: columns a row must have, checked once before predicting; `None`: the template's.
        id_columns: columns tried in order for a stable item id; the row index is used when none is present.
        group_columns: for datasets with one reference per row (AudioCaps: 5 rows per clip), the columns that
            identify one item; its rows become one item with every reference.
        modality / media_column: (generation) the medium put in front of the prompt and the column holding it.
        media: (generation) reads the medium from a row when it is not one column as stored (Video-MME names a
            video by its `videoID`); `None`: `row[media_column]`.
        references: (generation) reads a row's references and the metric's extra inputs.
        prompt_suffix: (generation) the instruction appended to the question when it is not the template's own;
            `None`: the template's.
        max_new_tokens: (generation) budget used unless the caller sets one.
    """

    name: str
    template: str
    metric: str | MetricFn
    primary_score: str | tuple[str, ...]
    predict: Predictor = field(default_factory=Generate)
    default_data: str | None = None
    default_split: str = "train"
    default_subset: str | None = None
    required_columns: tuple[str, ...] | None = None
    id_columns: tuple[str, ...] = ("id",)
    group_columns: tuple[str, ...] = ()
    modality: str | None = None
    media_column: str | None = None
    media: Callable[[dict[str, Any]], Any] | None = None
    references: ReferenceReader | None = None
    prompt_suffix: str | None = None
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.predict, Predictor):
            raise TypeError(
                f"Benchmark `{self.name}`: `predict` must be a `Predictor` (`build_item`, `load`, `options`, "
                f"`run_keys`), e.g. `Generate()` or `ScorePairs(...)`; got {type(self.predict).__name__}."
            )

    @property
    def prompt_template(self) -> Template:
        return get_template(self.template)

    @property
    def metric_name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", self.name)

    def primary_key(self, scores: dict[str, Any]) -> str:
        """The headline key of `scores`."""
        keys = (self.primary_score,) if isinstance(self.primary_score, str) else self.primary_score
        return next((key for key in keys if key in scores), keys[0])

    def item_id(self, row: dict[str, Any], row_index: int) -> str:
        for column in self.id_columns:
            if column in row and row[column] is not None:
                return str(row[column])
        return str(row_index)

    def medium(self, row: dict[str, Any]) -> Any:
        """The medium of a generation item: `media(row)`, or the `media_column` value (`None` when absent)."""
        return self.media(row) if self.media is not None else row.get(self.media_column)

    def check_columns(self, column_names: Sequence[str], template: str | None = None) -> None:
        if self.required_columns is None:
            missing = get_template(template or self.template).missing_columns(column_names)
        else:
            missing = [c for c in self.required_columns if c not in column_names]
        if missing:
            raise ValueError(
                f"Benchmark `{self.name}` needs columns {missing} that the dataset lacks (it has "
                f"{list(column_names)}). Point `--data` at a {self.name} dataset (default `{self.default_data}`) "
                "or pick the matching `--benchmark` / `--template`."
            )

    def build_item(
        self, row: dict[str, Any], row_index: int, prompt_suffix: str | None = None, template: str | None = None
    ) -> EvalItem:
        """Turn one dataset row into an `EvalItem`; `prompt_suffix` / `template` override the benchmark's."""
        return self.predict.build_item(self, row, row_index, template or self.template, prompt_suffix)

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
        """Score prediction records with the benchmark's metric; text predictions without references are left out."""
        if not isinstance(self.metric, str):
            return self.metric(records) if records else {}
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

BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(
    name: str,
    *,
    template: str,
    metric: str | MetricFn,
    primary_score: str | tuple[str, ...],
    predict: Predictor | None = None,
    replace: bool = False,
    **fields: Any,
) -> Benchmark:
    """Register a benchmark: `any2text eval --benchmark NAME` then runs it with the one runner.

    Args:
        name: the `--benchmark` value.
        template: registered template turning a row into the prompt (generation) or the pair (scoring).
        metric: packaged metric name, or a function `records -> scores`.
        primary_score: headline key of the scores (or keys, the first present wins).
        predict: `Generate()` (default) or `ScorePairs(...)`, or any `Predictor`.
        replace: replace a benchmark registered under `name` (otherwise that is an error).
        fields: the other fields of `Benchmark` (`default_data`, `default_split`, `required_columns`, ...).

    Example (a reward-model benchmark is this, see `any2text.evaluation.benchmarks`)::

        register_benchmark("my_pairs", template="TRL-Preference", metric=pair_scores("reward"),
                           primary_score="accuracy", predict=ScorePairs(load_model=..., make_scorer=...))
    """
    if name in BENCHMARKS and not replace:
        raise ValueError(
            f"A benchmark named `{name}` is already registered; pick another name or pass `replace=True`."
        )
    if predict is not None:
        fields["predict"] = predict
    benchmark = Benchmark(name=name, template=template, metric=metric, primary_score=primary_score, **fields)
    BENCHMARKS[name] = benchmark
    return benchmark


_IMAGE = {"modality": "image", "media_column": "image"}
_AUDIO = {"modality": "audio", "media_column": "audio"}

register_benchmark(
    "vqav2",
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
)
register_benchmark(
    "okvqa",
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
)
register_benchmark(
    "aokvqa_mc",
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
)
register_benchmark(
    "aokvqa_da",
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
)
register_benchmark(
    "mme",
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
)
register_benchmark(
    "mmbench",
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
)
register_benchmark(
    "clotho",
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
)
register_benchmark(
    "audiocaps",
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
)
register_benchmark(
    "librispeech",
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
)
register_benchmark(
    "clotho_aqa",
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
)


# Video multiple choice. MVBench and Video-MME are test sets only, so their one-turn templates live here with the
# benchmarks; the prompts are lmms-eval's `doc_to_text` (MVBench's trailing newline aside), the target the letter.
# Both are scored by the `mmbench` metric: the letter read off the answer (`B`, `(B)`, `B. left`, or the text of
# exactly one option) must equal the right one; each row is its own group, so this is plain exact-match accuracy,
# with a breakdown per `task_type` where rows have one.

MVBENCH_SUFFIX = "Only give the best option."
VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
VIDEOMME_SUFFIX = "\nThe best answer is:"
_VIDEOMME_OPTION = re.compile(r"^\s*([A-J])[.:)]\s*")


def _mvbench_question(row: dict[str, Any], suffix: str) -> str:
    options = "".join(f"({LETTERS[i]}) {c}\n" for i, c in enumerate(as_list(row["candidates"])))
    return f"Question:{row['question']}\nOption:\n{options}{suffix}"


def _mvbench_letter(row: dict[str, Any]) -> str:
    candidates = [str(c) for c in as_list(row["candidates"])]
    answer = str(row["answer"]).strip()
    if answer not in candidates:
        raise ValueError(f"{row_name(row)} has `answer` {answer!r}, which is none of its `candidates` {candidates}.")
    return LETTERS[candidates.index(answer)]


def videomme_choices(row: dict[str, Any]) -> list[str]:
    """Video-MME's option texts: `options` is `["A. Apples.", "B. ..."]`; the letter prefixes are dropped."""
    return [_VIDEOMME_OPTION.sub("", str(option), count=1) for option in as_list(row["options"])]


def _videomme_question(row: dict[str, Any], suffix: str) -> str:
    options = "\n".join(str(option) for option in as_list(row["options"]))
    return f"{VIDEOMME_INSTRUCTION}\n{row['question']}\n{options}{suffix}"


def _videomme_video(row: dict[str, Any]) -> Any:
    """A local row may carry its `video` path; Video-MME's own rows name the file `<videoID>.mp4`."""
    if not is_missing(row.get("video")):
        return row["video"]
    return None if is_missing(row.get("videoID")) else f"{row['videoID']}.mp4"


register_prompt_template(
    "MVBench",
    modality="video",
    media=lambda row: row["video"],
    prompt=_mvbench_question,
    suffix=MVBENCH_SUFFIX,
    target=_mvbench_letter,
    required_columns=("video", "question", "candidates", "answer"),
)
register_prompt_template(
    "Video-MME",
    modality="video",
    media=_videomme_video,
    prompt=_videomme_question,
    suffix=VIDEOMME_SUFFIX,
    target=lambda row: str(row["answer"]).strip(),
    required_columns=("question", "options", "answer"),
    aliases=("VideoMME",),
)


def _mvbench(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    references = [] if is_missing(row.get("answer")) else [_mvbench_letter(row)]
    category = str(row.get("task_type") or "mvbench")
    return references, {"index": row_index, "category": category, "choices": [str(c) for c in row["candidates"]]}


def _videomme(row: dict[str, Any], row_index: int) -> tuple[list[str], dict[str, Any]]:
    category = str(row.get("task_type") or "videomme")
    return _answer(row), {"index": row_index, "category": category, "choices": videomme_choices(row)}


_VIDEO = {"modality": "video", "media_column": "video"}

register_benchmark(
    "mvbench",
    metric="mmbench",
    **_VIDEO,
    required_columns=("video", "question", "candidates"),
    id_columns=("id", "question_id"),
    template="MVBench",
    references=_mvbench,
    default_data="OpenGVLab/MVBench",
    default_subset="moving_direction",
    default_split="train",
    max_new_tokens=16,
    primary_score="accuracy",
)
register_benchmark(
    "videomme",
    metric="mmbench",
    modality="video",
    media_column="videoID",
    media=_videomme_video,
    required_columns=("question", "options"),
    id_columns=("question_id",),
    template="Video-MME",
    references=_videomme,
    default_data="lmms-lab/Video-MME",
    default_split="test",
    max_new_tokens=16,
    primary_score="accuracy",
)


# Scoring benchmarks: held-out preference pairs in any preference template (`--template`, default TRL's format).

register_benchmark(
    "preference",
    template="TRL-Preference",
    predict=ScorePairs(name="logp", load_model=load_policy, make_scorer=logp_scorer, reference=True),
    metric=pair_scores("logp"),
    primary_score=("reward_accuracy", "logp_accuracy"),
)
register_benchmark(
    "reward",
    template="TRL-Preference",
    predict=ScorePairs(name="reward", load_model=load_reward_model, make_scorer=reward_scorer),
    metric=pair_scores("reward"),
    primary_score="accuracy",
)


def get_benchmark(name: str) -> Benchmark:
    """The registered `Benchmark` called `name`."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark `{name}`; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "EvalItem", "Predictor", "get_benchmark", "register_benchmark"]
