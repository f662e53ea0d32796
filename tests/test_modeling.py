"""LlamaVisionAudio config and model: paths, loss, placeholders, save/load and generation."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    ClapAudioConfig,
    CLIPVisionConfig,
    LlamaConfig,
    SiglipVisionConfig,
)

from any2text import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioModel,
    LlamaVisionAudioProcessor,
    register_auto_classes,
)
from conftest import make_image, make_tone


def mixed_inputs(tester, processor):
    """Two samples: image then audio, and audio then image, with a short answer each."""
    texts = ["<image>\nWhat is it? <audio> Listen.", "<audio> and <image>: compare them."]
    images = [make_image("red"), make_image("blue")]
    audio = [make_tone(440.0), make_tone(2000.0)]
    inputs = processor(text=texts, images=images, audio=audio, sampling_rate=48000, padding=True, return_tensors="pt")
    return inputs


def test_config_derives_token_counts_from_encoders():
    config = AutoConfig.for_model(
        "llama_vision_audio",
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4).to_dict(),
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14),
        audio_config=ClapAudioConfig(),
    )
    assert isinstance(config, LlamaVisionAudioConfig)
    assert config.image_seq_length == 576
    assert config.audio_seq_length == 64
    assert config.audio_feature_size == 768
    full = LlamaVisionAudioConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14).to_dict())
    full.vision_feature_select_strategy = "full"
    assert full.image_seq_length == 577
    assert full.audio_config is None and full.audio_seq_length == 0
    # SigLIP has no CLS embedding, so "default" must not drop one.
    siglip = LlamaVisionAudioConfig(vision_config=SiglipVisionConfig(image_size=224, patch_size=16))
    assert siglip.image_seq_length == 196
    # The seed's spelling of the token ids still works.
    assert LlamaVisionAudioConfig(image_token_index=7).image_token_id == 7


def test_registration_is_idempotent_and_covers_auto_classes(tester):
    register_auto_classes()
    register_auto_classes()
    config = tester.get_config()
    assert type(AutoModel.from_config(config)) is LlamaVisionAudioModel
    assert type(AutoModelForImageTextToText.from_config(config)) is LlamaVisionAudioForConditionalGeneration
    assert type(AutoModelForMultimodalLM.from_config(config)) is LlamaVisionAudioForConditionalGeneration


def test_forward_shapes_and_loss_is_mean_over_labelled_positions(tester, processor):
    model = tester.get_model()
    inputs = mixed_inputs(tester, processor)
    labels = inputs["input_ids"].clone()
    labels[inputs["mm_token_type_ids"] != 0] = -100
    labels[inputs["attention_mask"] == 0] = -100
    labels[:, :3] = -100
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (*inputs["input_ids"].shape, len(tester.tokenizer))
    assert torch.isfinite(out.loss)
    shift_logits, shift_labels = out.logits[:, :-1], labels[:, 1:]
    keep = shift_labels != -100
    expected = torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep])
    torch.testing.assert_close(out.loss, expected)

    # Training mode (frozen encoders, as in both stages): the same loss, without logits at ignored positions.
    model.model.vision_tower.requires_grad_(False)
    model.model.audio_tower.requires_grad_(False)
    model.train()
    train_out = model(**inputs, labels=labels)
    assert train_out.logits is None
    torch.testing.assert_close(train_out.loss, expected, rtol=1e-5, atol=1e-5)


def test_input_ids_path_equals_inputs_embeds_path(tester, processor):
    model = tester.get_model()
    inputs = mixed_inputs(tester, processor)
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        rest = {k: v for k, v in inputs.items() if k != "input_ids"}
        by_embeds = model(inputs_embeds=embeds, **rest).logits
    torch.testing.assert_close(by_ids, by_embeds)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_placeholder_count_mismatch_names_modality_and_counts(tester, processor, modality):
    model = tester.get_model()
    inputs = mixed_inputs(tester, processor)
    token_id = tester.image_token_id if modality == "image" else tester.audio_token_id
    ids = inputs["input_ids"].clone()
    first = (ids[0] == token_id).nonzero()[0, 0]
    ids[0, first] = 5  # one placeholder fewer than features
    per_item = model.config.image_seq_length if modality == "image" else model.config.audio_seq_length
    with pytest.raises(ValueError, match=rf"{modality} tokens do not match.*{2 * per_item - 1} {modality} tokens"):
        model(**{**inputs, "input_ids": ids})


@pytest.mark.parametrize("order", ["image_first", "audio_first"])
def test_media_positions_hold_exactly_the_projected_features(tester, processor, order):
    """Several images and clips in one sample, interleaved, next to a text-only sample."""
    model = tester.get_model()
    if order == "image_first":
        text = "<image> look, <audio> listen, <image> again and <audio> once more"
    else:
        text = "<audio> listen, <image> look, <audio> again and <image> once more"
    inputs = processor(
        text=[text, "no media here"],
        images=[make_image("green"), make_image("yellow")],
        audio=[make_tone(880.0), make_tone(300.0)],
        sampling_rate=48000,
        padding=True,
        return_tensors="pt",
    )
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**inputs)
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
        audio_features = model.get_audio_features(inputs["input_features"], inputs["is_longer"]).pooler_output
    hook.remove()
    types = inputs["mm_token_type_ids"][0]
    embeds = captured["embeds"][0]
    # In order of appearance: the first image's tokens hold image 0, the second image's tokens image 1; same for audio.
    assert torch.equal(embeds[types == 1], image_features.flatten(0, 1))
    assert torch.equal(embeds[types == 3], audio_features.flatten(0, 1))
    text_ids = inputs["input_ids"][0][types == 0]
    assert torch.equal(embeds[types == 0], model.get_input_embeddings()(text_ids))
    assert torch.equal(captured["embeds"][1], model.get_input_embeddings()(inputs["input_ids"][1]))


def test_frozen_encoders_build_no_autograd_graph(tester, processor):
    model = tester.get_model()
    model.model.vision_tower.requires_grad_(False)
    model.model.audio_tower.requires_grad_(False)
    model.train()
    assert not model.model.audio_tower.training, "a frozen CLAP must keep its BatchNorm statistics"
    pixel_values = processor.image_processor([make_image()], return_tensors="pt")["pixel_values"]
    out = model.get_image_features(pixel_values)
    assert not out.last_hidden_state.requires_grad
    assert out.pooler_output.requires_grad  # the projector still trains


@pytest.mark.parametrize("layer", [0, -1])
def test_image_features_read_the_configured_vision_layer(tester, processor, layer):
    model = tester.get_model().eval()
    model.config.vision_feature_layer = layer
    pixel_values = processor.image_processor([make_image()], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = model.get_image_features(pixel_values).pooler_output
        hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    drop_cls = model.config.vision_feature_select_strategy == "default"
    selected = hidden[layer][:, 1:] if drop_cls else hidden[layer]
    torch.testing.assert_close(features, model.model.vision_projector(selected))


def test_save_and_auto_load_gives_identical_logits_and_settings(tmp_path, tester):
    model = tester.get_model()
    processor = tester.get_processor(max_length_s=5)
    inputs = mixed_inputs(tester, processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LlamaVisionAudioConfig) and config.audio_seq_length == 64
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded_processor, LlamaVisionAudioProcessor)
    assert loaded_processor.image_processor.crop_size["height"] == 8
    assert loaded_processor.feature_extractor.max_length_s == 5
    assert loaded_processor.feature_extractor.sampling_rate == 48000
    assert loaded_processor.image_seq_length == 16
    reloaded_inputs = mixed_inputs(tester, loaded_processor)
    torch.testing.assert_close(reloaded_inputs["pixel_values"], inputs["pixel_values"])
    torch.testing.assert_close(reloaded_inputs["input_features"], inputs["input_features"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**reloaded_inputs).logits, model(**inputs).logits)


def test_greedy_generate_left_padded_mixed_batch_equals_each_alone(tester):
    model = tester.get_model()
    processor = tester.get_processor()
    processor.tokenizer.padding_side = "left"
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}],
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "High or low?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "What comes after two?"}]}],
        [{"role": "user", "content": [{"type": "audio"}, {"type": "image"}, {"type": "text", "text": "Both?"}]}],
    ]
    media = [
        ([make_image("red")], []),
        ([], [make_tone(300.0)]),
        ([], []),
        ([make_image("blue")], [make_tone(3000.0)]),
    ]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]

    def encode(indices):
        images = [im for i in indices for im in media[i][0]]
        audio = [a for i in indices for a in media[i][1]]
        return processor(
            text=[prompts[i] for i in indices],
            images=images or None,
            audio=audio or None,
            sampling_rate=48000,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )

    batch = encode(range(4))
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch must actually be left-padded"
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
    no_cache = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(no_cache[:, batch["input_ids"].shape[1] :], generated)
    for i in range(4):
        alone = encode([i])
        single = model.generate(**alone, max_new_tokens=6, do_sample=False)[:, alone["input_ids"].shape[1] :]
        assert torch.equal(single[0], generated[i]), f"prompt {i} generated differently in the batch"


def test_inputs_embeds_path_with_identical_placeholder_rows_uses_token_types(tester, processor):
    """Built models start `<image>` and `<audio>` from the same mean row: only `mm_token_type_ids` can tell them."""
    model = tester.get_model()
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[tester.audio_token_id] = embeddings[tester.image_token_id]
    inputs = mixed_inputs(tester, processor)
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        rest = {k: v for k, v in inputs.items() if k != "input_ids"}
        torch.testing.assert_close(model(inputs_embeds=embeds, **rest).logits, by_ids)
        rest.pop("mm_token_type_ids")
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            model(inputs_embeds=embeds, **rest)


def test_inputs_embeds_path_on_a_model_without_audio(tester, processor):
    model = tester.get_model(audio=False)
    model.config.audio_token_id = -2  # what the builders record for a modality the model does not have
    inputs = processor(text=["<image> what?"], images=[make_image()], return_tensors="pt")
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        by_embeds = model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"]).logits
    torch.testing.assert_close(by_embeds, by_ids)
