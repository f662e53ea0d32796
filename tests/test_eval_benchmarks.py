"""Benchmark registry: real-schema rows become the lmms-eval prompts, references and metric inputs."""

import PIL.Image
import pytest

from any2text.evaluation.benchmarks import BENCHMARKS, get_benchmark

IMAGE = PIL.Image.new("RGB", (8, 8))
AUDIO = {"bytes": b"RIFF", "path": "clip.wav"}


def test_every_benchmark_is_registered_with_a_packaged_metric():
    from any2text.evaluation.metrics import METRIC_NAMES

    generation = {
        "vqav2", "okvqa", "aokvqa_mc", "aokvqa_da", "mme", "mmbench", "clotho", "audiocaps", "librispeech", "clotho_aqa",
        "mvbench", "videomme",
    }  # fmt: skip
    assert set(BENCHMARKS) == generation | {"preference", "reward"}
    assert all(BENCHMARKS[name].metric in METRIC_NAMES for name in generation)
    with pytest.raises(ValueError, match="Unknown benchmark `gqa`"):
        get_benchmark("gqa")


def test_vqav2_row():
    row = {
        "question_id": 262148000,
        "question": "How many dogs?",
        "image": IMAGE,
        "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(10)],
    }
    item = get_benchmark("vqav2").build_item(row, row_index=5)
    assert item.id == "262148000"
    assert item.prompt == "How many dogs?\nAnswer the question using a single word or phrase."
    assert item.references == ["2"] * 10
    assert item.messages == [
        {"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": item.prompt}]}
    ]


