"""How a benchmark predicts: generate an answer (`Generate`), or score the two answers of a pair (`ScorePairs`).

A predictor is one field of a registered `Benchmark` (see `any2text.evaluation.benchmarks.Predictor`); the runner
(`any2text.evaluation.evaluate`) does everything else (loading rows, resume, batches, bad items, scores files) the
same way for every kind. Predicting by scoring needs two callables::

    ScorePairs(
        name="reward",                                   # record keys `chosen_reward`, `rejected_reward`
        load_model=lambda path, args: (model, processor),  # a checkpoint -> what `make_scorer` takes
        make_scorer=lambda model, processor, batch_size: scorer,
    )

where `scorer(pairs) -> [(chosen_score, rejected_score), ...]` scores `PreferenceMessages` whose media are loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..data.messages import strip_media
from ..inference import decode_media, generate_batch, load_inference_model

if TYPE_CHECKING:
    from .benchmarks import Benchmark, EvalItem, PredictFn

# `scorer(pairs)`: (chosen, rejected) score of each pair (media loaded), e.g. summed log-probs or rewards.
PairScorer = Callable[[Sequence[Any]], list[tuple[float, float]]]
# (checkpoint path, EvalArguments) -> (model, processor): what `make_scorer` is given.
ModelLoader = Callable[[str, Any], tuple[Any, Any]]
# (model, processor, batch_size) -> PairScorer.
ScorerFactory = Callable[[Any, Any, int], PairScorer]


@dataclass(frozen=True)
class Generate:
    """Predict by generating: the row's medium and the template's question, one greedy answer per item.

    Records hold `prediction` (the answer), scored against the item's `references` by the benchmark's metric.
    """

    options: tuple[str, ...] = ("max_new_tokens", "prompt_suffix")
    run_keys: tuple[str, ...] = ("prompt_suffix", "max_new_tokens")

    def check(self, benchmark: Benchmark, template: str) -> None:
        from .rows import is_prompt_template

        if not is_prompt_template(template):
            raise ValueError(
                f"Template `{template}` makes whole conversations, not a question to answer; benchmark "
                f"`{benchmark.name}` generates from a one-turn template (`register_prompt_template`)."
            )

    def build_item(
        self, benchmark: Benchmark, row: dict[str, Any], row_index: int, template: str, prompt_suffix: str | None
    ) -> EvalItem:
        from .benchmarks import EvalItem
        from .rows import prompt_text

        suffix = next((s for s in (prompt_suffix, benchmark.prompt_suffix) if s is not None), None)
        try:
            text = prompt_text(template, row, suffix)
            references, meta = benchmark.references(row, row_index) if benchmark.references else ([], {})
        except (KeyError, TypeError, ValueError, SyntaxError) as err:
            raise ValueError(f"Benchmark `{benchmark.name}`: cannot read row {row_index}: {err!r}.") from err
        media = benchmark.medium(row)
        if media is None:
            raise ValueError(
                f"Benchmark `{benchmark.name}`: row {row_index} has no `{benchmark.media_column}`; drop rows without "
                "media before evaluating (a text-only answer would silently be scored)."
            )
        content = [{"type": benchmark.modality, benchmark.modality: media}, {"type": "text", "text": text}]
        return EvalItem(
            id=benchmark.item_id(row, row_index),
            messages=[{"role": "user", "content": content}],
            references=references,
            meta=meta,
        )

    def load(self, benchmark: Benchmark, args: Any, model: Any = None, processor: Any = None) -> PredictFn:
        if model is None or processor is None:
            model, processor = load_inference_model(args.model, args.dtype, args.device)
        max_new_tokens = args.max_new_tokens or benchmark.max_new_tokens

        def predict(items: list[EvalItem]) -> list[dict[str, Any]]:
            messages = [item.messages for item in items]
            answers = generate_batch(model, processor, messages, max_new_tokens=max_new_tokens, batch_size=len(items))
            return [{"prediction": answer} for answer in answers]

        return predict


def withhold_media(pair: Any) -> Any:
    """The pair with every medium of its messages removed (the text, placeholders aside, kept)."""
    return strip_media(pair)


@dataclass(frozen=True)
class ScorePairs:
    """Predict by scoring: each item is a preference pair; a scorer gives its chosen and rejected answers a score.

    Args:
        name: the score's name in the records (`chosen_<name>`, `rejected_<name>`), e.g. `"logp"` or `"reward"`.
        load_model: `(checkpoint, args) -> (model, processor)`; called for `--model` (and `--ref_model`).
        make_scorer: `(model, processor, batch_size) -> scorer`, `scorer(pairs) -> [(chosen, rejected), ...]`.
        reference: read `--ref_model`: the pair is right when the implicit reward `score - ref_score` of the chosen
            answer is higher (DPO's `rewards/accuracies`); without a reference, when its score is higher.

    Records hold `chosen_<name>`, `rejected_<name>` and `correct`, with `ref_` fields under a reference, and with
    `--score_blind True` (default) the same with the media withheld under a `blind_` prefix.
    """

    name: str
    load_model: ModelLoader
    make_scorer: ScorerFactory
    reference: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        return ("ref_model", "score_blind") if self.reference else ("score_blind",)

    @property
    def run_keys(self) -> tuple[str, ...]:
        return self.options

    def check(self, benchmark: Benchmark, template: str) -> None:
        from .rows import is_pair_template

        if not is_pair_template(template):
            raise ValueError(
                f"Template `{template}` gives single answers, not preference pairs; benchmark `{benchmark.name}` "
                "scores pairs: pass `--template` AA_TI2T, AA_TA2T, RLAIF-V or TRL-Preference."
            )

    def build_item(
        self, benchmark: Benchmark, row: dict[str, Any], row_index: int, template: str, prompt_suffix: str | None
    ) -> EvalItem:
        from .benchmarks import EvalItem
        from .rows import row_pair

        return EvalItem(id=benchmark.item_id(row, row_index), messages=row_pair(template, row))

    def load(self, benchmark: Benchmark, args: Any, model: Any = None, processor: Any = None) -> PredictFn:
        if model is None or processor is None:
            model, processor = self.load_model(args.model, args)
        scorers = {"": self.make_scorer(model, processor, args.batch_size)}
        if self.reference and args.ref_model is not None:
            ref_model, ref_processor = self.load_model(args.ref_model, args)
            scorers["ref_"] = self.make_scorer(ref_model, ref_processor, args.batch_size)
        views = {"": lambda pair: pair}
        if args.score_blind:
            views["blind_"] = withhold_media

        def predict(items: list[EvalItem]) -> list[dict[str, Any]]:
            pairs = [item.messages.with_messages(decode_media(list(item.messages), processor)) for item in items]
            records: list[dict[str, Any]] = [{} for _ in items]
            for view, transform in views.items():
                viewed = [transform(pair) for pair in pairs]
                scores = {prefix: scorer(viewed) for prefix, scorer in scorers.items()}
                for i, record in enumerate(records):
                    for prefix, values in scores.items():
                        record[f"{view}{prefix}chosen_{self.name}"], record[f"{view}{prefix}rejected_{self.name}"] = (
                            values[i]
                        )
                    record[f"{view}correct"] = self._correct(scores, i)
            return records

        return predict

    @staticmethod
    def _correct(scores: dict[str, list[tuple[float, float]]], i: int) -> bool:
        chosen, rejected = scores[""][i]
        if "ref_" not in scores:
            return bool(chosen > rejected)
        ref_chosen, ref_rejected = scores["ref_"][i]
        return bool(chosen - ref_chosen > rejected - ref_rejected)


def pair_scores(name: str) -> Callable[[Sequence[dict[str, Any]]], dict[str, float]]:
    """The metric of a `ScorePairs(name=name)` benchmark: pairwise accuracy (with and without media).

    `accuracy` is the share of pairs whose chosen answer scores higher (`reward_accuracy`, against a reference, for
    `name="logp"`: the implicit-reward accuracy, with `logp_accuracy` and `ref_logp_accuracy` beside it);
    `blind_*` the same with the media withheld; `margin` the mean `chosen - rejected`.
    """

    def scores(records: Sequence[dict[str, Any]]) -> dict[str, float]:
        result: dict[str, float] = {}
        for view in ("", "blind_"):
            if f"{view}chosen_{name}" not in records[0]:
                continue
            plain = [r[f"{view}chosen_{name}"] > r[f"{view}rejected_{name}"] for r in records]
            margins = [r[f"{view}chosen_{name}"] - r[f"{view}rejected_{name}"] for r in records]
            if name == "logp":
                result[f"{view}logp_accuracy"] = _mean(plain)
                if f"{view}ref_chosen_logp" in records[0]:
                    result[f"{view}reward_accuracy"] = _mean([r[f"{view}correct"] for r in records])
                    ref = [r[f"{view}ref_chosen_logp"] > r[f"{view}ref_rejected_logp"] for r in records]
                    result[f"{view}ref_logp_accuracy"] = _mean(ref)
            else:
                result[f"{view}accuracy"] = _mean(plain)
                result[f"{view}margin"] = _mean(margins)
        return result

    scores.__name__ = f"pairwise_{name}_accuracy"
    return scores


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / max(len(values), 1)


__all__ = ["Generate", "PairScorer", "ScorePairs", "pair_scores", "withhold_media"]
