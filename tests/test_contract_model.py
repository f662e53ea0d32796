"""The model side of issue 9: one test per defect found by transformers' common tests and vLLM, each failing before.

1 placeholders without media, 2 `return_dict=False`, 3 `shift_labels`, 4 feature getters' output options,
5 the tied head's tensor-parallel plan, 6 initialisation of weights missing at load (7, the processor, has its own
tests; 8, one long clip with a trainable CLAP, is the training lock-step's: tests/test_zero3.py); then what vLLM
reads from a built checkpoint.
"""

import json

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor

from any2text import LlamaVisionAudioForConditionalGeneration
from any2text.builders import build_llama_vision_audio
from any2text.builders.presets import cheap_audio_config, cheap_feature_extractor, tiny_audio_config
from builders_fixtures import parts, run_without_any2text  # noqa: F401
from conftest import make_image, make_tone


def image_audio_inputs(tester, processor):
    return processor(
        text=["<image> and <audio>: what are they?"],
        images=[make_image("green")],
        audio=[make_tone(660.0)],
        sampling_rate=48000,
        return_tensors="pt",
    )


def test_placeholders_without_any_media_are_embedded_as_text_and_assisted_decoding_works(tester, processor):
    """Defect 1: transformers never passes media to the assistant model; Llava embeds the ids as text then."""
    model = tester.get_model()
    inputs = image_audio_inputs(tester, processor)
    text_only = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        logits = model(**text_only).logits
        plain = model.model.language_model(inputs_embeds=model.get_input_embeddings()(inputs["input_ids"]))
    torch.testing.assert_close(logits, model.lm_head(plain.last_hidden_state))

    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assisted = model.generate(**inputs, max_new_tokens=5, do_sample=False, assistant_model=model)
    assert torch.equal(assisted, expected)

    # Media given but one modality's missing: still the clear error.
    with pytest.raises(ValueError, match="audio tokens but no `input_features`"):
        model(**{k: v for k, v in inputs.items() if k not in ("input_features", "is_longer")})


def test_return_dict_false_gives_tuples_on_both_classes(tester, processor):
    """Defect 2: vLLM calls the base model with `return_dict=False`."""
    model = tester.get_model()
    inputs = image_audio_inputs(tester, processor)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        base_tuple = model.model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    torch.testing.assert_close(model.lm_head(base_tuple[0]), as_dict.logits)


@pytest.mark.parametrize("training", [False, True], ids=["eval_loss", "sparse_training_loss"])
def test_shift_labels_are_honoured_by_both_loss_paths(tester, processor, training):
    """Defect 3: pre-shifted targets (sequence/context parallel) give the loss of the labels they came from."""
    model = tester.get_model()
    model.train(training)
    inputs = image_audio_inputs(tester, processor)
    labels = inputs["input_ids"].clone()
    labels[inputs["mm_token_type_ids"] != 0] = -100
    shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    torch.manual_seed(0)
    from_labels = model(**inputs, labels=labels).loss
    torch.manual_seed(0)
    from_shift = model(**inputs, shift_labels=shift_labels).loss
    torch.testing.assert_close(from_shift, from_labels)
    # Other targets give another loss: the argument is really read.
    other = torch.where(shift_labels >= 0, (shift_labels + 1) % 100, shift_labels)
    torch.manual_seed(0)
    assert not torch.allclose(model(**inputs, shift_labels=other).loss, from_labels)


