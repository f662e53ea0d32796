"""MME score (perception / cognition) with lmms-eval's yes/no extraction.

Loadable offline: ``evaluate.load("<path>/mme")`` or ``any2text.evaluation.metrics.load_metric("mme")``.
This file must stay self-contained (standard library + `datasets` + `evaluate`): `evaluate` copies it on its own.
"""

from collections import defaultdict

import datasets
import evaluate

_DESCRIPTION = """
MME: every image has two yes/no questions (one answered "Yes", one "No"). Per subtask, `acc` is the share of
questions answered right and `acc+` the share of images whose two questions are both right; the subtask score is
(acc + acc+) * 100, so at most 200. Perception sums 10 subtasks (max 2000), cognition 4 (max 800).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): free-text answers; "yes"/"no" is extracted as lmms-eval does.
    references (`list[str]`): "Yes" or "No".
    question_id (`list[str]`): the image path; the two questions of one image share it (acc+ groups on it).
    category (`list[str]`): the subtask, e.g. "existence", "OCR", "code_reasoning".
Returns:
    perception (`float`), cognition (`float`), total (`float`), and per subtask `<name>` (the score),
    `<name>/acc` and `<name>/acc_plus` (both in [0, 100]).
"""

_CITATION = """
@article{fu2023mme, title={MME: A Comprehensive Evaluation Benchmark for Multimodal Large Language Models},
  author={Fu, Chaoyou and others}, journal={arXiv:2306.13394}, year={2023}}
"""

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no(prediction: str) -> str:
    """Map a free-text answer to "yes", "no" or "other" exactly like lmms-eval (from Otter's evaluation).

    The text is lowercased and its periods removed; "yes"/"no" or a lone "y"/"n" is taken as is, otherwise the
    first four characters decide ("Yes, there is..." -> yes, "No." -> no, "Not really" -> no).
    """
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


class Mme(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "question_id": datasets.Value("string"),
                    "category": datasets.Value("string"),
                }
            ),
            reference_urls=["https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"],
        )

    def _compute(self, predictions, references, question_id, category):
        # category -> image -> list of 0/1 per question
        per_image: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for pred, ref, qid, cat in zip(predictions, references, question_id, category):
            gold = ref.lower().strip().replace(".", "")
            if gold not in ("yes", "no"):
                raise ValueError(f"`mme` references must be Yes/No, got {ref!r} for question_id `{qid}`.")
            if cat not in PERCEPTION and cat not in COGNITION:
                raise ValueError(
                    f"`mme` got unknown category `{cat}` (question_id `{qid}`); expected one of "
                    f"{PERCEPTION + COGNITION}."
                )
            per_image[cat][qid].append(int(parse_yes_no(pred) == gold))

        result: dict[str, float] = {}
        for cat, images in per_image.items():
            answers = [s for scores in images.values() for s in scores]
            acc = 100.0 * sum(answers) / len(answers)
            # acc+ needs every question of the image right; a partial run (--limit) may cut a pair in half, then
            # the image counts with the questions it has.
            acc_plus = 100.0 * sum(all(scores) for scores in images.values()) / len(images)
            result[cat] = acc + acc_plus
            result[f"{cat}/acc"] = acc
            result[f"{cat}/acc_plus"] = acc_plus
        result["perception"] = sum(result.get(c, 0.0) for c in PERCEPTION)
        result["cognition"] = sum(result.get(c, 0.0) for c in COGNITION)
        result["total"] = result["perception"] + result["cognition"]
        return result
