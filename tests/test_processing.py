"""LlamaVisionAudioProcessor: expansion, transformers' kwargs contract, audio handling, truncation, chat template.

transformers' own `ProcessorTesterMixin` runs against this processor in tests/conformance/; the tests here cover what
we add to it and the defects of issues 9 (item 7) and 10 (item 9), one test each.
"""

import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, ClapFeatureExtractor

from any2text.builders.presets import tiny_tokenizer_path
from any2text.data.media import load_audio
from any2text.evaluation import chat
from any2text.models.llama_vision_audio.feature_extraction_llama_vision_audio import LlamaVisionAudioFeatureExtractor
from any2text.models.llama_vision_audio.processing_llama_vision_audio import LlamaVisionAudioProcessor
from conftest import make_image, make_tone

TEXT, IMAGE, VIDEO, AUDIO = 0, 1, 2, 3  # transformers' `mm_token_type_ids` convention


@pytest.fixture(scope="module")
def video_processor(tester):
    """The tiny processor with a tokenizer that knows `<video>` (the builders add it beside `<image>`)."""
    tokenizer = tester.get_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<audio>", "<video>"]})
    base = tester.get_processor()
    return LlamaVisionAudioProcessor(base.image_processor, base.feature_extractor, tokenizer, image_seq_length=16)


def moving_bar(num_frames: int = 12, height: int = 10, width: int = 14) -> np.ndarray:
    """uint8 `(T, H, W, 3)` frames that all differ."""
    video = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        video[t, :, t % width, 0] = 255
        video[t, :, :, 1] = 20 * t
    return video


def test_placeholders_expand_and_types_follow_transformers_convention(processor, tester):
    out = processor(
        text=["a <image> b <audio> c", "only text"],
        images=[make_image()],
        audio=[make_tone()],
        sampling_rate=48000,
        padding=True,
        return_tensors="pt",
    )
    assert set(out) == {
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "pixel_values",
        "input_features",
        "is_longer",
    }
    assert set(processor.model_input_names) == set(out) | {"pixel_values_videos"}
    ids, types = out["input_ids"][0], out["mm_token_type_ids"][0]
    assert (ids == tester.image_token_id).sum() == processor.image_seq_length == 16
    assert (ids == tester.audio_token_id).sum() == processor.audio_seq_length == 64
    assert torch.equal(types == IMAGE, ids == tester.image_token_id)
    assert torch.equal(types == AUDIO, ids == tester.audio_token_id)
    assert (out["mm_token_type_ids"][1] == TEXT).all()
    # The spans are contiguous: one run of 16 image tokens, one run of 64 audio tokens.
    image_positions = (types == IMAGE).nonzero().flatten()
    assert (image_positions.diff() == 1).all()
    assert out["pixel_values"].shape == (1, 3, 8, 8)
    assert out["input_features"].shape[0] == 1 and out["is_longer"].tolist() == [[False]]


def test_per_call_options_reach_the_sub_processors(processor):
    """Issue 9, defect 7: `rescale_factor=`, `images_kwargs=`, `audio_kwargs=`, `text_kwargs=` used to be ignored."""
    image, clip = make_image(), make_tone(440.0, 0.5)
    base = processor(text="<image>", images=[image], return_tensors="pt")["pixel_values"]
    flat = processor(text="<image>", images=[image], rescale_factor=-1.0, return_tensors="pt")["pixel_values"]
    nested = processor(text="<image>", images=[image], images_kwargs={"rescale_factor": -1.0}, return_tensors="pt")
    assert base.mean() > -5 and flat.mean() < -100
    torch.testing.assert_close(nested["pixel_values"], flat)

    # CLAP repeats a short clip to fill its window by default; `padding="pad"` pads it with silence instead.
    repeated = processor(text="<audio>", audio=[clip], sampling_rate=48000, return_tensors="pt")["input_features"]
    padded = processor(
        text="<audio>", audio=[clip], sampling_rate=48000, audio_kwargs={"padding": "pad"}, return_tensors="pt"
    )["input_features"]
    assert not torch.allclose(repeated, padded)

    out = processor(text="hi", text_kwargs={"padding": "max_length", "max_length": 20}, return_tensors="pt")
    assert out["input_ids"].shape == (1, 20) and out["attention_mask"].sum() < 20


