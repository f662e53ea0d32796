"""CIDEr-D for captions, as computed by coco-caption (`pycocoevalcap/cider`).

Loadable offline: ``evaluate.load("<path>/cider")`` or ``any2text.evaluation.metrics.load_metric("cider")``.
This file must stay self-contained (standard library + `datasets` + `evaluate`): `evaluate` copies it on its own.
"""

import math
import re
from collections import Counter, defaultdict

import datasets
import evaluate

_DESCRIPTION = """
CIDEr-D (Vedantam et al. 2015, coco-caption implementation): TF-IDF weighted n-gram (n = 1..4) cosine similarity
between a candidate and each of its references, with the candidate's counts clipped by the reference's, a Gaussian
length penalty (sigma = 6), averaged over references and n, times 10. IDF comes from the references of the whole
corpus, so the score depends on the set evaluated together (one caption alone always scores 0).
Text is lowercased and punctuation removed first, like coco-caption's PTB tokenizer (without its Java).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one caption per item.
    references (`list[list[str]]`): the reference captions of each item (5 for Clotho / AudioCaps / COCO).
Returns:
    cider (`float`): corpus CIDEr-D (mean over items); `scores` (`list[float]`) with `return_per_item=True`.
"""

_CITATION = """
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
"""

_N = 4
_SIGMA = 6.0
# Clitics the PTB tokenizer splits off ("dog's" -> "dog 's"), so they count as their own n-gram like in coco-caption.
_CLITICS = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_PUNCT = re.compile(r"[^\w\s']|_")


def tokenize(text: str) -> list[str]:
    """Lowercase, split clitics, drop punctuation: an approximation of coco-caption's PTBTokenizer."""
    text = _CLITICS.sub(r"\1 \2", text.lower())
    tokens = _PUNCT.sub(" ", text).split()
    # Stand-alone quotes are punctuation for the PTB tokenizer too.
    return [t for t in tokens if t.strip("'")]


def _ngrams(words: list[str]) -> Counter:
    counts: Counter = Counter()
    for n in range(1, _N + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts


def cider_d(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-item CIDEr-D scores; the corpus score is their mean."""
    cands = [_ngrams(tokenize(p)) for p in predictions]
    refs = [[_ngrams(tokenize(r)) for r in rs] for rs in references]
    # Document frequency: in how many items' reference sets an n-gram occurs.
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_num_docs = math.log(float(len(refs)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [defaultdict(float) for _ in range(_N)]
        norm = [0.0] * _N
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            vec[n][gram] = float(tf) * (log_num_docs - math.log(max(1.0, df[gram])))
            norm[n] += vec[n][gram] ** 2
            # coco-caption measures length by counting bigrams (`if n == 1`); kept so scores match the reference.
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr) -> list[float]:
        penalty = math.exp(-((lh - lr) ** 2) / (2 * _SIGMA**2))
        out = []
        for n in range(_N):
            # Clipping (the "-D"): a candidate repeating an n-gram gains no more than the reference has of it.
            val = sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, v in vh[n].items())
            if nh[n] != 0 and nr[n] != 0:
                val /= nh[n] * nr[n]
            out.append(val * penalty)
        return out

    scores = []
    for cand, rs in zip(cands, refs):
        vh, nh, lh = vectorize(cand)
        total = [0.0] * _N
        for r in rs:
            vr, nr, lr = vectorize(r)
            total = [a + b for a, b in zip(total, sim(vh, nh, lh, vr, nr, lr))]
        scores.append(sum(total) / _N / len(rs) * 10.0)
    return scores


class Cider(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/tylin/coco-caption/tree/master/pycocoevalcap/cider"],
        )

    def _compute(self, predictions, references, return_per_item: bool = False):
        for i, rs in enumerate(references):
            if not rs:
                raise ValueError(f"`cider` got item {i} with no reference captions; every item needs at least one.")
        if not predictions:
            return {"cider": 0.0}
        scores = cider_d(list(predictions), [list(r) for r in references])
        result = {"cider": sum(scores) / len(scores)}
        if return_per_item:
            result["scores"] = scores
        return result
