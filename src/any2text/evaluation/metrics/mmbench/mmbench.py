"""MMBench circular evaluation with rule-based choice extraction (no GPT judge).

Loadable offline: ``evaluate.load("<path>/mmbench")`` or ``any2text.evaluation.metrics.load_metric("mmbench")``.
This file must stay self-contained (standard library + `datasets` + `evaluate`): `evaluate` copies it on its own.
"""

import re
from collections import defaultdict

import datasets
import evaluate

_DESCRIPTION = """
MMBench multiple-choice accuracy under CircularEval. MMBench stores each question several times with the options
rotated; the copies share `index % 1_000_000`. A question counts as right only if every copy is answered right.
The chosen letter is extracted by rules (MMBench's `can_infer`): a standalone letter ("B", "B.", "(B)",
"Answer: B"), else the text of exactly one option appearing in the answer. Unextractable answers are wrong.
Rows with distinct indices (e.g. A-OKVQA multiple choice) are simply scored one by one.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): free-text answers.
    references (`list[str]`): the correct letter ("A".."E").
    index (`list[int]`): MMBench `index`; circular copies share `index % 1_000_000`.
    category (`list[str]`): the category used for the per-category breakdown.
    choices (`list[list[str]]`): option texts for A, B, C, ...; an empty string marks an absent option.
Returns:
    accuracy (`float`): circular accuracy in [0, 1] over question groups; `<category>` the same per category;
    `num_groups` (`int`); `extraction_failures` (`int`): answers no choice could be read from.
"""

_CITATION = """
@article{liu2023mmbench, title={MMBench: Is Your Multi-modal Model an All-around Player?},
  author={Liu, Yuan and others}, journal={arXiv:2307.06281}, year={2023}}
"""

_LETTERS = "ABCDEFGHIJ"
# Wrapping characters removed before looking for standalone letters, so "(B)", "B.", "[B]" and "Answer: B" all work.
_STRIP_CHARS = ".()[],:;!*#{}\"'"
# Answers that open with the letter; the letter must be upper case so the article "a" never matches.
_ANCHORED = (
    re.compile(r"^\(?([A-J])\)?$"),  # "B", "(B)"
    re.compile(r"^\(([A-J])\)"),  # "(B) cat"
    re.compile(r"^([A-J])[.:)]"),  # "B. cat", "B: cat", "B) cat"
    re.compile(
        r"^(?i:the\s+)?(?i:correct\s+)?(?i:answer|option|choice)(?i:\s+is)?\s*[:\-]?\s*\(?([A-J])\b"
    ),  # "Answer: B"
)


def extract_choice(prediction: str, choices: list[str]) -> str | None:
    """Return the letter of the option `prediction` picks, or None when it cannot be told.

    `choices` are the option texts for A, B, ... (empty string = option absent).
    """
    options = {_LETTERS[i]: text for i, text in enumerate(choices) if text and str(text).lower() != "nan"}
    text = prediction.strip()
    if not text:
        return None
    # 1. An answer that opens with the letter ("B", "B. cat", "(B)", "Answer: B") is unambiguous.
    for pattern in _ANCHORED:
        match = pattern.match(text)
        if match and match.group(1) in options:
            return match.group(1)
    # 2. Exactly one option letter standing alone anywhere. "A" alone in a longer sentence is more likely the
    #    article than option A, so then it is not trusted (MMBench's own caveat) and step 3 decides.
    cleaned = text
    for ch in _STRIP_CHARS:
        cleaned = cleaned.replace(ch, " ")
    tokens = cleaned.split()
    found = [letter for letter in options if letter in tokens]
    if len(found) == 1 and not (found[0] == "A" and len(tokens) > 3):
        return found[0]
    # 3. The text of exactly one option appears in the answer.
    lowered = text.lower()
    hits = [letter for letter, option in options.items() if str(option).lower().strip() in lowered]
    if len(hits) == 1:
        return hits[0]
    return None


class Mmbench(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "index": datasets.Value("int64"),
                    "category": datasets.Value("string"),
                    "choices": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/open-compass/MMBench"],
        )

    def _compute(self, predictions, references, index, category, choices):
        group_ok: dict[int, bool] = {}
        group_category: dict[int, str] = {}
        failures = 0
        for pred, ref, idx, cat, opts in zip(predictions, references, index, category, choices):
            letter = extract_choice(pred, opts)
            failures += letter is None
            key = int(idx) % 1_000_000
            group_ok[key] = group_ok.get(key, True) and letter == ref.strip().upper()
            group_category[key] = cat
        per_category: dict[str, list[bool]] = defaultdict(list)
        for key, ok in group_ok.items():
            per_category[group_category[key]].append(ok)
        result = {
            "accuracy": sum(group_ok.values()) / len(group_ok) if group_ok else 0.0,
            "num_groups": len(group_ok),
            "extraction_failures": failures,
        }
        for cat, oks in sorted(per_category.items()):
            result[cat] = sum(oks) / len(oks)
        return result