def test_the_tokenizers_own_defaults_are_kept(tester):
    """Issue 9, defect 7: the processor's explicit `padding=False` default overrode the tokenizer's settings."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path(), padding="max_length", max_length=24)
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<image>", "<audio>"]})
    processor = LlamaVisionAudioProcessor(
        tester.get_processor().image_processor,
        tester.get_processor().feature_extractor,
        tokenizer,
        image_seq_length=16,
    )
    out = processor(text="hi", return_tensors="pt")
    assert out["input_ids"].shape == (1, 24) and out["input_ids"][0, -1] == tokenizer.pad_token_id
    # A call's own option still wins over the tokenizer's.
    assert processor(text="hi", padding=False, return_tensors="pt")["input_ids"].shape[1] < 24


def test_text_sized_options_never_reach_the_feature_extractor(processor):
    """A flat `padding` / `max_length` is about text tokens; CLAP would read it in samples and shrink its window."""
    clip = make_tone(440.0, 1.0)
    plain = processor(text="<audio>", audio=[clip], sampling_rate=48000, return_tensors="pt")
    padded = processor(
        text="<audio>", audio=[clip], sampling_rate=48000, padding="max_length", max_length=100, return_tensors="pt"
    )
    assert padded["input_ids"].shape == (1, 100)
    torch.testing.assert_close(padded["input_features"], plain["input_features"])


def test_offsets_and_token_counts_for_serving_engines(processor):
    """vLLM reads `_get_num_multimodal_tokens`, `mm_token_type_ids` and `text_replacement_offsets`."""
    text = ["<image> and <audio>", "two <image><image>"]
    out = processor(
        text=text,
        images=[make_image()] * 3,
        audio=[make_tone()],
        sampling_rate=48000,
        return_text_replacement_offsets=True,
    )
    counts = processor._get_num_multimodal_tokens(image_sizes=[(20, 20)] * 3, audio_lengths=[48000])
    assert counts.num_image_tokens == [16] * 3 and counts.num_image_patches == [1] * 3
    assert counts.num_audio_tokens == [64]
    assert [np.sum(np.array(row) == IMAGE) for row in out["mm_token_type_ids"]] == [16, 32]
    assert [np.sum(np.array(row) == AUDIO) for row in out["mm_token_type_ids"]] == [64, 0]
    first = out["text_replacement_offsets"][0]
    assert [(item["type"], item["span"], item["text"]) for item in first] == [
        ("image", (0, 7), "<image>"),
        ("audio", (12, 19), "<audio>"),
    ]
    assert first[1]["new_span"] == (16 * 7 + 5, 16 * 7 + 5 + 64 * 7)


def test_audio_without_a_rate_is_taken_at_the_extractors_rate_with_a_warning(processor, caplog):
    """As transformers' audio processors: no `sampling_rate` means the feature extractor's, and a warning names it.

    This is what vLLM's Transformers backend sends (it resamples to that rate first), so serving needs no flag."""
    clip = make_tone(440.0, 1.0)
    explicit = processor(text="<audio>", audio=[clip], sampling_rate=48000, return_tensors="pt")
    with caplog.at_level("WARNING"):
        served = processor(
            text="<audio>",
            audio=[clip],
            truncation=False,
            add_special_tokens=False,
            return_mm_token_type_ids=True,
            return_tensors="pt",
        )
    assert "No `sampling_rate` given with the audio: the clips are taken to be at 48000 Hz" in caplog.text
    torch.testing.assert_close(served["input_features"], explicit["input_features"])
    # With the rate given, no warning, and a clip at another rate is resampled, not read as 48 kHz.
    caplog.clear()
    with caplog.at_level("WARNING"):
        at_16k = processor(text="<audio>", audio=[make_tone(440.0, 1.0, 16000)], sampling_rate=16000)
    assert "sampling_rate" not in caplog.text
    assert not np.allclose(
        at_16k["input_features"], processor(text="<audio>", audio=[make_tone(440.0, 1.0, 16000)])["input_features"]
    )


def test_audios_and_raw_speech_are_aliases_of_audio(processor):
    """lmms-eval's generic model passes `audios=` (and `videos=[]`); older audio processors took `raw_speech=`."""
    by_audio = processor(text="<audio>", audio=[make_tone()], sampling_rate=48000, return_tensors="pt")
    for alias in ("audios", "raw_speech"):
        out = processor(text="<audio>", **{alias: [make_tone()]}, sampling_rate=48000, videos=[], return_tensors="pt")
        torch.testing.assert_close(out["input_features"], by_audio["input_features"])
        with pytest.raises(ValueError, match=f"`audio=` or `{alias}=`, not both"):
            processor(text="<audio>", audio=[make_tone()], **{alias: [make_tone()]}, sampling_rate=48000)


