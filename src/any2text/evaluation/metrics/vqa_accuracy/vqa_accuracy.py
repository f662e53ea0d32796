"""VQA accuracy with the official VQA answer normalisation (GT-Vision-Lab `vqaEval.py`, as run by lmms-eval).

Loadable offline: ``evaluate.load("<path>/vqa_accuracy")`` or ``any2text.evaluation.metrics.load_metric("vqa_accuracy")``.
This file must stay self-contained (standard library + `datasets` + `evaluate`): `evaluate` copies it on its own.
"""

import re

import datasets
import evaluate

_DESCRIPTION = """
VQA accuracy. Every prediction and every ground-truth answer goes through the official VQA normalisation
(lowercase, `\\n`/`\\t` removal, punctuation handling, number words -> digits, articles dropped, contractions
restored). For a question with N ground-truth answers the score is the mean, over the N leave-one-out subsets of
N-1 answers, of min(1, #matches / 3). With the usual 10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, >=4 -> 1.0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated answer per question.
    references (`list[list[str]]`): the ground-truth answers of each question (10 for VQAv2 / OK-VQA / A-OKVQA).
Returns:
    accuracy (`float`): mean VQA accuracy in [0, 1].
    scores (`list[float]`): per-question accuracy, only with `return_per_question=True`.
Examples:
    >>> metric = evaluate.load("vqa_accuracy")
    >>> metric.compute(predictions=["two"], references=[["2"] * 10])
    {'accuracy': 1.0}
"""

_CITATION = """
@inproceedings{antol2015vqa, title={VQA: Visual Question Answering}, author={Antol, Stanislaw and others},
  booktitle={ICCV}, year={2015}}
"""

# Tables of the official evaluation script; kept verbatim in spirit because scores are only comparable with
# other papers if the normalisation matches exactly (including its quirks).
# fmt: off
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
# fmt: on
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# The official regex has a malformed look-behind, `(?!<=\d)`, which is really a look-ahead that never fires; it
# therefore removes every "." not followed by a digit. Kept as is so "2.5" survives and "yes." becomes "yes".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        # A mark touching a space (or a digit group comma anywhere) is deleted; otherwise it separates two words.
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """The EvalAI answer processor: what lmms-eval applies to predictions and ground truths alike."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_score(prediction: str, answers: list[str]) -> float:
    """Leave-one-out VQA accuracy of one prediction against its ground-truth answers."""
    if not answers:
        raise ValueError("`vqa_accuracy` got a question with no reference answers; drop unlabelled rows first.")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    if len(gts) == 1:
        # Leave-one-out over a single answer leaves nothing to match (always 0); plain exact match is the only
        # meaningful score for single-answer data.
        return float(pred == gts[0])
    # Subsets are removed by position, not value, as in the official script (whose answers carry unique ids).
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, gt in enumerate(gts) if j != i and gt == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/GT-Vision-Lab/VQA/blob/master/PythonEvaluationTools/vqaEval.py"],
        )

    def _compute(self, predictions, references, return_per_question: bool = False):
        scores = [vqa_score(p, r) for p, r in zip(predictions, references)]
        result = {"accuracy": sum(scores) / len(scores) if scores else 0.0}
        if return_per_question:
            result["scores"] = scores
        return result
