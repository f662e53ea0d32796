"""Templates: one row of each dataset's real schema -> the exact messages."""

import pytest

from any2text.data.templates import (
    ASR_PROMPT,
    AUDIO_CAPTION_PROMPT,
    MULTIPLE_CHOICE_LETTER_PROMPT,
    MULTIPLE_CHOICE_TEXT_PROMPT,
    SHORT_ANSWER_PROMPT,
    available_templates,
    get_template,
    register_template,
    split_placeholders,
)

IMG = {"bytes": b"png", "path": "000000033471.jpg"}  # what an Image(decode=False) column gives
WAV = {"bytes": b"wav", "path": "clip.wav"}


def text(t):
    return {"type": "text", "text": t}


def image(ref):
    return {"type": "image", "image": ref}


def audio(ref):
    return {"type": "audio", "audio": ref}


def user(*content):
    return {"role": "user", "content": list(content)}


def assistant(t):
    return {"role": "assistant", "content": [text(t)]}


# ---------------------------------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", ["A-OKVQA", "aokvqa", "A_OKVQA", "a-okvqa", "AOKVQA"])
def test_lookup_ignores_case_and_punctuation(name):
    assert get_template(name).name == "A-OKVQA"


def test_aliases_and_seed_names():
    assert get_template("LLAVA") is get_template("ShareGPT-4o")
    assert get_template("OCRVQA").name == "OCR-VQA"  # the seed's spelling
    assert get_template("ok_vqa").name == "OK-VQA"
    assert get_template("okvqa") is not get_template("aokvqa")


def test_unknown_template_lists_available():
    with pytest.raises(ValueError, match=r"Unknown template `NoSuchSet`.*`A-OKVQA`.*`VQAv2`"):
        get_template("NoSuchSet")


def test_register_custom_template_and_clash():
    @register_template("My-Test-Set", required_columns=("q", "a"))
    def my_set(row):
        return [user(text(row["q"])), assistant(row["a"])]

    template = get_template("my_test_set")
    assert template({"q": "hi", "a": "yo"}) == [user(text("hi")), assistant("yo")]
    assert template.missing_columns(["q"]) == ["a"]
    assert "My-Test-Set" in available_templates()
    register_template("My-Test-Set", my_set)  # re-registering the same function is harmless
    with pytest.raises(ValueError, match="clashes with the registered template `My-Test-Set`"):
        register_template("mytestset", lambda row: [])


# ---------------------------------------------------------------------------------------------------------------------
# Placeholders


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("<image>\nWhat is this?", [image("i0"), text("What is this?")]),
        ("What is this?\n<image>", [text("What is this?"), image("i0")]),
        (
            "Compare <image> and\n<image>  please",
            [text("Compare"), image("i0"), text("and"), image("i1"), text("please")],
        ),
        ("<image><audio>", [image("i0"), audio("a0")]),
        ("  keep  inner   spacing ", [text("  keep  inner   spacing ")]),
    ],
)
def test_split_placeholders(raw, expected):
    assert split_placeholders(raw, {"image": ["i0", "i1"], "audio": ["a0"]}) == expected


# ---------------------------------------------------------------------------------------------------------------------
# LLaVA family

LLAVA = get_template("LLaVA")


def test_llava_instruct_multi_turn_image_first():
    row = {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    }
    assert LLAVA(row) == [
        user(image("coco/train2017/000000033471.jpg"), text("What are the colors of the bus in the image?")),
        assistant("The bus in the image is white and red."),
        user(text("What feature can be seen on the back of the bus?")),
        assistant("The back of the bus features an advertisement."),
    ]


def test_llava_pretrain_image_after_text():
    row = {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
        ],
    }
    assert LLAVA(row) == [
        user(text("Render a clear and concise summary of the photo."), image("00453/004539375.jpg")),
        assistant("select luxury furniture 3 - inch gel memory foam mattress topper"),
    ]