def test_the_audio_policy_lives_in_the_feature_extractor(processor, tmp_path):
    """Mono, int PCM, resampling and `is_longer` are the feature extractor's, so it works alone and saves as itself;
    a plain CLAP extractor (a processor saved before it existed) is turned into one with the same settings."""
    extractor = processor.feature_extractor
    assert isinstance(extractor, LlamaVisionAudioFeatureExtractor) and isinstance(extractor, ClapFeatureExtractor)
    stereo_16k = np.stack([make_tone(440.0, 1.0, 16000)] * 2, axis=1)
    alone = extractor([stereo_16k], sampling_rate=16000, return_tensors="pt")
    through = processor(text="<audio>", audio=[stereo_16k], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(alone["input_features"], through["input_features"])
    assert alone["is_longer"].tolist() == [[False]]
    extractor.save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is LlamaVisionAudioFeatureExtractor and loaded.to_dict() == extractor.to_dict()
    plain = ClapFeatureExtractor(sampling_rate=32000, feature_size=64, max_length_s=4)
    upgraded = LlamaVisionAudioProcessor(processor.image_processor, plain, processor.tokenizer).feature_extractor
    assert type(upgraded) is LlamaVisionAudioFeatureExtractor
    assert (upgraded.sampling_rate, upgraded.nb_max_samples) == (32000, 4 * 32000)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_resampled_clip_gives_features_close_to_native_48k(processor, rate):
    native = processor(text="<audio>", audio=[make_tone(440.0, 2.0, 48000)], sampling_rate=48000, return_tensors="pt")
    other = processor(text="<audio>", audio=[make_tone(440.0, 2.0, rate)], sampling_rate=rate, return_tensors="pt")
    a, b = native["input_features"], other["input_features"]
    # Log-mel features in dB: a correct resample stays within a fraction of a dB on average, while a clip read
    # at the wrong rate (the seed's bug) is a different pitch and lands tens of dB away in the loud bins.
    assert (a - b).abs().mean() < 0.5
    wrong = processor(text="<audio>", audio=[make_tone(440.0, 2.0, rate)], sampling_rate=48000, return_tensors="pt")
    assert (a - wrong["input_features"]).abs().mean() > 2 * (a - b).abs().mean()


def test_multichannel_int_pcm_torch_and_list_inputs_are_equivalent(processor):
    tone = make_tone(660.0, 1.0, 16000)
    reference = processor(text="<audio>", audio=[tone], sampling_rate=16000, return_tensors="pt")["input_features"]
    pcm16 = np.round(tone * 32767).astype(np.int16)
    variants = {
        "stereo (samples, channels)": np.stack([tone, tone], axis=1),
        "stereo (channels, samples)": torch.from_numpy(np.stack([tone, tone])),
        "int16 PCM": pcm16,
        "python list": tone.tolist(),
        "one clip, not in a list": tone,
    }
    for name, clip in variants.items():
        audio = clip if name == "one clip, not in a list" else [clip]
        features = processor(text="<audio>", audio=audio, sampling_rate=16000, return_tensors="pt")["input_features"]
        # int16 quantisation noise lifts the near-silent mel bins only: compare the bins within 60 dB of the peak.
        audible = reference > reference.max() - 60
        assert (features - reference)[audible].abs().max() < 0.05, name


def test_is_longer_marks_exactly_the_long_clips(processor):
    """CLAP's extractor marks a random clip "longer" when none is; ours is the same on every call."""
    short, long = make_tone(440.0, 1.0), make_tone(440.0, 11.0)
    for seed in range(3):
        np.random.seed(seed)
        out = processor(text="<audio> <audio> <audio>", audio=[short, long, short], sampling_rate=48000)
        assert np.asarray(out["is_longer"]).tolist() == [[False], [True], [False]]
        np.random.seed(seed)
        out = processor(text="<audio> <audio>", audio=[short, short], sampling_rate=48000)
        assert np.asarray(out["is_longer"]).tolist() == [[False], [False]]


def test_both_sub_processors_settings_and_the_template_survive_save_and_load(tester, tmp_path):
    processor = tester.get_processor(sampling_rate=32000, feature_size=64, max_length_s=4)
    processor.image_processor.crop_size = {"height": 12, "width": 12}
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LlamaVisionAudioProcessor
    assert (loaded.feature_extractor.sampling_rate, loaded.feature_extractor.nb_max_samples) == (32000, 4 * 32000)
    assert loaded.image_processor.crop_size == {"height": 12, "width": 12}
    assert (loaded.image_seq_length, loaded.audio_seq_length) == (processor.image_seq_length, 64)
    assert loaded.chat_template == processor.chat_template and "{% generation %}" in loaded.chat_template


def test_processor_truncation_is_transformers_and_never_cuts_a_media_span(processor, tester):
    text = "<image> " + "word " * 30
    full = processor(text=text, images=[make_image()])["input_ids"][0]
    kept = processor(text=text, images=[make_image()], truncation=True, max_length=len(full) - 5)["input_ids"][0]
    assert len(kept) == len(full) - 5 and kept.count(tester.image_token_id) == 16
    with pytest.raises(ValueError, match="Mismatch in `image` token count.*increase `max_length`"):
        processor(text=text, images=[make_image()], truncation=True, max_length=10)


def test_media_safe_truncation_has_one_home_and_the_clis_vocabulary():
    """`fit_to_max_length` is what the collator (and `--truncation error|drop|text`) uses."""
    from any2text.data.truncation import fit_to_max_length

    media_then_text = [True] * 4 + [False] * 6
    text_then_media = [False] * 6 + [True] * 4
    assert fit_to_max_length(media_then_text, 12, "error") == 10
    assert fit_to_max_length(media_then_text, 7, "text") == 7
    assert fit_to_max_length(text_then_media, 7, "text") is None  # cutting would split the media span: drop
    assert fit_to_max_length(media_then_text, 7, "drop") is None
    with pytest.raises(ValueError, match="Row 3 has 10 tokens.*`max_length=7`.*'drop'.*'text'"):
        fit_to_max_length(media_then_text, 7, "error", name="Row 3")
    with pytest.raises(ValueError, match="must be one of"):
        fit_to_max_length(media_then_text, 7, "text_only")


def test_media_count_mismatch_is_a_clear_error(processor):
    with pytest.raises(ValueError, match="1 <image> tokens and 2 images"):
        processor(text="<image> hi", images=[make_image(), make_image()])
    with pytest.raises(ValueError, match="1 <audio> tokens in the text but no audio"):
        processor(text="<audio> hi")
    with pytest.raises(ValueError, match="1 <video> tokens and 2 videos"):
        processor(text="<video> hi", videos=[moving_bar(), moving_bar()])
    assert hasattr(processor, "video_processor")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<audio>"]})
    without_video = LlamaVisionAudioProcessor(processor.image_processor, processor.feature_extractor, tokenizer)
    with pytest.raises(ValueError, match="tokenizer does not know `<video>`"):
        without_video(text="<video> hi", videos=[moving_bar()])
    # Serving engines look for `video_processor`: a checkpoint without `<video>` offers no video.
    assert not hasattr(without_video, "video_processor")


def test_empty_text_is_a_clear_error_not_a_float_tensor(processor):
    """Issue 10, item 9: `text=""` returned an empty float tensor that crashed `generate` in the embedding."""
    with pytest.raises(ValueError, match="Sample 0 of `text` has no tokens"):
        processor(text="", return_tensors="pt")
    with pytest.raises(ValueError, match="Sample 1 of `text` has no tokens"):
        processor(text=["hi", ""], padding=True, return_tensors="pt")


def test_empty_text_list_is_a_clear_error(processor):
    """Issue 10, item 9: `text=[]` raised a raw IndexError."""
    with pytest.raises(ValueError, match="`text` is an empty list"):
        processor(text=[])


@pytest.mark.parametrize("rate", [22050.5, 0, -16000, "16000"])
def test_a_sampling_rate_that_is_not_a_whole_number_of_hz_is_refused(processor, rate):
    """Issue 10, item 9: `sampling_rate=22050.5` was silently truncated to 22050."""
    with pytest.raises((ValueError, TypeError), match="sampling_rate"):
        processor(text="<audio>", audio=[make_tone()], sampling_rate=rate)
    # Integral numbers of other types are fine.
    out = processor(text="<audio>", audio=[make_tone()], sampling_rate=np.int64(48000), return_tensors="pt")
    assert out["input_features"].shape[0] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_a_clear_error_naming_the_clip(processor, bad):
    """Issue 10, item 9: NaN/inf samples gave NaN logits and an empty answer."""
    clip = make_tone()
    clip[100:110] = bad
    with pytest.raises(ValueError, match="Audio clip 1 holds 10 NaN or infinite sample"):
        processor(text="<audio> <audio>", audio=[make_tone(), clip], sampling_rate=48000)


def test_chat_with_a_nan_wav_fails_naming_the_file(tester, tmp_path, capsys):
    """Issue 10, item 9: `any2text chat --audio nan.wav` printed an empty answer and exited 0. (Issue 21: it now says
    so in one line, exit code 2, no traceback.)"""
    tester.get_model().save_pretrained(tmp_path)
    tester.get_processor().save_pretrained(tmp_path)
    wav = tmp_path / "nan.wav"
    soundfile.write(wav, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav` holds 16000 non-finite samples"):
        load_audio(str(wav), 48000)
    assert (
        chat.main(["--model", str(tmp_path), "--audio", str(wav), "--prompt", "What is it?", "--device", "cpu"]) == 2
    )
    assert "nan.wav` holds 16000 non-finite samples" in capsys.readouterr().err


def test_chat_template_multi_turn_with_media(processor):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "audio"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat colour?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd this?\n<audio><|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without_prompt = processor.apply_chat_template(messages)
    assert not without_prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chat_template_tokenizes_with_media(processor, tester):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": make_image("blue")}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
    ]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    assert out["pixel_values"].shape == (1, 3, 8, 8)
    ids = out["input_ids"][0]
    assert (ids == tester.image_token_id).sum() == 16
    assert ids[0] == tester.tokenizer.bos_token_id and (ids == tester.tokenizer.bos_token_id).sum() == 1
    answer = tester.tokenizer.decode(ids[out["assistant_masks"][0].bool()])
    assert answer == "blue<|eot_id|>"


def test_chat_template_audio_arrays_are_resampled_from_their_rate(processor, caplog):
    clip_16k = make_tone(440.0, 1.0, 16000)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": clip_16k}, {"type": "text", "text": "Hi"}]}]
    with caplog.at_level("WARNING"):
        no_rate = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert "holds an array but no sampling rate: it is taken to be at 48000 Hz" in caplog.text
    at_48k = processor(text="<audio>", audio=[clip_16k], sampling_rate=48000, return_tensors="pt")
    torch.testing.assert_close(no_rate["input_features"], at_48k["input_features"])
    with_rate = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": clip_16k, "sampling_rate": 16000}, {"type": "text", "text": "Hi"}],
        }  # fmt: skip
    ]
    out = processor.apply_chat_template(with_rate, tokenize=True, return_dict=True, return_tensors="pt")
    by_kwarg = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", sampling_rate=16000
    )
    direct = processor(text="<audio>", audio=[clip_16k], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(out["input_features"], direct["input_features"])
    torch.testing.assert_close(by_kwarg["input_features"], direct["input_features"])


def test_int_pcm_given_as_a_python_list_is_read_as_16_bit(processor):
    pcm16 = np.round(make_tone(660.0, 1.0, 16000) * 32767).astype(np.int16)
    as_array = processor(text="<audio>", audio=[pcm16], sampling_rate=16000, return_tensors="pt")
    as_list = processor(text="<audio>", audio=[pcm16.tolist()], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(as_list["input_features"], as_array["input_features"])
    with pytest.raises(ValueError, match="16-bit range"):
        processor(text="<audio>", audio=[[0, 70000, -5]], sampling_rate=16000)


def test_long_clip_with_a_non_64_bin_extractor_keeps_its_first_window(tester):
    """transformers' CLAP fusion of long clips assumes 64 mel bins and fails inside numpy otherwise; a serving engine's
    30 s warm-up clip must still pass, so such an extractor hears the first window (the same features as the cut clip).
    Training refuses such clips instead (tests/test_robust_data.py)."""
    from any2text.builders.presets import cheap_feature_extractor

    base = tester.get_processor()
    processor = LlamaVisionAudioProcessor(base.image_processor, cheap_feature_extractor(16000), base.tokenizer)
    ok = processor(text="<audio>", audio=[make_tone(440.0, 1.5, 16000)], sampling_rate=16000, return_tensors="pt")
    assert ok["input_features"].shape[-1] == 16
    long = make_tone(440.0, 3.0, 16000)
    window = processor.feature_extractor.nb_max_samples
    cut = processor(text="<audio>", audio=[long], sampling_rate=16000, return_tensors="pt")
    first = processor(text="<audio>", audio=[long[:window]], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(cut["input_features"], first["input_features"])


def test_16_bit_grayscale_images_are_scaled_not_saturated(tester, tmp_path):
    """`convert("RGB")` clips 16-bit grayscale at 255 (an almost white image); the processor scales it to 8 bit."""
    from PIL import Image

    levels = np.repeat(np.array([0, 64, 128, 255], dtype=np.uint16), 16).reshape(8, 8)
    Image.fromarray(levels * 257).save(tmp_path / "gray16.png")  # the same picture in 16 bits
    sixteen = Image.open(tmp_path / "gray16.png")
    assert sixteen.mode.startswith("I")
    eight = Image.fromarray(levels.astype(np.uint8)).convert("RGB")
    processor = tester.get_processor()
    got = processor(text="<image>", images=[sixteen], return_tensors="pt")["pixel_values"]
    want = processor(text="<image>", images=[eight], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, want)


def test_a_video_expands_to_frames_times_pooled_patches_through_the_image_processor(video_processor):
    """One `<video>` = T * `video_frame_seq_length` video tokens (type 2); frames are the CLIP image processor's."""
    processor = video_processor
    assert processor.video_frame_seq_length == 4  # 16 tokens per 8x8 image (4x4 patches) -> 2x2 after pooling
    assert processor.video_processor is processor.image_processor
    videos = [moving_bar(12), moving_bar(8, 16, 6)]
    out = processor(
        text=["a <video> b <image>", "<video> c"],
        images=[moving_bar(1)[0]],
        videos=videos,
        padding=True,
        return_tensors="pt",
    )
    assert set(out) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "pixel_values_videos"}
    video_id = processor.video_token_id
    assert [int((row == video_id).sum()) for row in out["input_ids"]] == [8 * 4, 8 * 4]
    assert torch.equal(out["mm_token_type_ids"] == VIDEO, out["input_ids"] == video_id)
    assert int((out["mm_token_type_ids"] == IMAGE).sum()) == 16
    # The first video has 12 frames: 8 sampled uniformly (`arange(8) * 12 // 8`); the second exactly 8, kept. Both
    # have 8: one row per video.
    assert out["pixel_values_videos"].shape == (2, 8, 3, 8, 8)
    frames = list(videos[0][np.arange(8) * 12 // 8]) + list(videos[1])
    as_images = processor.image_processor(frames, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["pixel_values_videos"], as_images.view(2, 8, 3, 8, 8))
    # Different frame counts in one call: the frames of all videos, one after the other.
    out = processor(text="<video> and <video>", videos=videos, num_frames=None, do_sample_frames=False)
    assert np.asarray(out["pixel_values_videos"]).shape[0] == 12 + 8
    counts = processor._get_num_multimodal_tokens(video_sizes=[(8, 10, 14), (3, 16, 6)])
    assert counts.num_video_tokens == [32, 12]


def test_frame_sampling_per_call_and_saved_with_the_processor(video_processor, tmp_path):
    processor, video = video_processor, moving_bar(12)
    for kwargs, frames in [({"num_frames": 3}, 3), ({"do_sample_frames": False}, 12), ({}, 8)]:
        out = processor(text="<video>", videos=[video], return_tensors="pt", **kwargs)
        assert out["pixel_values_videos"].shape[:2] == (1, frames), kwargs
        assert int((out["mm_token_type_ids"] == VIDEO).sum()) == frames * 4, kwargs
    # `fps` needs a frame rate, which frames in memory do not have.
    with pytest.raises(ValueError, match="no frame rate"):
        processor(text="<video>", videos=[video], fps=2)
    with pytest.raises(ValueError, match="mutually exclusive"):
        LlamaVisionAudioProcessor(processor.image_processor, processor.feature_extractor, processor.tokenizer, fps=1)
    by_fps = LlamaVisionAudioProcessor(
        processor.image_processor, processor.feature_extractor, processor.tokenizer, num_frames=None, fps=1.5
    )
    by_fps.save_pretrained(tmp_path / "fps")
    loaded = AutoProcessor.from_pretrained(tmp_path / "fps")
    assert (loaded.num_frames, loaded.fps, loaded.video_frame_seq_length) == (None, 1.5, 144)
    processor.save_pretrained(tmp_path / "frames")
    loaded = AutoProcessor.from_pretrained(tmp_path / "frames")
    assert (loaded.num_frames, loaded.fps, loaded.video_frame_seq_length, loaded.video_token) == (
        8,
        None,
        4,
        "<video>",
    )
    four = LlamaVisionAudioProcessor(
        processor.image_processor, processor.feature_extractor, processor.tokenizer, image_seq_length=16, num_frames=4
    )
    four.save_pretrained(tmp_path / "four")
    out = AutoProcessor.from_pretrained(tmp_path / "four")(text="<video>", videos=[video], return_tensors="pt")
    assert out["pixel_values_videos"].shape[:2] == (1, 4)


@pytest.mark.parametrize(("image_seq_length", "expected"), [(576, 144), (577, 145), (16, 4), (49, 9)])
def test_video_frame_seq_length_defaults_to_the_configs_rule(tester, image_seq_length, expected):
    """CLIP-L/336: 24x24 patches -> 12x12 after 2x2 pooling; with the CLS embedding kept ("full") one more."""
    processor = LlamaVisionAudioProcessor(
        tester.get_processor().image_processor,
        ClapFeatureExtractor(),
        tester.tokenizer,
        image_seq_length=image_seq_length,
    )
    assert processor.video_frame_seq_length == expected


def test_video_inputs_every_form_and_nesting(video_processor, tmp_path):
    """A path (file or frame folder), PIL frames, an array / tensor, batched as apply_chat_template nests them."""
    from PIL import Image

    processor, video = video_processor, moving_bar(8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"{i:02d}.png")
    reference = processor(text="<video>", videos=[video], return_tensors="pt")["pixel_values_videos"]
    forms = [folder, str(folder), [Image.fromarray(f) for f in video], torch.from_numpy(video), video[None], [[video]]]
    for form in forms:
        out = processor(text="<video>", videos=form, return_tensors="pt")
        torch.testing.assert_close(out["pixel_values_videos"], reference)
    # lmms-eval's generic model passes `videos=[]` with text-only prompts.
    assert "pixel_values_videos" not in processor(text="hi", videos=[], return_tensors="pt")


def test_chat_template_video_parts(video_processor):
    messages = [
        {"role": "user", "content": [{"type": "video", "video": moving_bar(10)}, {"type": "text", "text": "Where?"}]},
    ]
    text = video_processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|start_header_id|>user<|end_header_id|>\n\n<video>\nWhere?<|eot_id|>" in text
    out = video_processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={"num_frames": 5}
    )
    assert out["pixel_values_videos"].shape == (1, 5, 3, 8, 8)
    assert int((out["input_ids"] == video_processor.video_token_id).sum()) == 5 * 4
    batched = video_processor.apply_chat_template(
        [messages, messages], tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    assert batched["pixel_values_videos"].shape == (2, 8, 3, 8, 8)


def test_data_and_inference_paths_pass_the_clips_real_rate(processor, tmp_path, caplog):
    """The no-rate default is for serving engines: our own callers always know the rate (a 16 kHz file here)."""
    from any2text.data.collator import MultimodalCollator
    from any2text.inference import prepare_inputs

    wav = tmp_path / "tone16k.wav"
    soundfile.write(wav, make_tone(440.0, 1.0, 16000), 16000, subtype="FLOAT")
    user = {"role": "user", "content": [{"type": "audio", "audio": str(wav)}, {"type": "text", "text": "Hi"}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "A tone."}]}
    with caplog.at_level("WARNING"):
        batch = MultimodalCollator(processor, media_root=str(tmp_path))([{"messages": [user, answer]}])
        inputs = prepare_inputs(processor, [[user]])
    assert "input_features" in batch and "input_features" in inputs
    assert "sampling_rate" not in caplog.text
    # Both read the file at its own rate: the features are those of the clip resampled from 16 kHz.
    direct = processor(text="<audio>", audio=[make_tone(440.0, 1.0, 16000)], sampling_rate=16000, return_tensors="pt")
    audible = direct["input_features"] > direct["input_features"].max() - 60
    assert (inputs["input_features"] - direct["input_features"])[audible].abs().max() < 0.05
