"""Generation with media, where transformers' `GenerationTesterMixin` would test it (it is not in the sdist).

Assisted decoding with media, left padding, `inputs_embeds` generation and the static cache, each compared with
plain greedy decoding of the same tiny image+audio model.
"""

import pytest
import torch

from conftest import make_image, make_tone

MAX_NEW = 6


@pytest.fixture(scope="module")
def model(tester):
    return tester.get_model(seed=1)


def chat_inputs(processor, conversations, media):
    processor.tokenizer.padding_side = "left"
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    images = [im for ims, _ in media for im in ims]
    audio = [a for _, clips in media for a in clips]
    return processor(
        text=prompts,
        images=images or None,
        audio=audio or None,
        sampling_rate=48000,
        padding=True,
        add_special_tokens=False,
        return_tensors="pt",
    )


def image_audio_prompt(processor, text="What do you see and hear?", color="red", freq=440.0):
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": text}]}
    ]
    return chat_inputs(processor, [conversation], [([make_image(color)], [make_tone(freq)])])


def greedy(model, inputs, **kwargs):
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False, **kwargs)
    return out[:, inputs["input_ids"].shape[1] :] if "input_ids" in inputs else out


def test_assisted_decoding_with_media_equals_greedy(model, processor):
    """The assistant never gets media (transformers' rule): its placeholders are text, the main model checks."""
    inputs = image_audio_prompt(processor)
    expected = greedy(model, inputs)
    assert torch.equal(greedy(model, inputs, assistant_model=model), expected)
    # The media matter: another image and clip change the next-token distribution of the same text.
    other = image_audio_prompt(processor, color="blue", freq=3000.0)
    with torch.no_grad():
        assert not torch.allclose(model(**other).logits[:, -1], model(**inputs).logits[:, -1])


def test_left_padded_batch_equals_each_prompt_alone(model, processor):
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Both?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "A much longer question with no media at all?"}]}],
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Sound?"}]}],
    ]
    media = [([make_image("green")], [make_tone(300.0)]), ([], []), ([], [make_tone(2500.0)])]
    batch = chat_inputs(processor, conversations, media)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch must really be left-padded"
    generated = greedy(model, batch)
    for i in range(3):
        alone = chat_inputs(processor, [conversations[i]], [media[i]])
        assert torch.equal(greedy(model, alone)[0], generated[i]), f"prompt {i} differs inside the batch"


def test_generation_from_inputs_embeds_with_media_equals_from_input_ids(model, processor):
    inputs = image_audio_prompt(processor)
    expected = greedy(model, inputs)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = {k: v for k, v in inputs.items() if k != "input_ids"}
    from_embeds["inputs_embeds"] = embeds
    assert torch.equal(greedy(model, from_embeds), expected)


def test_static_cache_equals_dynamic_cache(model, processor):
    inputs = image_audio_prompt(processor)
    expected = greedy(model, inputs)
    assert torch.equal(greedy(model, inputs, cache_implementation="static"), expected)
    assert torch.equal(greedy(model, inputs, use_cache=False), expected)
