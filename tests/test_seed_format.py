"""The seed project's (align-anything) published checkpoint formats load, with the semantics they were trained with."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from any2text import LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor
from any2text.builders import SEED_CHAT_TEMPLATE, convert_seed_checkpoint, load_seed_checkpoint
from any2text.builders.presets import tiny_tokenizer_path
from any2text.builders.seed import main as convert_main
from builders_fixtures import image, run_without_any2text, seed_checkpoints, tone  # noqa: F401

SEED_PROMPT = (
    "<|start_header_id|>user<|end_header_id|>: <image> Give an overview of what's in the image.\n"
    "<|start_header_id|>assistant<|end_header_id|>: "
)


def saved_keys(folder) -> list[str]:
    keys = []
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            keys += list(f.keys())
    return keys


@pytest.fixture(scope="module")
def converted_lva(seed_checkpoints, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("converted_lva")
    convert_main(["--model", str(seed_checkpoints.llama_vision_audio), "--output", str(out)])
    return out


def test_chat_template_reproduces_the_seed_prompt():
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Give an overview of what's in the image."}],
        }
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=SEED_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    assert rendered == SEED_PROMPT


def test_seed_llama_vision_audio_converts_and_keeps_seed_semantics(seed_checkpoints, converted_lva):  # noqa: F811
    out = converted_lva
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_select_strategy"] == "full"
    keys = saved_keys(out)
    assert keys and not [k for k in keys if "text_model" in k or "logit_scale" in k]
    assert not (out / "pytorch_model.bin").exists()

    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model) is LlamaVisionAudioForConditionalGeneration and type(processor) is LlamaVisionAudioProcessor
    # CLS kept: (8 / 2) ** 2 + 1 image tokens (577 for CLIP-L/14 at 336 px); 64 audio tokens.
    assert (model.config.image_seq_length, processor.image_seq_length) == (17, 17)
    assert (model.config.audio_seq_length, processor.audio_seq_length) == (64, 64)
    # The collided preprocessor config: CLIP's size restored, CLAP's settings kept.
    assert processor.image_processor.crop_size == {"height": 8, "width": 8}
    assert processor.feature_extractor.sampling_rate == 48000 and processor.feature_extractor.truncation == "fusion"
    assert processor.tokenizer.pad_token == "<pad>" and model.config.pad_token_id == processor.tokenizer.pad_token_id

    inputs = processor(
        text=SEED_PROMPT.replace("<image>", "<image> <audio>"),
        images=[image()],
        audio=[tone()],
        sampling_rate=48000,
        return_tensors="pt",
    )
    with torch.no_grad():
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
        audio_features = model.get_audio_features(inputs["input_features"], inputs["is_longer"]).pooler_output
        # The seed's computation, by hand from the parts the checkpoint was made of.
        seed_state = torch.load(seed_checkpoints.llama_vision_audio / "pytorch_model.bin", weights_only=True)

        def seed_projector(prefix, x):
            h = x @ seed_state[f"{prefix}.linear_1.weight"].T + seed_state[f"{prefix}.linear_1.bias"]
            h = torch.nn.functional.gelu(h)
            return h @ seed_state[f"{prefix}.linear_2.weight"].T + seed_state[f"{prefix}.linear_2.bias"]

        clip_hidden = seed_checkpoints.clip.vision_model(inputs["pixel_values"], output_hidden_states=True)
        expected_image = seed_projector("image_projector", clip_hidden.hidden_states[-2])  # CLS kept
        clap_hidden = seed_checkpoints.clap_audio(
            inputs["input_features"], is_longer=inputs["is_longer"], output_hidden_states=True
        ).hidden_states[-2]  # (clips, 768, 8, 8) for the real CLAP; no final norm
        expected_audio = seed_projector("audio_projector", clap_hidden.flatten(2).transpose(1, 2))
        torch.testing.assert_close(image_features, expected_image)
        torch.testing.assert_close(audio_features, expected_audio)
        assert image_features.shape[1] == 17 and audio_features.shape[1] == 64

        out_ids = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out_ids.shape[1] == inputs["input_ids"].shape[1] + 2
    lm = seed_checkpoints.language_model
    torch.testing.assert_close(model.lm_head.weight, lm.lm_head.weight)


def test_seed_llava_converts_and_runs_on_plain_transformers(seed_checkpoints, tmp_path):  # noqa: F811
    model, processor = load_seed_checkpoint(seed_checkpoints.llava)
    assert type(model) is LlavaForConditionalGeneration and model.dtype == torch.bfloat16
    assert processor.patch_size == 2 and processor.vision_feature_select_strategy == "default"
    convert_seed_checkpoint(seed_checkpoints.llava, tmp_path / "llava")
    assert not [k for k in saved_keys(tmp_path / "llava") if "text_model" in k]
    proc = run_without_any2text(
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / "llava")!r})
        processor = AutoProcessor.from_pretrained({str(tmp_path / "llava")!r})
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Hi"}}]}}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>: "), text
        inputs = processor(text=text, images=Image.new("RGB", (20, 20)), return_tensors="pt")
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        print("llava ok", type(processor).__name__, out.shape[1] - inputs["input_ids"].shape[1])
        """,
        cwd=tmp_path,
    )
    assert "llava ok LlavaProcessor 2" in proc.stdout


def test_not_a_seed_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_seed_checkpoint(tmp_path)


def test_direct_load_of_an_unconverted_seed_folder_names_the_conversion(seed_checkpoints, converted_lva):  # noqa: F811
    """Loading it as is would leave the language model and projectors random; it must stop and say what to run."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    assert AutoConfig.from_pretrained(seed_checkpoints.llama_vision_audio).is_seed_format
    with pytest.raises(ValueError, match="any2text convert-seed"):
        AutoModelForImageTextToText.from_pretrained(seed_checkpoints.llama_vision_audio)
    converted = AutoConfig.from_pretrained(converted_lva)
    assert not converted.is_seed_format and "audio_feature_select_strategy" not in converted.to_dict()