def test_llava_text_only_row_and_system_turn():
    row = {
        "id": 17,
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
        ],
    }
    assert LLAVA(row) == [{"role": "system", "content": [text("Be brief.")]}, user(text("Hi")), assistant("Hello.")]
    # a text-only row inside a mixed JSON file: the `image` key exists but is None
    assert LLAVA({**row, "image": None}) == LLAVA(row)


def test_llava_image_without_placeholder_is_prepended_to_first_user_turn():
    row = {
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A cat."}],
    }
    assert LLAVA(row) == [user(image("a.jpg"), text("Describe it.")), assistant("A cat.")]


def test_llava_multiple_images_and_audio_with_role_content_turns():
    row = {
        "images": ["a.jpg", "b.jpg"],
        "audio": "c.wav",
        "conversations": [
            {"role": "user", "content": "<image> vs <image>, and <audio>?"},
            {"role": "assistant", "content": "Same."},
        ],
    }
    assert LLAVA(row) == [
        user(image("a.jpg"), text("vs"), image("b.jpg"), text(", and"), audio("c.wav"), text("?")),
        assistant("Same."),
    ]


def test_llava_placeholder_count_mismatch_names_row():
    row = {
        "id": "bad-1",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "<image> <image> Hi"}, {"from": "gpt", "value": "Yo"}],
    }
    with pytest.raises(ValueError, match=r"row `id=bad-1` has 2 `<image>` placeholder\(s\) but 1 image"):
        LLAVA(row)
    with pytest.raises(ValueError, match=r"row `id=bad-2` has 1 `<image>` placeholder\(s\) but 0 image"):
        LLAVA({"id": "bad-2", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]})


