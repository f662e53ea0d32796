"""Builders: compose checkpoints from tiny local "pretrained" parts, then load them the way users do."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    ClapModel,
    CLIPModel,
    LlavaForConditionalGeneration,
)

from any2text import LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor
from any2text.builders import build_llama_vision, build_llama_vision_audio
from any2text.builders.cli import main as build_main
from builders_fixtures import image, parts, run_without_any2text, tone  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What?"}]}]


def saved_keys(folder: Path) -> dict[str, torch.dtype]:
    keys = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            keys.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
    return keys


def lva_inputs(processor, with_audio: bool = True, with_image: bool = True):
    content = [{"type": "image"}] * with_image + [{"type": "audio"}] * with_audio + [{"type": "text", "text": "Hi"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(
        text=text,
        images=[image()] if with_image else None,
        audio=[tone()] if with_audio else None,
        sampling_rate=48000,
        return_tensors="pt",
    )


@pytest.fixture(scope="module")
def lva_llama(parts, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("lva_llama")
    model, processor = build_llama_vision_audio(parts.llama, parts.clip, parts.clap, save_path=path)
    return path, model, processor


@pytest.mark.parametrize("lm", ["llama", "qwen2", "mistral"])
def test_build_llama_vision_audio_loads_with_auto_classes_and_generates(parts, lm, tmp_path):  # noqa: F811
    model, processor = build_llama_vision_audio(getattr(parts, lm), parts.clip, parts.clap, save_path=tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LlamaVisionAudioForConditionalGeneration
    assert type(loaded_processor) is LlamaVisionAudioProcessor
    assert loaded.config.text_config.model_type == model.config.text_config.model_type == lm
    # Sizes come from the configs: 8px / patch 2 CLIP without CLS -> 16 tokens; tiny CLAP -> 64.
    assert (loaded_processor.image_seq_length, loaded_processor.audio_seq_length) == (16, 64)
    inputs = lva_inputs(loaded_processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    out = loaded.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("lm", ["llama", "qwen2", "mistral"])
def test_build_llama_vision_writes_stock_llava(parts, lm, tmp_path):  # noqa: F811
    model, processor = build_llama_vision(getattr(parts, lm), parts.clip, save_path=tmp_path)
    assert type(model) is LlavaForConditionalGeneration
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llava" and "auto_map" not in config
    assert config["vision_feature_select_strategy"] == "default"
    assert not list(tmp_path.glob("*.py"))  # stock transformers classes: no code shipped
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["patch_size"] == 2 and processor_config["vision_feature_select_strategy"] == "default"
    assert processor.chat_template is not None
    assert "<video>" not in processor.tokenizer.get_vocab()  # stock Llava reads no video


def test_stock_llava_loads_and_generates_without_any2text(parts, tmp_path):  # noqa: F811
    """CLIP + Llama and SigLIP + Qwen2 Llava checkpoints run on plain transformers, any2text not importable."""
    expected = {}
    for name, lm, vision in (("clip_llama", parts.llama, parts.clip), ("siglip_qwen2", parts.qwen2, parts.siglip)):
        model, processor = build_llama_vision(lm, vision, save_path=tmp_path / name)
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
            add_generation_prompt=True,
        )
        inputs = processor(text=text, images=image(), return_tensors="pt")
        with torch.no_grad():
            expected[name] = model(**inputs).logits[0, -1].float()
    torch.save(expected, tmp_path / "expected.pt")
    proc = run_without_any2text(
        """
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration
        expected = torch.load("expected.pt")
        for name in ("clip_llama", "siglip_qwen2"):
            model = AutoModelForImageTextToText.from_pretrained(name)
            processor = AutoProcessor.from_pretrained(name)
            assert type(model) is LlavaForConditionalGeneration, type(model)
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = processor(text=text, images=Image.new("RGB", (20, 20), "red"), return_tensors="pt")
            n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
            assert n_image == 16, n_image
            with torch.no_grad():
                torch.testing.assert_close(model(**inputs).logits[0, -1].float(), expected[name])
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
            assert out.shape[1] == inputs["input_ids"].shape[1] + 3
            print(name, "ok", model.config.vision_feature_select_strategy)
        """,
        cwd=tmp_path,
    )
    assert "clip_llama ok default" in proc.stdout and "siglip_qwen2 ok full" in proc.stdout


def test_remote_code_folder_loads_without_any2text(lva_llama, tmp_path):
    path, model, processor = lva_llama
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"].startswith("modeling_llama_vision_audio.")
    inputs = lva_inputs(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save({"logits": logits}, tmp_path / "expected.pt")
    proc = run_without_any2text(
        f"""
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        path = {str(path)!r}
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "audio"}}, {{"type": "text", "text": "Hi"}}]}}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        t = np.arange(48000) / 48000
        audio = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        inputs = processor(text=text, images=[Image.new("RGB", (20, 20), "red")], audio=[audio],
                           sampling_rate=48000, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        assert torch.equal(logits, torch.load("expected.pt")["logits"]), "logits differ"
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        print("remote code ok")
        """,
        cwd=tmp_path,
    )
    assert "remote code ok" in proc.stdout


def test_remote_code_is_the_public_class_registration_and_cannot_be_half_undone(lva_llama, tmp_path):
    from any2text.builders import BuildRecord, save_checkpoint

    _, model, processor = lva_llama  # built with remote_code=True: register_for_auto_class, on for the process
    assert type(model).is_remote_code()
    with pytest.raises(ValueError, match="already registered `LlamaVisionAudioForConditionalGeneration`"):
        save_checkpoint(model, processor, tmp_path, BuildRecord("test", "lm"), remote_code=False)
    assert not (tmp_path / "config.json").exists()


def test_loading_with_any2text_needs_no_remote_code(lva_llama):
    path, _, _ = lva_llama
    # Without trust_remote_code: the classes `import any2text` registered are used, not the shipped copies.
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model) is LlamaVisionAudioForConditionalGeneration
    assert type(processor) is LlamaVisionAudioProcessor


def test_new_embedding_rows_are_the_mean_of_old_rows(parts, lva_llama):  # noqa: F811
    _, model, processor = lva_llama
    tokenizer = processor.tokenizer
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<audio>", "<video>", "<pad>")]
    num_old = min(new_ids)
    assert new_ids == [num_old, num_old + 1, num_old + 2, num_old + 3]  # `<video>` after `<audio>`: ids as before
    for embeddings in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert embeddings.shape[0] == len(tokenizer)
        mean = embeddings[:num_old].float().mean(0).to(embeddings.dtype)
        for i in new_ids:
            torch.testing.assert_close(embeddings[i], mean, rtol=0, atol=0)
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()


def test_tied_vocab_with_spare_rows_is_not_shrunk(parts):  # noqa: F811
    model, processor = build_llama_vision_audio(parts.qwen2, parts.clip, None)
    tokenizer = processor.tokenizer
    embeddings = model.get_input_embeddings().weight
    # Qwen2's spare rows kept, the new tokens (`<image>`, `<video>`, `<pad>`) placed in them.
    assert embeddings.shape[0] == len(tokenizer) - 3 + 16
    assert model.get_output_embeddings().weight is embeddings  # still tied
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.testing.assert_close(embeddings[image_id], embeddings[:image_id].float().mean(0), rtol=0, atol=0)


def test_dtype_is_kept_or_chosen(parts, lva_llama, tmp_path):  # noqa: F811
    path, model, _ = lva_llama  # tiny llama is saved in bf16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert set(saved_keys(path).values()) <= {"BF16", "I64"}  # I64: BatchNorm's num_batches_tracked
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    model32, _ = build_llama_vision(parts.llama, parts.clip, dtype="float32")
    assert {p.dtype for p in model32.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="dtype=torch.int8. as it.s not a floating-point dtype"):  # transformers says
        build_llama_vision(parts.llama, parts.clip, dtype="int8")


def test_pad_token_is_added_and_set(lva_llama):
    path, model, processor = lva_llama
    pad_id = processor.tokenizer.pad_token_id
    assert processor.tokenizer.pad_token == "<pad>"
    assert model.config.pad_token_id == model.config.text_config.pad_token_id == pad_id
    assert model.generation_config.pad_token_id == pad_id
    assert AutoProcessor.from_pretrained(path).tokenizer.pad_token_id == pad_id


def test_generation_never_emits_media_placeholders(lva_llama):
    path, model, _ = lva_llama
    placeholders = {model.config.image_token_id, model.config.audio_token_id, model.config.video_token_id}
    assert placeholders <= set(model.generation_config.suppress_tokens)
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    assert placeholders <= set(reloaded.generation_config.suppress_tokens)
    # The language model's own generation settings survive (its EOS id).
    assert reloaded.generation_config.eos_token_id == model.generation_config.eos_token_id is not None


def test_only_encoder_towers_are_saved(parts, lva_llama):  # noqa: F811
    path, model, _ = lva_llama
    keys = saved_keys(path)
    prefixes = ("model.vision_tower.", "model.audio_tower.", "model.vision_projector.", "model.audio_projector.")
    prefixes += ("model.language_model.", "lm_head.")
    assert all(k.startswith(prefixes) for k in keys), [k for k in keys if not k.startswith(prefixes)]
    assert not [k for k in keys if "text_model" in k or "projection" in k or "logit_scale" in k]
    # The towers hold the pretrained weights (CLAP's sit under `audio_model.` in a full ClapModel checkpoint).
    clip = CLIPModel.from_pretrained(parts.clip).vision_model.state_dict()
    for name, value in model.model.vision_tower.state_dict().items():
        torch.testing.assert_close(value, clip[name].to(value.dtype), rtol=0, atol=0)
    clap = ClapModel.from_pretrained(parts.clap).audio_model.state_dict()
    for name, value in model.model.audio_tower.state_dict().items():
        torch.testing.assert_close(value, clap[name].to(value.dtype), rtol=0, atol=0)


def test_vision_only_siglip_and_audio_only(parts, tmp_path):  # noqa: F811
    model, processor = build_llama_vision_audio(parts.mistral, parts.siglip, None, save_path=tmp_path / "v")
    assert model.model.audio_tower is None and model.config.vision_feature_select_strategy == "full"
    assert processor.image_seq_length == 16  # SigLIP has no CLS: (8 / 2) ** 2
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "v")
    inputs = lva_inputs(AutoProcessor.from_pretrained(tmp_path / "v"), with_audio=False)
    loaded.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)

    model, processor = build_llama_vision_audio(parts.llama, None, parts.clap, save_path=tmp_path / "a")
    assert model.model.vision_tower is None and "<image>" not in processor.tokenizer.get_vocab()
    assert "<video>" not in processor.tokenizer.get_vocab() and model.config.video_token_id is None
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "a")
    loaded.generate(**lva_inputs(processor, with_image=False), max_new_tokens=2, min_new_tokens=2, do_sample=False)

    model, _ = build_llama_vision_audio(parts.llama, parts.clip_vision_only, None)
    assert model.config.image_seq_length == 16
    with pytest.raises(ValueError, match="`vision_tower_path` and `audio_tower_path`"):
        build_llama_vision_audio(parts.llama, None, None)


def test_projectors_are_seeded_and_weights_sharded(parts, lva_llama, tmp_path):  # noqa: F811
    path, model, _ = lva_llama
    again, _ = build_llama_vision_audio(
        parts.llama, parts.clip, parts.clap, save_path=tmp_path, max_shard_size="100KB"
    )
    for name in ("vision_projector", "audio_projector"):
        for key, value in getattr(model.model, name).state_dict().items():
            torch.testing.assert_close(value, getattr(again.model, name).state_dict()[key], rtol=0, atol=0)
    weight = model.model.vision_projector.linear_1.weight.float()
    assert abs(weight.std().item() - 0.02) < 0.005 and not model.model.vision_projector.linear_1.bias.any()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_model_card(lva_llama, parts):  # noqa: F811
    path, _, _ = lva_llama
    card = (path / "README.md").read_text()
    for text in (str(parts.llama), str(parts.clip), str(parts.clap), "`<image>`", "`<audio>`", "`<pad>`", "mean"):
        assert text in card
    data = ModelCard(card).data  # the Hub's metadata block
    assert data.library_name == "transformers" and data.base_model == [
        str(parts.llama),
        str(parts.clip),
        str(parts.clap),
    ]
    assert "build_llama_vision_audio(**" in card and "Converted" not in card


def test_cli_and_example_scripts(parts, tmp_path):  # noqa: F811
    build_main(
        ["--kind", "llama_vision_audio", "--language_model_path", str(parts.llama), "--vision_tower_path", "none"]
        + ["--audio_tower_path", str(parts.clap), "--save_path", str(tmp_path / "cli"), "--dtype", "float32"]
    )
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["vision_config"] is None and config["dtype"] == "float32"

    for script, extra in (
        ("build_llama_vision", []),
        ("build_llama_vision_audio", ["--audio_tower_path", str(parts.clap)]),
    ):
        spec = importlib.util.spec_from_file_location(script, REPO / "examples" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        argv = ["--language_model_path", str(parts.llama), "--vision_tower_path", str(parts.clip)]
        module.main(argv + extra + ["--save_path", str(tmp_path / script)])
        assert (tmp_path / script / "README.md").exists()


def test_built_model_reads_video_through_its_image_projector(lva_llama):
    """`<video>` is added with the vision tower and recorded in the config; frames go through the vision tower and the
    same projector, pooled 2x2 (no new weights), and the saved config keeps the id."""
    path, model, processor = lva_llama
    video_id = processor.tokenizer.convert_tokens_to_ids("<video>")
    assert model.config.video_token_id == video_id == model.config.audio_token_id + 1
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    assert reloaded.config.video_token_id == video_id
    assert reloaded.config.video_frame_seq_length == 4  # 8x8 CLIP, 2x2 patches -> 4x4 grid pooled to 2x2
    frames = torch.randn(2, 3, 8, 8, dtype=reloaded.dtype)
    input_ids = torch.tensor([[1] + [video_id] * 8 + [2, 3]])
    with torch.no_grad():
        logits = reloaded(input_ids=input_ids, pixel_values_videos=frames).logits
        other = reloaded(input_ids=input_ids, pixel_values_videos=torch.zeros_like(frames)).logits
    assert logits.shape[:2] == (1, 11) and not torch.equal(logits, other)


def test_a_non_default_pooling_stride_reaches_the_saved_processor(parts, tmp_path):  # noqa: F811
    """The processor expands `<video>` by the config's tokens per frame: 8x8 CLIP, 2x2 patches, pooled 4x4 -> 1."""
    model, processor = build_llama_vision_audio(
        parts.llama, parts.clip, None, save_path=tmp_path, spatial_pool_stride=4
    )
    assert model.config.video_frame_seq_length == processor.video_frame_seq_length == 1
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.video_frame_seq_length == 1
    clip = np.stack([np.full((8, 8, 3), 30 * t, np.uint8) for t in range(3)])
    inputs = loaded(text="<video> what?", videos=[clip], num_frames=3, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 3
    with torch.no_grad():  # the model's count check agrees
        model(**inputs)
