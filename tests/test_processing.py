"""LlamaVisionAudioProcessor: expansion, audio handling, truncation and the chat template."""

import numpy as np
import pytest
import torch

from any2text.models.llama_vision_audio.processing_llama_vision_audio import AUDIO_TYPE, IMAGE_TYPE, TEXT_TYPE
from conftest import make_image, make_tone


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
    ids, types = out["input_ids"][0], out["mm_token_type_ids"][0]
    assert (ids == tester.image_token_id).sum() == processor.image_seq_length == 16
    assert (ids == tester.audio_token_id).sum() == processor.audio_seq_length == 64
    assert torch.equal(types == IMAGE_TYPE, ids == tester.image_token_id)
    assert torch.equal(types == AUDIO_TYPE, ids == tester.audio_token_id)
    assert (out["mm_token_type_ids"][1] == TEXT_TYPE).all()
    # The spans are contiguous: one run of 16 image tokens, one run of 64 audio tokens.
    image_positions = (types == IMAGE_TYPE).nonzero().flatten()
    assert (image_positions.diff() == 1).all()
    assert out["pixel_values"].shape == (1, 3, 8, 8)
    assert out["input_features"].shape[0] == 1 and out["is_longer"].tolist() == [[False]]


def test_media_count_mismatch_is_a_clear_error(processor):
    with pytest.raises(ValueError, match=r"1 `<image>` placeholder.*2 images"):
        processor(text="<image> hi", images=[make_image(), make_image()])
    with pytest.raises(ValueError, match=r"1 `<audio>` placeholder.*0 audio"):
        processor(text="<audio> hi")


def test_audio_requires_sampling_rate_and_accepts_raw_speech_alias(processor):
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(text="<audio>", audio=[make_tone()])
    by_audio = processor(text="<audio>", audio=[make_tone()], sampling_rate=48000, return_tensors="pt")
    by_alias = processor(text="<audio>", raw_speech=[make_tone()], sampling_rate=48000, return_tensors="pt")
    torch.testing.assert_close(by_alias["input_features"], by_audio["input_features"])


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
    }
    for name, clip in variants.items():
        features = processor(text="<audio>", audio=[clip], sampling_rate=16000, return_tensors="pt")["input_features"]
        # int16 quantisation noise lifts the near-silent mel bins only: compare the bins within 60 dB of the peak.
        audible = reference > reference.max() - 60
        assert (features - reference)[audible].abs().max() < 0.05, name


def test_truncation_never_cuts_a_media_span(processor, tester):
    text = "<image> " + "word " * 30
    full = processor(text=text, images=[make_image()])["input_ids"][0]
    # Cutting text after the image is fine.
    kept = processor(text=text, images=[make_image()], truncation=True, max_length=len(full) - 5)["input_ids"][0]
    assert kept.count(tester.image_token_id) == 16
    # Right-side truncation that would cut the image span is an error naming the fix.
    tester.tokenizer.truncation_side = "left"
    try:
        with pytest.raises(ValueError, match="cut through an image or audio span.*text_only"):
            processor(text=text, images=[make_image()], truncation=True, max_length=20)
        # Text-only truncation removes text tokens and keeps the whole span.
        out = processor(text=text, images=[make_image()], truncation="text_only", max_length=20)
    finally:
        tester.tokenizer.truncation_side = "right"
    ids = out["input_ids"][0]
    assert len(ids) == 20 and ids.count(tester.image_token_id) == 16
    with pytest.raises(ValueError, match="media spans alone take 16 tokens"):
        processor(text=text, images=[make_image()], truncation="text_only", max_length=10)


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


def test_chat_template_audio_arrays_need_their_rate_and_are_resampled(processor):
    clip_16k = make_tone(440.0, 1.0, 16000)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": clip_16k}, {"type": "text", "text": "Hi"}]}]
    with pytest.raises(ValueError, match="sampling rate"):
        processor.apply_chat_template(messages, tokenize=True, return_dict=True)
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


def test_long_clip_with_a_non_64_bin_extractor_is_a_clear_error(tester):
    """transformers' CLAP fusion of long clips assumes 64 mel bins; say so instead of failing inside numpy."""
    from any2text.builders.presets import cheap_feature_extractor

    processor = tester.get_processor()
    processor.feature_extractor = cheap_feature_extractor(16000)
    ok = processor(text="<audio>", audio=[make_tone(440.0, 1.5, 16000)], sampling_rate=16000, return_tensors="pt")
    assert ok["input_features"].shape[-1] == 16
    with pytest.raises(ValueError, match="longer than this feature extractor's 2 s window"):
        processor(text="<audio>", audio=[make_tone(440.0, 3.0, 16000)], sampling_rate=16000)