def test_llava_bad_turns():
    with pytest.raises(ValueError, match="turn from `robot`"):
        LLAVA({"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]})
    with pytest.raises(ValueError, match="no assistant"):
        LLAVA({"id": 3, "conversations": [{"from": "human", "value": "x"}]})


# ---------------------------------------------------------------------------------------------------------------------
# Image VQA

AOKVQA_ROW = {
    "image": IMG,
    "question_id": "22MexNkBPpdZGX6sxbxVBH",
    "question": "What is the man by the bags awaiting?",
    "choices": ["skateboarder", "train", "delivery", "cab"],
    "correct_choice_idx": 3,
    "direct_answers": ["ride", "ride", "bus", "taxi", "travelling", "traffic", "taxi", "cab", "cab", "his ride"],
    "difficult_direct_answer": False,
    "rationales": ["A train would not be on the street.", "He has bags.", "He is waiting for a taxi."],
}
AOKVQA_PROMPT = "What is the man by the bags awaiting?\nA. skateboarder\nB. train\nC. delivery\nD. cab"


def test_aokvqa_answers_with_choice_text():
    assert get_template("A-OKVQA")(AOKVQA_ROW) == [
        user(image(IMG), text(f"{AOKVQA_PROMPT}\n{MULTIPLE_CHOICE_TEXT_PROMPT}")),
        assistant("cab"),
    ]


def test_aokvqa_mc_answers_with_letter():
    assert get_template("A-OKVQA-MC")(AOKVQA_ROW) == [
        user(image(IMG), text(f"{AOKVQA_PROMPT}\n{MULTIPLE_CHOICE_LETTER_PROMPT}")),
        assistant("D"),
    ]


def test_aokvqa_test_split_without_answer():
    with pytest.raises(ValueError, match="row `question_id=22MexNkBPpdZGX6sxbxVBH` has no `correct_choice_idx`"):
        get_template("A-OKVQA")({**AOKVQA_ROW, "correct_choice_idx": None})


def test_vqav2():
    row = {
        "question_type": "what color",
        "multiple_choice_answer": "white",
        "answers": [{"answer": "white", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
        "image_id": 458752,
        "answer_type": "other",
        "question_id": 458752000,
        "question": "What color is the man's shirt?",
        "image": IMG,
    }
    assert get_template("VQAv2")(row) == [
        user(image(IMG), text(f"What color is the man's shirt?\n{SHORT_ANSWER_PROMPT}")),
        assistant("white"),
    ]


def test_okvqa_most_common_answer_ties_to_first():
    row = {
        "image": IMG,
        "question": "What sport can you use this for?",
        "question_id": 5170,
        "answers": ["race", "race", "race", "motocross", "motocross", "motocross", "ride", "ride", "ride", "race"],
        "answers_original": [],
        "id_image": 517,
    }
    expected = [user(image(IMG), text(f"What sport can you use this for?\n{SHORT_ANSWER_PROMPT}")), assistant("race")]
    assert get_template("OK-VQA")(row) == expected
    tie = {**row, "answers": ["ride", "race", "race", "ride"]}
    assert get_template("OK-VQA")(tie)[-1] == assistant("ride")


def test_ocrvqa_is_multi_turn_with_image_in_first_turn():
    row = {
        "image": IMG,
        "image_id": "1935180004",
        "questions": ["Who wrote this book?", "What is the genre of this book?", "Is this a comedy book?"],
        "answers": ["Kelly Winslow", "Humor & Entertainment", "Yes"],
        "ocr_tokens": ["kelly"],
        "title": "Funny book",
        "genre": "Humor & Entertainment",
    }
    assert get_template("OCR-VQA")(row) == [
        user(image(IMG), text(f"Who wrote this book?\n{SHORT_ANSWER_PROMPT}")),
        assistant("Kelly Winslow"),
        user(text(f"What is the genre of this book?\n{SHORT_ANSWER_PROMPT}")),
        assistant("Humor & Entertainment"),
        user(text(f"Is this a comedy book?\n{SHORT_ANSWER_PROMPT}")),
        assistant("Yes"),
    ]
    with pytest.raises(ValueError, match="3 `questions` and 2 `answers`"):
        get_template("OCR-VQA")({**row, "answers": ["a", "b"]})


# ---------------------------------------------------------------------------------------------------------------------
# Audio


def test_audiocaps():
    row = {
        "audiocap_id": 91139,
        "youtube_id": "r1nicOVtvkQ",
        "start_time": 130,
        "caption": "A man talks nearby ",
        "audio": WAV,
    }
    assert get_template("AudioCaps")(row) == [
        user(audio(WAV), text(AUDIO_CAPTION_PROMPT)),
        assistant("A man talks nearby"),
    ]
    seed_layout = {"audiocap_path": "audios/91139.wav", "caption": "A man talks"}
    assert get_template("AudioCaps")(seed_layout)[0] == user(audio("audios/91139.wav"), text(AUDIO_CAPTION_PROMPT))


def test_clotho_takes_first_of_five_captions():
    row = {
        "index": 0,
        "audio": WAV,
        "text": "A bird chirps loudly. Birds sing in a forest. Chirping of birds. Wind and birds. A bird sings.",
        "raw_text": "",
    }
    assert get_template("Clotho")(row) == [
        user(audio(WAV), text(AUDIO_CAPTION_PROMPT)),
        assistant("A bird chirps loudly"),
    ]


def test_librispeech_lowercases():
    row = {
        "file": "1272-128104-0000.flac",
        "audio": WAV,
        "text": "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES",
        "speaker_id": 1272,
        "chapter_id": 128104,
        "id": "1272-128104-0000",
    }
    assert get_template("LibriSpeech")(row) == [
        user(audio(WAV), text(ASR_PROMPT)),
        assistant("mister quilter is the apostle of the middle classes"),
    ]


def test_clotho_aqa_both_forms():
    expected = [user(audio(WAV), text(f"Is it raining?\n{SHORT_ANSWER_PROMPT}")), assistant("yes")]
    template = get_template("Clotho-AQA")
    assert template({"audio": WAV, "question": "Is it raining?", "answer": "yes"}) == expected
    assert template({"audio": WAV, "text": "Question: Is it raining? Answer: yes"}) == expected
    with pytest.raises(ValueError, match="not of the form `Question: ... Answer: ...`"):
        template({"audio": WAV, "text": "just a caption", "index": 4})


def test_missing_value_names_row():
    with pytest.raises(ValueError, match=r"row `question_id=7` has no value in column `question`"):
        get_template("VQAv2")({"question_id": 7, "image": IMG, "question": None, "multiple_choice_answer": "x"})
