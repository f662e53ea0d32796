"""Packaged `evaluate` metrics against hand-worked cases, including the official scripts' quirks."""

import importlib.util
import math
from collections import defaultdict

import evaluate
import pytest

from any2text.evaluation.metrics import METRIC_NAMES, load_metric, metric_path


def _script(name):
    """The metric script as a plain module, to test its helpers (extraction, normalisation) directly."""
    spec = importlib.util.spec_from_file_location(f"_metric_{name}", metric_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def metrics():
    return {name: load_metric(name) for name in METRIC_NAMES}


def test_load_metric_by_directory_path_and_unknown_name():
    metric = evaluate.load(str(metric_path("exact_match").parent))
    assert metric.compute(predictions=["Dog."], references=[["dog"]]) == {"exact_match": 1.0}
    with pytest.raises(ValueError, match="Unknown metric `bleu`"):
        load_metric("bleu")


# ----------------------------------------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("the dog", "dog"),
        ("A man", "man"),
        ("dont", "don't"),
        ("Yes.", "yes"),
        ("2.5", "2.5"),
        ("1,000", "1000"),
        ("red\n", "red"),
        ("hot-dog", "hot dog"),
        ("none", "0"),
    ],
)
def test_vqa_normalisation(raw, expected):
    assert _script("vqa_accuracy").normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_leave_one_out_partial_credit(metrics, matches, expected):
    references = [["two"] * matches + ["other"] * (10 - matches)]
    result = metrics["vqa_accuracy"].compute(predictions=["2"], references=references)
    assert result["accuracy"] == pytest.approx(expected)


def test_vqa_corpus_mean_and_per_question(metrics):
    result = metrics["vqa_accuracy"].compute(
        predictions=["Two", "the dog", "dont"],
        references=[["2"] * 10, ["dog"] * 2 + ["cat"] * 8, ["don't"] * 3 + ["no"] * 7],
        return_per_question=True,
    )
    assert result["scores"] == pytest.approx([1.0, 0.6, 0.9])
    assert result["accuracy"] == pytest.approx(2.5 / 3)


def test_vqa_single_reference_is_exact_match(metrics):
    result = metrics["vqa_accuracy"].compute(predictions=["The Cat", "dog"], references=[["cat"], ["cat"]])
    assert result["accuracy"] == 0.5


# ----------------------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    "text, label",
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("yes, there is a dog", "yes"),
        ("Not at all", "no"),
        ("y", "yes"),
        ("Maybe", "other"),
    ],
)
def test_mme_yes_no_extraction(text, label):
    assert _script("mme").parse_yes_no(text) == label


def test_mme_acc_plus_needs_both_questions_of_an_image(metrics):
    result = metrics["mme"].compute(
        # existence: image a both right, image b one right; OCR: image c both wrong; code_reasoning: d both right
        predictions=["Yes", "No", "Yes", "Yes", "No", "Yes", "Yes it is.", "no"],
        references=["Yes", "No", "Yes", "No", "Yes", "No", "Yes", "No"],
        question_id=["a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.jpg", "c.jpg", "d.png", "d.png"],
        category=["existence"] * 4 + ["OCR"] * 2 + ["code_reasoning"] * 2,
    )
    assert result["existence/acc"] == pytest.approx(75.0)
    assert result["existence/acc_plus"] == pytest.approx(50.0)
    assert result["existence"] == pytest.approx(125.0)
    assert result["OCR"] == 0.0
    assert result["code_reasoning"] == pytest.approx(200.0)
    assert result["perception"] == pytest.approx(125.0)
    assert result["cognition"] == pytest.approx(200.0)
    assert result["total"] == pytest.approx(325.0)


def test_mme_rejects_unknown_category(metrics):
    with pytest.raises(ValueError, match="unknown category `colour`"):
        metrics["mme"].compute(predictions=["yes"], references=["Yes"], question_id=["a"], category=["colour"])