def test_feature_getters_follow_return_dict_attentions_and_hidden_states(tester, processor):
    """Defect 4: like Llava, only the hidden states the features use are kept unless asked; options are honoured."""
    model = tester.get_model()
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    inputs = image_audio_inputs(tester, processor)
    with torch.no_grad():
        image = model.get_image_features(inputs["pixel_values"])
        audio = model.get_audio_features(inputs["input_features"], is_longer=inputs["is_longer"])
        assert image.pooler_output.shape == (1, model.config.image_seq_length, 32)
        assert audio.pooler_output.shape == (1, model.config.audio_seq_length, 32)
        for out in (image, audio):
            assert out.attentions is None
            assert sum(h is not None for h in out.hidden_states) == 1
        full = model.get_image_features(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
        assert all(h is not None for h in full.hidden_states) and len(full.attentions) == 2
        full_audio = model.get_audio_features(
            inputs["input_features"], is_longer=inputs["is_longer"], output_hidden_states=True, output_attentions=True
        )
        assert all(h is not None for h in full_audio.hidden_states) and full_audio.attentions is not None
        as_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert isinstance(model.get_audio_features(inputs["input_features"], return_dict=False), tuple)


def test_tied_lm_head_is_sharded_like_the_embedding(tester):
    """Defect 5: a tied head IS the embedding's parameter, so the TP plan must shard both (as Llava declares)."""
    config = tester.get_config(tie_word_embeddings=True)
    config.text_config.tie_word_embeddings = True
    model = LlamaVisionAudioForConditionalGeneration._from_config(config)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    plan = model.tp_plan
    assert "model.language_model.embed_tokens" in plan
    assert plan.get("lm_head") == "colwise_gather_output"


def test_weights_missing_at_load_get_the_same_initialisation_as_a_fresh_model(tester):
    """Defect 6: CLIP's attention/MLP scale (0.088 here) was N(0, 0.02) when the weights were missing at load."""
    config = tester.get_config()
    fresh = LlamaVisionAudioForConditionalGeneration._from_config(config)
    loaded = LlamaVisionAudioForConditionalGeneration.from_pretrained(None, config=config, state_dict={})
    fresh_sd, loaded_sd = fresh.state_dict(), loaded.state_dict()
    checked = 0
    for name, fresh_value in fresh_sd.items():
        if fresh_value.numel() < 256 or not fresh_value.is_floating_point():
            continue
        fresh_std, loaded_std = fresh_value.float().std().item(), loaded_sd[name].float().std().item()
        assert loaded_std == pytest.approx(fresh_std, rel=0.3, abs=1e-3), name
        checked += 1
    assert checked > 50
    q_proj = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    assert loaded_sd[q_proj].std() > 0.06  # CLIP's own scale, not the generic 0.02


def test_built_checkpoint_carries_what_vllm_reads(parts, tmp_path):  # noqa: F811
    """vLLM's Transformers backend loads `auto_map["AutoModel"]` and sizes audio by `max_source_positions`."""
    model, processor = build_llama_vision_audio(parts.llama, parts.clip, parts.clap, save_path=tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_llama_vision_audio.LlamaVisionAudioModel"
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith(".LlamaVisionAudioForConditionalGeneration")
    assert config["audio_config"]["max_source_positions"] == model.config.audio_seq_length > 0
    proc = run_without_any2text(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert type(model).__name__ == "LlamaVisionAudioModel", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        embeds = model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
        out = model(inputs_embeds=embeds, return_dict=False)
        assert isinstance(out, tuple) and out[0].shape[:2] == (1, 3), type(out)
        print("base model ok")
        """,
        cwd=tmp_path,
        timeout=300,
    )
    assert "base model ok" in proc.stdout


@pytest.mark.parametrize("preset", ["tiny", "cheap"])
def test_thirty_second_warmup_clip_runs_with_every_audio_preset(tester, preset):
    """vLLM's multimodal warm-up feeds a 30 s dummy clip through the processor and the model."""
    audio_config = tiny_audio_config() if preset == "tiny" else cheap_audio_config()
    extractor = ClapFeatureExtractor() if preset == "tiny" else cheap_feature_extractor()
    config = tester.get_config()
    config.audio_config = audio_config
    config = type(config)(**config.to_dict())
    assert config.audio_config.max_source_positions == config.audio_seq_length
    torch.manual_seed(0)
    model = LlamaVisionAudioForConditionalGeneration._from_config(config).eval()
    # Built through the constructor, as a checkpoint's processor is (which may adapt the extractor it is given).
    if preset == "tiny":
        processor = tester.get_processor(config)
    else:
        processor = tester.get_cheap_processor(config.audio_seq_length, config.image_seq_length)
    rate = extractor.sampling_rate
    clip = (0.1 * np.random.default_rng(0).standard_normal(30 * rate)).astype(np.float32)
    inputs = processor(text=["<audio> what is it?"], audio=[clip], sampling_rate=rate, return_tensors="pt")
    # The 64-bin extractor fuses the long clip; the 16-bin one hears its first window, which is not "longer".
    assert bool(inputs["is_longer"].all()) == (preset == "tiny")
    assert int((inputs["input_ids"] == config.audio_token_id).sum()) == config.audio_seq_length
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
