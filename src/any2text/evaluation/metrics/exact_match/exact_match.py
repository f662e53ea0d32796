"""Normalised exact match for short answers (Clotho-AQA).

Loadable offline: ``evaluate.load("<path>/exact_match")`` or ``any2text.evaluation.metrics.load_metric("exact_match")``.
This file must stay self-contained (standard library + `datasets` + `evaluate`): `evaluate` copies it on its own.
"""

import re
import string

import datasets
import evaluate

_DESCRIPTION = """
Exact match after normalisation: lowercase, punctuation removed, whitespace collapsed (lmms-eval's `exact_match`
with `ignore_case` and `ignore_punctuation`). A prediction is right if it equals any reference. For yes/no
questions (the reference is "yes" or "no") only the prediction's first word is compared, so "Yes, a dog barks."
counts as "yes"; pass `yes_no_first_word=False` for lmms-eval's strict behaviour.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): answers.
    references (`list[list[str]]`): acceptable answers per question.
    yes_no_first_word (`bool`, defaults to `True`): see above.
Returns:
    exact_match (`float`): share of right answers in [0, 1].
"""

_CITATION = ""

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    return " ".join(_PUNCT.sub("", text.lower()).split())


def is_match(prediction: str, references: list[str], yes_no_first_word: bool = True) -> bool:
    pred = normalize_answer(prediction)
    refs = [normalize_answer(r) for r in references]
    if yes_no_first_word and refs and all(r in ("yes", "no") for r in refs):
        pred = pred.split(" ", 1)[0]
    return pred in refs


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, yes_no_first_word: bool = True):
        hits = [is_match(p, r, yes_no_first_word) for p, r in zip(predictions, references)]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0}
