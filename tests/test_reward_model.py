"""`LlamaVisionAudioForSequenceClassification`: the score at the last non-pad token, Auto class and remote code,
loading from a stage-2 checkpoint and from a stock Llava one."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    AutoProcessor,
    LlavaForConditionalGeneration,
)

from any2text import LlamaVisionAudioForSequenceClassification
from any2text.training.reward import load_reward_model
from builders_fixtures import run_without_any2text
from conftest import make_image, make_tone

CONVERSATIONS = [
    ([{"type": "image"}, {"type": "text", "text": "What colour is the shape in the picture?"}], "It is red."),
    ([{"type": "audio"}, {"type": "text", "text": "High?"}], "Low."),
    ([{"type": "text", "text": "What comes after two?"}], "Three, and then four and five."),
    ([{"type": "audio"}, {"type": "image"}, {"type": "text", "text": "Both?"}], "Yes."),
]
MEDIA = [([make_image("red")], []), ([], [make_tone(300.0, 0.5, 16000)]), ([], []),
         ([make_image("blue")], [make_tone(3000.0, 0.5, 16000)])]  # fmt: skip


def _batch(processor, padding_side: str, indices=range(4)):
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": CONVERSATIONS[i][0]},
             {"role": "assistant", "content": [{"type": "text", "text": CONVERSATIONS[i][1]}]}]
        )
        for i in indices
    ]  # fmt: skip
    images = [image for i in indices for image in MEDIA[i][0]]
    audio = [clip for i in indices for clip in MEDIA[i][1]]
    return processor(
        text=texts, images=images or None, audio=audio or None, sampling_rate=16000, padding=True,
        padding_side=padding_side, add_special_tokens=False, return_tensors="pt",
    )  # fmt: skip


@pytest.fixture(scope="module")
def reward_model(tester):
    torch.manual_seed(0)
    config = tester.get_config(cheap_audio=True)
    model = LlamaVisionAudioForSequenceClassification._from_config(config).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a visible score, not a near-zero one
    return model, tester.get_cheap_processor(config.audio_seq_length, config.image_seq_length)


def test_num_labels_defaults_to_one_and_the_head_has_no_bias(reward_model):
    model, _ = reward_model
    assert model.config.num_labels == 1 and model.score.bias is None
    assert model.score.weight.shape == (1, model.config.text_config.hidden_size)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_score_is_the_hidden_state_at_the_last_real_token(reward_model, padding_side):
    model, processor = reward_model
    batch = _batch(processor, padding_side)
    assert (batch["attention_mask"] == 0).any() and "pixel_values" in batch and "input_features" in batch
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.model(**batch).last_hidden_state
    assert logits.shape == (4, 1)
    # The last attended column, found from the attention mask (the model reads the pad token id).
    columns = torch.arange(batch["attention_mask"].shape[1])
    last = (columns * batch["attention_mask"]).argmax(-1)
    if padding_side == "left":
        assert (last == batch["attention_mask"].shape[1] - 1).all()
    expected = hidden[torch.arange(4), last] @ model.score.weight.T
    torch.testing.assert_close(logits, expected)
    # Each row scores as it does alone (padding never reaches the score).
    for i in range(4):
        with torch.no_grad():
            alone = model(**_batch(processor, padding_side, [i])).logits
        torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-4, atol=1e-4)


def test_per_position_scores_and_sequence_classification_loss(reward_model):
    model, processor = reward_model
    batch = _batch(processor, "right")
    with torch.no_grad():
        pooled = model(**batch).logits
        every = model(**batch, logits_to_keep=0).logits
        regression = model(**batch, labels=torch.tensor([1.0, 0.0, -1.0, 2.0]))
    assert every.shape == (*batch["input_ids"].shape, 1)
    last = (torch.arange(batch["input_ids"].shape[1]) * batch["attention_mask"]).argmax(-1)
    torch.testing.assert_close(every[torch.arange(4), last], pooled)
    # transformers' sequence classification loss: num_labels=1 is a regression (MSE).
    torch.testing.assert_close(
        regression.loss, torch.mean((pooled.squeeze(-1) - torch.tensor([1.0, 0.0, -1.0, 2.0])) ** 2)
    )


def test_loads_from_a_stage2_checkpoint_with_a_new_score_head(tiny_checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="any2text"):
        model = load_reward_model(str(tiny_checkpoint))
    assert type(model) is LlamaVisionAudioForSequenceClassification and model.num_labels == 1
    assert any("`score`" in message and "newly initialised" in message for message in caplog.messages)
    assert torch.isfinite(model.score.weight).all() and model.score.weight.abs().sum() > 0
    # Every other weight is the checkpoint's.
    generator = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    expected = generator.model.state_dict()
    for name, value in model.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # The Auto class resolves it too (registered on `import any2text`), with one label by default.
    auto = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint)
    assert type(auto) is LlamaVisionAudioForSequenceClassification and auto.config.num_labels == 1


@pytest.mark.parametrize("nested", [False, True], ids=["as-saved", "builder-layout"])
def test_loads_from_a_stock_llava_checkpoint(tiny_llava_checkpoint, tmp_path, nested):
    path = tiny_llava_checkpoint
    if nested:  # the layout `any2text build` writes (`vision_tower.vision_model.*`, as on the Hub)
        from any2text.builders.llama_vision import nest_vision_tower_keys

        path = Path(shutil.copytree(tiny_llava_checkpoint, tmp_path / "llava"))
        nest_vision_tower_keys(path)
    model = load_reward_model(str(path)).eval()
    llava = LlavaForConditionalGeneration.from_pretrained(path).eval()
    assert type(model) is LlamaVisionAudioForSequenceClassification and model.model.audio_tower is None
    assert AutoConfig.from_pretrained(path).model_type == "llava"
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]  # fmt: skip
    inputs = processor(text=[processor.apply_chat_template(messages)], images=[make_image("red")], return_tensors="pt")
    with torch.no_grad():
        ours = model.model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).last_hidden_state
        theirs = llava.model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).last_hidden_state
        torch.testing.assert_close(ours, theirs)  # same weights, projector included, same image features
        assert model(**inputs).logits.shape == (1, 1)


def test_ships_as_remote_code_and_loads_without_any2text(reward_model, tmp_path):
    from any2text.builders import enable_remote_code

    model, processor = reward_model
    enable_remote_code()  # class-level: every later save ships the code (as the builders' tests do too)
    path = tmp_path / "rm"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    auto_map = json.loads((path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"].endswith("LlamaVisionAudioForSequenceClassification")
    batch = _batch(processor, "right")
    with torch.no_grad():
        torch.save({"logits": model(**batch).logits, "batch": dict(batch)}, tmp_path / "expected.pt")
    proc = run_without_any2text(
        f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        expected = torch.load("expected.pt", weights_only=False)
        with torch.no_grad():
            logits = model(**expected["batch"]).logits
        torch.testing.assert_close(logits, expected["logits"])
        print("remote reward model ok")
        """,
        cwd=tmp_path,
    )
    assert "remote reward model ok" in proc.stdout
