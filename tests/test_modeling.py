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


# ---------------------------------------------------------------------------------------------------------------------
# Video: frames through the vision tower, pooled, through the image projector

VIDEO_ID = 5  # a plain token of the tiny vocabulary stands for `<video>` (the tester's tokenizer has none)


def video_model(tester, **kwargs):
    return tester.get_model(video_token_id=VIDEO_ID, **kwargs)


def test_config_video_tokens_per_frame_and_checks():
    clip = CLIPVisionConfig(image_size=336, patch_size=14)
    assert LlamaVisionAudioConfig(vision_config=clip).video_frame_seq_length == 144  # 24x24 patches pooled 2x2
    assert (
        LlamaVisionAudioConfig(vision_config=clip, vision_feature_select_strategy="full").video_frame_seq_length == 145
    )
    assert LlamaVisionAudioConfig(vision_config=clip, spatial_pool_stride=5).video_frame_seq_length == 16  # floored
    siglip = SiglipVisionConfig(image_size=224, patch_size=16)
    assert (
        LlamaVisionAudioConfig(vision_config=siglip, vision_feature_select_strategy="full").video_frame_seq_length
        == 49
    )
    assert LlamaVisionAudioConfig(vision_config=clip).video_token_id == 128258
    assert LlamaVisionAudioConfig(audio_config=ClapAudioConfig()).video_token_id is None  # no vision tower, no video
    # A config saved before video reads none: 128258 is another token there (`<pad>` in Llama-3 builds).
    saved = LlamaVisionAudioConfig(vision_config=clip).to_dict()
    assert LlamaVisionAudioConfig.from_dict(saved).video_token_id == 128258
    del saved["video_token_id"]
    assert LlamaVisionAudioConfig.from_dict(saved).video_token_id is None
    with pytest.raises(ValueError, match="must differ"):
        LlamaVisionAudioConfig(vision_config=clip, video_token_id=128256)
    with pytest.raises(ValueError, match="spatial_pool_mode"):
        LlamaVisionAudioConfig(vision_config=clip, spatial_pool_mode="conv")


def hand_pooled_frames(model, frames, mode):
    """The features of each frame computed by hand: tower layer -> CLS rule -> 2x2 windows -> projector."""
    config = model.config
    with torch.no_grad():
        hidden = model.model.vision_tower(frames, output_hidden_states=True).hidden_states[config.vision_feature_layer]
    cls, patches = hidden[:, :1], hidden[:, 1:]
    side = config.vision_config.image_size // config.vision_config.patch_size
    grid = patches.reshape(frames.shape[0], side, side, -1)
    windows = []
    for row in range(0, side - 1, 2):
        for col in range(0, side - 1, 2):
            window = grid[:, row : row + 2, col : col + 2].flatten(1, 2)  # (frames, 4, dim)
            windows.append(window.mean(1) if mode == "average" else window.amax(1))
    pooled = torch.stack(windows, dim=1)
    if config.vision_feature_select_strategy == "full":
        pooled = torch.cat([cls, pooled], dim=1)
    with torch.no_grad():
        return model.model.vision_projector(pooled)


@pytest.mark.parametrize(
    "mode, strategy", [("average", "default"), ("max", "default"), ("average", "full"), ("max", "full")]
)
def test_video_features_pool_each_frame_as_computed_by_hand(tester, mode, strategy):
    model = video_model(tester, spatial_pool_mode=mode, vision_feature_select_strategy=strategy)
    frames = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        features = model.get_video_features(frames).pooler_output
    fsl = model.config.video_frame_seq_length
    assert fsl == (5 if strategy == "full" else 4)  # 4x4 patches -> 2x2, plus CLS under "full"
    assert features.shape == (5, fsl, 32) and features.shape[:-1].numel() == 5 * fsl
    torch.testing.assert_close(features, hand_pooled_frames(model, frames, mode))
    if strategy == "full":  # the CLS embedding is kept, unpooled, in front of each frame
        image_features = model.get_image_features(frames).pooler_output
        torch.testing.assert_close(features[:, 0], image_features[:, 0])


def test_video_features_of_videos_equal_those_of_their_frames(tester):
    model = video_model(tester)
    videos = torch.randn(2, 3, 3, 8, 8)  # 2 videos of 3 frames
    with torch.no_grad():
        by_video = model.get_video_features(videos).pooler_output
        by_frame = model.get_video_features(videos.flatten(0, 1)).pooler_output
        wrapper = model.model.get_video_features(videos.flatten(0, 1)).pooler_output
    assert by_video.shape == (2, 3 * model.config.video_frame_seq_length, 32)
    torch.testing.assert_close(by_video.flatten(0, 1), by_frame.flatten(0, 1))
    torch.testing.assert_close(wrapper, by_frame)
    with pytest.raises(ValueError, match="pixel_values_videos"):
        model.get_video_features(torch.randn(3, 8, 8))