# ------------------------------------------------------------------------------------------------------- MMBench

_OPTIONS = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("C) bird", "C"),
        ("Answer: D", "D"),
        ("The answer is B.", "B"),
        ("I think it is C because of the wings", "C"),
        ("dog", "B"),
        ("A dog is sitting on the mat", "B"),  # "A" is the article here, the option text decides
        ("A", "A"),
        ("E", None),  # not an option
        ("a cat or a dog", None),  # two option texts
        ("I don't know", None),
        ("", None),
    ],
)
def test_mmbench_choice_extraction(text, letter):
    assert _script("mmbench").extract_choice(text, _OPTIONS) == letter


def test_mmbench_circular_group_fails_if_any_pass_is_wrong(metrics):
    # Question 7 is asked 4 times with rotated options; the third pass is wrong. Question 8 is right every time.
    result = metrics["mmbench"].compute(
        predictions=["A", "B", "A", "D", "C", "(D)", "Answer: A", "B"],
        references=["A", "B", "C", "D", "C", "D", "A", "B"],
        index=[7, 1_000_007, 2_000_007, 3_000_007, 8, 1_000_008, 2_000_008, 3_000_008],
        category=["ocr"] * 4 + ["scene"] * 4,
        choices=[_OPTIONS] * 8,
    )
    assert result["num_groups"] == 2
    assert result["accuracy"] == 0.5
    assert result["ocr"] == 0.0
    assert result["scene"] == 1.0
    assert result["extraction_failures"] == 0


def test_mmbench_unreadable_answer_is_wrong(metrics):
    result = metrics["mmbench"].compute(
        predictions=["no idea"], references=["A"], index=[1], category=["x"], choices=[["yes", "no", "", ""]]
    )
    # "no" is the text of option B: it is extracted (and wrong), not a failure
    assert result == {"accuracy": 0.0, "num_groups": 1, "extraction_failures": 0, "x": 0.0}


# --------------------------------------------------------------------------------------------------------- CIDEr


def _reference_cider_d(candidates, references, n=4, sigma=6.0):
    """An independent, literal transcription of coco-caption's CiderScorer (CIDEr-D) for pre-tokenised text."""

    def precook(sentence):
        words = sentence.split()
        counts = defaultdict(int)
        for k in range(1, n + 1):
            for i in range(len(words) - k + 1):
                counts[tuple(words[i : i + k])] += 1
        return counts

    crefs = [[precook(r) for r in refs] for refs in references]
    ctest = [precook(c) for c in candidates]
    document_frequency = defaultdict(float)
    for refs in crefs:
        for ngram in {ngram for ref in refs for ngram in ref}:
            document_frequency[ngram] += 1
    ref_len = math.log(float(len(crefs)))

    def counts2vec(cnts):
        vec = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, term_freq in cnts.items():
            df = math.log(max(1.0, document_frequency[ngram]))
            k = len(ngram) - 1
            vec[k][ngram] = float(term_freq) * (ref_len - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:
                length += term_freq
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vec_hyp, vec_ref, norm_hyp, norm_ref, length_hyp, length_ref):
        delta = float(length_hyp - length_ref)
        val = [0.0] * n
        for k in range(n):
            for ngram in vec_hyp[k]:
                val[k] += min(vec_hyp[k][ngram], vec_ref[k][ngram]) * vec_ref[k][ngram]
            if norm_hyp[k] != 0 and norm_ref[k] != 0:
                val[k] /= norm_hyp[k] * norm_ref[k]
            val[k] *= math.e ** (-(delta**2) / (2 * sigma**2))
        return val

    scores = []
    for test, refs in zip(ctest, crefs):
        vec, norm, length = counts2vec(test)
        score = [0.0] * n
        for ref in refs:
            vec_ref, norm_ref, length_ref = counts2vec(ref)
            score = [a + b for a, b in zip(score, sim(vec, vec_ref, norm, norm_ref, length, length_ref))]
        scores.append(sum(score) / n / len(refs) * 10.0)
    return sum(scores) / len(scores)


