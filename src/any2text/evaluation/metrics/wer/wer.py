"""Corpus word error rate for ASR, with case and punctuation normalised away.

Loadable offline: ``evaluate.load("<path>/wer")`` or ``any2text.evaluation.metrics.load_metric("wer")``.
This file must stay self-contained (standard library + `datasets` + `evaluate`): `evaluate` copies it on its own.
"""

import re
import unicodedata

import datasets
import evaluate

_DESCRIPTION = """
Word error rate = (substitutions + deletions + insertions) / reference words, summed over the corpus (not a mean
of per-utterance rates, which would over-weight short utterances). Before counting, both sides are lowercased,
punctuation is removed (apostrophes inside words are kept: "don't" stays one word) and whitespace collapsed, so
LibriSpeech's UPPERCASE references compare equal to a model's sentence-case output.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): transcripts.
    references (`list[str]`): reference transcripts.
Returns:
    wer (`float`): corpus WER (can exceed 1 with many insertions); `num_edits` and `num_reference_words` (`int`).
"""

_CITATION = ""

_APOSTROPHES = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize_transcript(text: str) -> list[str]:
    """Lowercase, map punctuation (Unicode category P*) to spaces except in-word apostrophes, split on spaces."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    chars = [" " if unicodedata.category(c).startswith("P") and c != "'" else c for c in text]
    return _APOSTROPHES.sub(" ", "".join(chars)).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words, O(len(ref) * len(hyp)) time and O(len(hyp)) memory."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


class Wer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        edits = 0
        words = 0
        for pred, ref in zip(predictions, references):
            ref_words = normalize_transcript(ref)
            edits += edit_distance(ref_words, normalize_transcript(pred))
            words += len(ref_words)
        if words == 0:
            raise ValueError("`wer` needs at least one non-empty reference transcript; all references were empty.")
        return {"wer": edits / words, "num_edits": edits, "num_reference_words": words}