def test_okvqa_and_aokvqa_rows():
    okvqa = get_benchmark("okvqa").build_item(
        {"question_id": 7, "question": "What sport?", "image": IMAGE, "answers": ["tennis"] * 10}, 0
    )
    assert okvqa.prompt.startswith("What sport?\nWhen the provided information is insufficient")
    assert okvqa.references == ["tennis"] * 10

    row = {
        "question_id": "22MexNkBPpdZGX6sxbxVBH",
        "question": "What is the man holding?",
        "image": IMAGE,
        "choices": ["bat", "racket", "ball", "glove"],
        "correct_choice_idx": 1,
        "direct_answers": "['racket', 'racket', 'tennis racket']",  # sometimes stored stringified
    }
    mc = get_benchmark("aokvqa_mc").build_item(row, 3)
    assert mc.prompt == (
        "What is the man holding?\nA. bat\nB. racket\nC. ball\nD. glove\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert mc.references == ["B"]
    assert mc.meta == {"index": 3, "category": "aokvqa", "choices": ["bat", "racket", "ball", "glove"]}
    assert get_benchmark("aokvqa_da").build_item(row, 3).references == ["racket", "racket", "tennis racket"]


def test_mme_row_replaces_yes_no_instruction_and_keeps_pairs_apart():
    bench = get_benchmark("mme")
    row = {
        "question_id": "code_reasoning/0020.png",
        "question": "Is a c++ code shown in the picture? Please answer yes or no.",
        "answer": "Yes",
        "category": "code_reasoning",
        "image": IMAGE,
    }
    item = bench.build_item(row, 10)
    assert item.prompt == "Is a c++ code shown in the picture?\nAnswer the question using a single word or phrase."
    assert item.references == ["Yes"]
    assert item.meta == {"question_id": "code_reasoning/0020.png", "category": "code_reasoning"}
    # The two questions of one image share question_id, so ids come from the row index.
    assert item.id == "10" and bench.build_item(row, 11).id == "11"
    # An empty suffix keeps the original question, like lmms-eval without a post_prompt.
    assert bench.build_item(row, 10, prompt_suffix="").prompt == row["question"]


def test_mmbench_row_with_hint_and_missing_options():
    row = {
        "index": 1000241,
        "question": "Which animal is shown?",
        "hint": "Look at the ears.",
        "A": "cat",
        "B": "dog",
        "C": "nan",
        "D": None,
        "answer": "B",
        "category": "image_scene",
        "image": IMAGE,
        "source": "x",
        "L2-category": "y",
        "comment": "",
        "split": "dev",
    }
    item = get_benchmark("mmbench").build_item(row, 0)
    assert item.prompt == (
        "Look at the ears. Which animal is shown? Options:\nA. cat\nB. dog\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert item.id == "1000241"
    assert item.meta == {"index": 1000241, "category": "image_scene", "choices": ["cat", "dog"]}
    no_hint = get_benchmark("mmbench").build_item({**row, "hint": float("nan")}, 0)
    assert no_hint.prompt.startswith("Which animal is shown? Options:\nA. cat")


def test_audio_rows():
    clotho = get_benchmark("clotho").build_item(
        {"index": 4, "audio": AUDIO, "text": "A dog barks. Rain falls. Wind blows. A car passes. Birds sing."}, 0
    )
    assert clotho.id == "4"
    assert clotho.references == ["A dog barks", "Rain falls", "Wind blows", "A car passes", "Birds sing"]
    assert clotho.messages[0]["content"][0] == {"type": "audio", "audio": AUDIO}
    # Evaluation asks what the training templates taught (any2text.data.templates).
    assert clotho.prompt == "Give an overview of what's in the audio."

    asr = get_benchmark("librispeech").build_item({"id": "1089-134686-0000", "audio": AUDIO, "text": "HE HOPED"}, 0)
    assert asr.references == ["HE HOPED"]
    assert asr.prompt == "Transcribe the speech in the audio."

    aqa = get_benchmark("clotho_aqa").build_item({"audio": AUDIO, "question": "Is it raining?", "answer": "yes"}, 9)
    assert aqa.id == "9"
    assert aqa.prompt == "Is it raining?\nAnswer the question using a single word or phrase."
    assert aqa.references == ["yes"]

    caps = get_benchmark("audiocaps").build_item({"audiocap_id": 91, "audio": AUDIO, "captions": ["a", "b"]}, 0)
    assert (caps.id, caps.references) == ("91", ["a", "b"])


def test_clear_errors_for_bad_rows():
    bench = get_benchmark("vqav2")
    with pytest.raises(ValueError, match=r"Benchmark `vqav2` needs columns \['question'\]"):
        bench.check_columns(["image", "answers"])
    with pytest.raises(ValueError, match="row 3 has no `image`"):
        bench.build_item({"question": "q", "image": None, "answers": ["a"]}, 3)
    with pytest.raises(ValueError, match="Benchmark `clotho`: cannot read row 2"):
        get_benchmark("clotho").build_item({"audio": AUDIO}, 2)


def test_metric_inputs_from_records():
    bench = get_benchmark("mme")
    records = [
        {"id": "0", "prediction": "Yes", "references": ["Yes"], "meta": {"question_id": "a", "category": "count"}},
        {"id": "1", "prediction": "No", "references": ["No"], "meta": {"question_id": "a", "category": "count"}},
    ]
    assert bench.metric_inputs(records) == {
        "predictions": ["Yes", "No"],
        "references": ["Yes", "No"],
        "question_id": ["a", "a"],
        "category": ["count", "count"],
    }
    assert bench.score(records)["count"] == 200.0
    # Unlabelled rows (test splits) are not scored.
    assert bench.score([{**records[0], "references": []}]) == {}


def test_benchmark_prompts_are_their_training_templates_prompts():
    from any2text.data.templates import get_template

    rows = {
        "vqav2": {"question": "How many dogs?", "image": IMAGE, "multiple_choice_answer": "2"},
        "aokvqa_mc": {"question": "Holding?", "image": IMAGE, "choices": ["bat", "racket"], "correct_choice_idx": 1},
        "aokvqa_da": {"question": "Holding?", "image": IMAGE, "direct_answers": ["racket", "bat", "racket"]},
        "librispeech": {"id": "1", "audio": AUDIO, "text": "HE HOPED"},
        "clotho_aqa": {"audio": AUDIO, "question": "Is it raining?", "answer": "yes"},
    }
    for name, row in rows.items():
        bench = get_benchmark(name)
        template = get_template(bench.template)
        trained = template(row)  # the messages a model is trained on
        item = bench.build_item(row, 0)
        assert item.prompt == trained[0]["content"][-1]["text"] == template.prompt(row), name
        assert item.messages[0]["content"][0] == trained[0]["content"][0], name  # the medium, first
    # A benchmark that asks differently from its template says so (lmms-eval's OK-VQA instruction).
    okvqa_row = {"question": "What sport?", "image": IMAGE, "answers": ["tennis"]}
    assert get_benchmark("okvqa").build_item(okvqa_row, 0).prompt != get_template("OK-VQA").prompt(okvqa_row)


def test_empty_multiple_choice_options_are_left_out_in_training_and_evaluation():
    # lmms-eval lists only the options a row has; the letters stay those of the answer key.
    from any2text.data.templates import get_template

    row = {"question": "Holding?", "image": IMAGE, "choices": ["bat", "", "ball", "glove"], "correct_choice_idx": 2}
    expected = "Holding?\nA. bat\nC. ball\nD. glove\nAnswer with the option's letter from the given choices directly."
    assert get_benchmark("aokvqa_mc").build_item(row, 0).prompt == expected
    assert get_template("A-OKVQA-MC")(row)[0]["content"][-1]["text"] == expected
    assert get_template("A-OKVQA-MC")(row)[1]["content"][0]["text"] == "C"
    with pytest.raises(ValueError, match="correct_choice_idx=1"):
        get_template("A-OKVQA-MC")({**row, "correct_choice_idx": 1})  # the answer cannot be an empty option
    mmbench = {"index": 1, "question": "Which?", "A": "cat", "B": "", "C": "dog", "answer": "C", "category": "x"}
    prompt = get_benchmark("mmbench").build_item({**mmbench, "image": IMAGE}, 0).prompt
    assert prompt.startswith("Which? Options:\nA. cat\nC. dog\n")
    assert get_template("MMBench")({**mmbench, "image": IMAGE})[0]["content"][-1]["text"] == prompt


def test_conversation_templates_have_no_single_prompt():
    from any2text.data.templates import get_template

    with pytest.raises(TypeError, match="Template `LLaVA` makes whole conversations"):
        get_template("LLaVA").prompt({"conversations": []})


def test_mvbench_row_is_lmms_eval_prompt_with_the_letter_of_the_answer_text():
    row = {"video": "clevrer/video_10009.mp4", "question": "Which way does the cube move?",
           "candidates": ["left", "down", "right"], "answer": "right"}  # fmt: skip
    item = get_benchmark("mvbench").build_item(row, 4)
    assert item.messages[0]["content"][0] == {"type": "video", "video": "clevrer/video_10009.mp4"}
    assert (
        item.prompt
        == "Question:Which way does the cube move?\nOption:\n(A) left\n(B) down\n(C) right\nOnly give the best option."
    )
    assert item.references == ["C"] and item.id == "4"
    assert item.meta == {"index": 4, "category": "mvbench", "choices": ["left", "down", "right"]}
    with pytest.raises(ValueError, match="has `answer` 'up', which is none of its `candidates`"):
        get_benchmark("mvbench").build_item({**row, "answer": "up"}, 4)


def test_videomme_row_names_its_video_by_id_and_scores_by_letter():
    row = {"video_id": "001", "duration": "short", "domain": "Knowledge", "videoID": "fFjv93ACGo8",
           "question_id": "001-1", "task_type": "Counting Problem", "question": "How many kinds of fruit?",
           "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. Three."], "answer": "C"}  # fmt: skip
    bench = get_benchmark("videomme")
    item = bench.build_item(row, 0)
    assert item.messages[0]["content"][0] == {"type": "video", "video": "fFjv93ACGo8.mp4"}
    assert item.prompt.startswith(
        "Select the best answer to the following multiple-choice question based on the video"
    )
    assert item.prompt.endswith(
        "How many kinds of fruit?\nA. Apples.\nB. Candles.\nC. Berries.\nD. Three.\nThe best answer is:"
    )
    assert (item.id, item.references) == ("001-1", ["C"])
    assert item.meta["choices"] == ["Apples.", "Candles.", "Berries.", "Three."]
    # A local row may carry the path itself.
    assert bench.build_item({**row, "video": "clips/a.mp4"}, 0).messages[0]["content"][0]["video"] == "clips/a.mp4"
    # Exact match on the letter read off the answer: "C", "(C)", "C. Berries." and the option's text all count.
    records = [{"prediction": p, "references": ["C"], "meta": {**item.meta, "index": i}}
               for i, p in enumerate(["C", "(C)", "C. Berries.", "Berries.", "B", "I think A or C"])]  # fmt: skip
    scores = bench.score(records)
    assert scores["accuracy"] == pytest.approx(4 / 6) and scores["Counting Problem"] == pytest.approx(4 / 6)
    assert scores["extraction_failures"] == 1