def test_cider_single_item_corpus_is_zero(metrics):
    # With one item every reference n-gram has df = N = 1, so every IDF weight is log(1) - log(1) = 0.
    assert metrics["cider"].compute(predictions=["a dog barks"], references=[["a dog barks"]])["cider"] == 0.0


def test_cider_exact_match_with_disjoint_vocabulary_is_ten(metrics):
    # Every n-gram occurs in one of two items (IDF log 2 everywhere); candidate == reference gives cosine 1 for
    # n = 1..4 and no length penalty, so each item scores exactly 1 * 10.
    result = metrics["cider"].compute(
        predictions=["Red car drives fast.", "small dog barks loudly"],
        references=[["red car drives fast"], ["Small dog barks loudly!"]],
        return_per_item=True,
    )
    assert result["scores"] == pytest.approx([10.0, 10.0])


def test_cider_matches_reference_implementation(metrics):
    predictions = [
        "a dog barks at a dog",
        "birds are singing in the trees",
        "a car engine starts and idles",
        "rain falls",
    ]
    references = [
        ["a dog barks loudly", "a small dog is barking", "dog barking at a car", "a dog barks"],
        ["birds sing in the trees", "many birds chirping", "birds are singing outside in the trees"],
        ["a car engine idles", "an engine is running", "a car starts its engine and idles for a while"],
        ["heavy rain falls on a roof", "rain is falling", "water drips and rain falls steadily"],
    ]
    expected = _reference_cider_d(predictions, references)
    assert metrics["cider"].compute(predictions=predictions, references=references)["cider"] == pytest.approx(expected)
    assert 0.0 < expected < 10.0


def test_cider_tokenisation_lowercases_and_drops_punctuation():
    assert _script("cider").tokenize("A dog's bark, loud!") == ["a", "dog", "'s", "bark", "loud"]


# ----------------------------------------------------------------------------------------------------------- WER


def test_wer_ignores_case_and_punctuation(metrics):
    result = metrics["wer"].compute(predictions=["Hello, world! Don't go."], references=["HELLO WORLD DON'T GO"])
    assert result == {"wer": 0.0, "num_edits": 0, "num_reference_words": 4}


def test_wer_counts_substitution_deletion_insertion(metrics):
    # sat -> sit (S), second "the" dropped (D), "now" added (I): 3 edits over 6 reference words.
    result = metrics["wer"].compute(predictions=["the cat sit on mat now"], references=["the cat sat on the mat"])
    assert result["num_edits"] == 3
    assert result["wer"] == pytest.approx(0.5)


def test_wer_is_corpus_level_not_mean_of_utterances(metrics):
    result = metrics["wer"].compute(
        predictions=["yellow", "one two three four"], references=["hello", "ONE TWO THREE FOUR"]
    )
    assert result["wer"] == pytest.approx(1 / 5)  # a per-utterance mean would give 0.5


def test_wer_edit_distance_and_empty_references(metrics):
    wer = _script("wer")
    assert wer.edit_distance(list("kitten"), list("sitting")) == 3
    assert wer.edit_distance([], ["a", "b"]) == 2
    with pytest.raises(ValueError, match="non-empty reference"):
        metrics["wer"].compute(predictions=["x"], references=["..."])


# --------------------------------------------------------------------------------------------------- exact match


def test_exact_match_normalises_and_reads_yes_no_first_word(metrics):
    result = metrics["exact_match"].compute(
        predictions=["Yes, a dog barks.", "Dog!", "a dog", "NO"],
        references=[["yes"], ["dog"], ["dog"], ["no", "no"]],
    )
    assert result["exact_match"] == 0.75
    strict = metrics["exact_match"].compute(
        predictions=["Yes, a dog barks."], references=[["yes"]], yes_no_first_word=False
    )
    assert strict["exact_match"] == 0.0