def test_video_adds_no_weights_and_an_image_projector_serves_it(tmp_path, tester):
    """The state dict of a model with video is the one without: a stage-1 image projector loads into it as is."""
    without = tester.get_model(video_token_id=None)  # no video
    with_video = video_model(tester)
    assert with_video.state_dict().keys() == without.state_dict().keys()
    without.save_pretrained(tmp_path)
    loaded, info = LlamaVisionAudioForConditionalGeneration.from_pretrained(
        tmp_path, video_token_id=VIDEO_ID, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    frames = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        features = loaded.get_video_features(frames).pooler_output
    torch.testing.assert_close(features, hand_pooled_frames(without, frames, "average"))


def video_inputs(tester, processor, num_frames: int = 3):
    """One sample with an image, a clip and a video (placeholders written by hand), next to a text-only sample."""
    inputs = processor(
        text=["<image> look, <audio> listen, then watch:", "no media here at all"],
        images=[make_image("green")],
        audio=[make_tone(880.0)],
        sampling_rate=48000,
        padding=True,
        return_tensors="pt",
    )
    assert not (inputs["input_ids"] == VIDEO_ID).any()
    num_video_tokens = num_frames * 4
    video = torch.full((2, num_video_tokens), VIDEO_ID)
    video[1] = tester.tokenizer.pad_token_id
    ids = torch.cat([inputs["input_ids"], video], dim=1)
    types = torch.cat([inputs["mm_token_type_ids"], torch.where(video == VIDEO_ID, 2, 0)], dim=1)
    mask = torch.cat([inputs["attention_mask"], (video == VIDEO_ID).long()], dim=1)
    return {
        **inputs,
        "input_ids": ids,
        "mm_token_type_ids": types,
        "attention_mask": mask,
        "pixel_values_videos": torch.randn(num_frames, 3, 8, 8),
    }


def test_forward_with_image_audio_and_video_places_each_feature_at_its_tokens(tester, processor):
    model = video_model(tester)
    inputs = video_inputs(tester, processor)
    captured = {}
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        image = model.get_image_features(inputs["pixel_values"]).pooler_output
        audio = model.get_audio_features(inputs["input_features"], inputs["is_longer"]).pooler_output
        video = model.get_video_features(inputs["pixel_values_videos"]).pooler_output
    types, embeds = inputs["mm_token_type_ids"][0], captured["embeds"][0]
    assert torch.equal(embeds[types == 1], image.flatten(0, 1))
    assert torch.equal(embeds[types == 3], audio.flatten(0, 1))
    assert torch.equal(embeds[types == 2], video.flatten(0, 1))  # frame by frame, in order
    text = model.get_input_embeddings()(inputs["input_ids"][0][types == 0])
    assert torch.equal(embeds[types == 0], text)
    assert torch.equal(captured["embeds"][1], model.get_input_embeddings()(inputs["input_ids"][1]))
    # The inputs_embeds path finds the video tokens from `mm_token_type_ids`.
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        rest = {key: value for key, value in inputs.items() if key != "input_ids"}
        torch.testing.assert_close(model(inputs_embeds=embeds, **rest).logits, logits)
        # One row per video, `(num_videos, T, 3, H, W)` (the processor's layout when a call's videos share `T`).
        videos = inputs["pixel_values_videos"][None]
        torch.testing.assert_close(model(**{**inputs, "pixel_values_videos": videos}).logits, logits)


def test_video_placeholder_and_feature_mismatch_is_a_clear_error(tester, processor):
    model = video_model(tester)
    inputs = video_inputs(tester, processor, num_frames=3)
    with pytest.raises(ValueError, match=r"video tokens do not match.*12 video tokens.*16 features \(4 per frame\)"):
        model(**{**inputs, "pixel_values_videos": torch.randn(4, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"video tokens do not match.*12 video tokens.*16 features \(4 per frame\)"):
        model(**{**inputs, "pixel_values_videos": torch.randn(2, 2, 3, 8, 8)})  # 2 videos of 2 frames
    # Video tokens with other media but no video: the clear error; with no media at all: text, as Llava does.
    with pytest.raises(ValueError, match="video tokens but no `pixel_values_videos`"):
        model(**{key: value for key, value in inputs.items() if key != "pixel_values_videos"})
    text_only = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        logits = model(**text_only).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        plain = model.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(logits, model.lm_head(plain.last_hidden_state))


def test_generate_encodes_the_video_once_and_never_samples_its_placeholder(tester, processor):
    model = video_model(tester)
    inputs = video_inputs(tester, processor)
    calls = []
    model.model.vision_tower.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert calls == [1, 3]  # the image, then the 3 frames: at prefill only, not at the decoding steps
    assert VIDEO_ID in model.generation_config.suppress_tokens
    assert not (generated[:, inputs["input_ids"].shape[1] :] == VIDEO_ID).any()


def test_sequence_classifier_reads_video(tester, processor):
    from any2text import LlamaVisionAudioForSequenceClassification

    torch.manual_seed(0)
    model = LlamaVisionAudioForSequenceClassification._from_config(tester.get_config(video_token_id=VIDEO_ID)).eval()
    inputs = video_inputs(tester, processor)
    with torch.no_grad():
        scores = model(**inputs).logits
        other = model(**{**inputs, "pixel_values_videos": torch.randn(3, 3, 8, 8)}).logits
        assert model.get_video_features(inputs["pixel_values_videos"]).pooler_output.shape == (3, 4, 32)
    assert scores.shape == (2, 1)
    assert not torch.allclose(scores[0], other[0]) and torch.equal(scores[1], other[1])
