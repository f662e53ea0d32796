"""MultimodalCollator: exact label masks, mixed-modality batches, truncation that never cuts media, stock Llava."""

import numpy as np
import pytest
import torch
from PIL import Image

from any2text.data.collator import EMPTY_BATCH_KEY, IGNORE_INDEX, MultimodalCollator
from any2text.data.loading import MultimodalDataset, parse_dataset_specs
from conftest import SAMPLING_RATE, tiny_models, write_llava_data


@pytest.fixture(scope="module")
def processor():
    return tiny_models().get_cheap_processor()


def image(color=(255, 0, 0)):
    return Image.new("RGB", (12, 12), color)


def clip(seconds=0.25):
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def user(*items):
    content = []
    for item in items:
        if isinstance(item, str):
            content.append({"type": "text", "text": item})
        elif isinstance(item, Image.Image):
            content.append({"type": "image", "image": item})
        else:
            content.append({"type": "audio", "audio": item})
    return {"role": "user", "content": content}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def labelled_text(tokenizer, input_ids, labels):
    """Decode the labelled runs, one string per contiguous run."""
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_single_turn_labels_are_exactly_the_answer_and_eot(processor):
    collator = MultimodalCollator(processor)
    batch = collator(
        [{"messages": [{"role": "system", "content": "Be brief."}, user(image(), "What color?"), assistant("Red.")]}]
    )
    runs = labelled_text(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert runs == ["Red.<|eot_id|>"]
    # Exactly those tokens, and nothing of the prompt, the image span or the headers.
    expected = processor.tokenizer("Red.<|eot_id|>", add_special_tokens=False)["input_ids"]
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert labelled == expected
    image_positions = batch["input_ids"][0] == processor.image_token_id
    assert int(image_positions.sum()) == processor.image_seq_length
    assert (batch["labels"][0][image_positions] == IGNORE_INDEX).all()


def test_multi_turn_labels_every_assistant_turn(processor):
    collator = MultimodalCollator(processor)
    messages = [
        user(image(), "What color?"),
        assistant("Red."),
        user(clip(), "And the pitch?"),
        assistant("Low, I think."),
        user("Thanks!"),
        assistant("You are welcome."),
    ]
    batch = collator([{"messages": messages}])
    runs = labelled_text(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert runs == ["Red.<|eot_id|>", "Low, I think.<|eot_id|>", "You are welcome.<|eot_id|>"]
    assert batch["pixel_values"].shape[0] == 1 and batch["input_features"].shape[0] == 1


def test_mixed_batch_pads_and_keeps_media_in_order(processor):
    collator = MultimodalCollator(processor)
    samples = [
        {"messages": [user(image(), "Q"), assistant("A")]},
        {"messages": [user(clip(), "Q"), assistant("B")]},
        {"messages": [user(image((0, 0, 255)), clip(), "Q"), assistant("C")]},
        {"messages": [user("Only text here, and a longer question."), assistant("D")]},
    ]
    batch = collator(samples)
    assert batch["input_ids"].shape[0] == 4
    assert batch["pixel_values"].shape[0] == 2 and batch["input_features"].shape[0] == 2
    assert batch["is_longer"].shape == (2, 1)
    pad = processor.tokenizer.pad_token_id
    for row in range(4):
        length = int(batch["attention_mask"][row].sum())
        # Right padding: pad ids, no labels, zero attention after the sample.
        assert (batch["input_ids"][row, length:] == pad).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row, :length].all()
        assert collator.sample_length(samples[row]["messages"]) == length
    counts = (batch["mm_token_type_ids"] == 1).sum(1).tolist(), (batch["mm_token_type_ids"] == 3).sum(1).tolist()
    assert counts == ([16, 0, 16, 0], [0, 16, 16, 0])


def test_media_references_load_lazily_from_the_dataset(tmp_path, processor):
    data = write_llava_data(tmp_path, ["image", "audio", "both", "text"])
    specs = parse_dataset_specs(str(data), templates="LLaVA")
    dataset = MultimodalDataset(specs, sampling_rate=SAMPLING_RATE, decode_media=False)
    assert isinstance(dataset[0]["messages"][0]["content"][0]["image"], str)  # still a path
    batch = MultimodalCollator(processor)([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == 2 and batch["input_features"].shape[0] == 2


def long_sample(n_words=60, media_first=True):
    text = " ".join(["word"] * n_words)
    items = (image(), text) if media_first else (text, image())
    return {"messages": [user(*items), assistant("Done.")]}


def test_truncation_error_names_sample_and_fix(processor):
    collator = MultimodalCollator(processor, max_length=40, truncation="error")
    with pytest.raises(ValueError, match=r"Sample 1 .*max_length=40.*truncation"):
        collator([{"messages": [user("Hi"), assistant("Yo")]}, long_sample()])


def test_truncation_drop_counts_and_never_returns_partial_media(processor):
    collator = MultimodalCollator(processor, max_length=40, truncation="drop")
    batch = collator([{"messages": [user("Hi"), assistant("Yo")]}, long_sample()])
    assert collator.num_dropped == 1
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch
    # A batch with nothing left is the marked placeholder the trainer skips (counted), not a crash.
    batch = collator([long_sample()])
    assert collator.num_dropped == 2
    assert batch[EMPTY_BATCH_KEY] is True and batch["input_ids"].shape == (1, 2) and "pixel_values" not in batch


@pytest.mark.parametrize("media_first", [True, False])
def test_truncation_text_cuts_text_but_never_a_media_span(processor, media_first):
    collator = MultimodalCollator(processor, max_length=40, truncation="text")
    # A long answer: the cut falls inside it, so labelled tokens remain.
    sample = {"messages": [user(image(), "Describe."), assistant(" ".join(["word"] * 60))]}
    batch = collator([sample if media_first else long_sample(media_first=False)])
    image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    if media_first:  # the image lies before the cut: kept whole, text cut to fit
        assert batch["input_ids"].shape[1] == 40 and image_tokens == 16 and batch["pixel_values"].shape[0] == 1
        assert collator.num_dropped == 0 and (batch["labels"] != IGNORE_INDEX).any()
    else:  # the cut would go through the image: the sample is dropped instead
        assert image_tokens == 0 and "pixel_values" not in batch and collator.num_dropped == 1


def test_stock_llava_processor_labels(processor):
    llava = tiny_models().get_llava_processor()
    collator = MultimodalCollator(llava)
    messages = [user(image(), "What color?"), assistant("Red."), user("Sure?"), assistant("Yes.")]
    batch = collator([{"messages": messages}, {"messages": [user("Hi"), assistant("Hello.")]}])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    runs = labelled_text(llava.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert runs == ["Red.<|eot_id|>", "Yes.<|eot_id|>"]
    assert int((batch["input_ids"][0] == llava.image_token_id).sum()) == 16
    assert collator.sample_length(messages) == int(batch["attention_mask"][0].sum())


def test_audio_with_an_image_only_processor_is_a_clear_error():
    collator = MultimodalCollator(tiny_models().get_llava_processor())
    with pytest.raises(ValueError, match="takes no audio"):
        collator([{"messages": [user(clip(), "Q"), assistant("A")]}])


def test_template_without_media_placeholders_is_a_clear_error():
    llava = tiny_models().get_llava_processor()
    llava.chat_template = llava.tokenizer.chat_template  # the text-only Llama-3 template drops image items
    with pytest.raises(ValueError, match="renders 0 `<image>`"):
        MultimodalCollator(llava)([{"messages": [user(image(), "Q"), assistant("A")]}])


def test_sample_without_assistant_turn_is_rejected(processor):
    with pytest.raises(ValueError, match="assistant turn"):
        MultimodalCollator(processor)([{"messages": [user("Hi")]}])


def test_template_without_generation_markers_falls_back_to_turn_rendering(processor):
    plain = processor.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    original = processor.chat_template
    processor.chat_template = plain
    try:
        batch = MultimodalCollator(processor)(
            [{"messages": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")]}]
        )
    finally:
        processor.chat_template = original
    runs = labelled_text(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert runs == ["A1<|eot_id|>", "A2<|eot_id|>"]
    assert torch.equal(batch["attention_mask"], torch.ones_like(batch["attention_mask"]))


def test_ensure_image_adds_a_blank_row_that_changes_nothing(tmp_path):
    """For stock Llava under ZeRO-3: a text-only batch still runs the vision tower, at zero loss and gradient."""
    from transformers import LlavaForConditionalGeneration

    llava = tiny_models().get_llava_processor()
    samples = [{"messages": [user("Hi"), assistant("Hello.")]}, {"messages": [user("Bye"), assistant("See you.")]}]
    plain = MultimodalCollator(llava)(samples)
    guarded = MultimodalCollator(llava, ensure_image=True)(samples)
    assert "pixel_values" not in plain and guarded["pixel_values"].shape[0] == 1
    assert guarded["input_ids"].shape[0] == 3 and (guarded["labels"][2] == IGNORE_INDEX).all()
    assert int((guarded["input_ids"][2] == llava.image_token_id).sum()) == 16
    # A batch that already has an image is left alone.
    with_image = [{"messages": [user(image(), "Colour?"), assistant("Red.")]}, *samples]
    assert MultimodalCollator(llava, ensure_image=True)(with_image)["input_ids"].shape[0] == 3

    model = LlavaForConditionalGeneration.from_pretrained(tiny_models().save_llava_checkpoint(tmp_path / "llava"))
    model.train()
    plain_loss = model(**plain).loss
    guarded_loss = model(**guarded).loss
    torch.testing.assert_close(guarded_loss, plain_loss)
    guarded_loss.backward()
    assert torch.count_nonzero(model.model.multi_modal_projector.linear_1.weight.grad) == 0
