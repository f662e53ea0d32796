"""The lmms-eval plug-in's logic that needs no lmms-eval: messages -> conversations, generation, log-likelihoods.

lmms-eval's own CLI runs the plug-in end to end in `make test-lmms-eval` (tests/lmms_eval_e2e/).
"""

import configparser
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import soundfile
import torch

import any2text
from any2text.inference import decode_media, generate_batch, load_inference_model, prepare_inputs
from any2text.integrations.lmms_eval.adapter import (
    continuation_logprobs,
    cut_at_stop,
    generate_answers,
    generation_settings,
    to_conversation,
    visuals_conversation,
)
from conftest import REPO, make_image, make_tone


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_inference_model(str(tiny_checkpoint), device="cpu")


class _PydanticLike:
    """Stands for lmms-eval's `ChatMessage` (a pydantic model): only `model_dump()` is used."""

    def __init__(self, data):
        self.data = data

    def model_dump(self):
        return self.data


def _lmms_messages(image, clip, rate, text="What is shown?"):
    return [
        {"role": "system", "content": "Be brief."},
        _PydanticLike(
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": image},
                    {"type": "audio", "url": {"array": clip, "sampling_rate": rate}},
                    {"type": "text", "text": text},
                ],
            }
        ),
    ]


def test_to_conversation_maps_lmms_eval_parts():
    image, clip = make_image("red"), make_tone(440.0, 0.5, 8000)
    conversation = to_conversation(_lmms_messages(image, clip, 8000))
    assert conversation[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    image_part, audio_part, text_part = conversation[1]["content"]
    assert image_part == {"type": "image", "image": image}
    assert audio_part["type"] == "audio" and audio_part["audio"]["sampling_rate"] == 8000
    assert audio_part["audio"]["array"] is clip
    assert text_part == {"type": "text", "text": "What is shown?"}
    # lmms-eval's default doc_to_messages labels every dict visual "video"; a waveform dict is still audio.
    relabelled = to_conversation(
        [{"role": "user", "content": [{"type": "video", "url": {"array": clip, "sampling_rate": 8000}}]}]
    )
    assert relabelled[0]["content"][0]["type"] == "audio"
    # ... and a video file is a video (MVBench's and Video-MME's `doc_to_visual` give paths).
    assert to_conversation([{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}]}]) == [
        {"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}
    ]
    with pytest.raises(ValueError, match=r"Message 0 has a `sound` part"):
        to_conversation([{"role": "user", "content": [{"type": "sound", "url": "clip.mp4"}]}])


def test_simple_requests_put_visuals_before_the_context():
    image, clip = make_image("blue"), {"array": make_tone(300.0, 0.5, 8000), "sampling_rate": 8000}
    (turn,) = visuals_conversation("Question?", [image, clip, "/data/mvbench/video_1.mp4"])
    assert [part["type"] for part in turn["content"]] == ["image", "audio", "video", "text"]
    assert turn["content"][2]["video"] == "/data/mvbench/video_1.mp4"
    assert visuals_conversation("Only text", None) == [
        {"role": "user", "content": [{"type": "text", "text": "Only text"}]}
    ]


def test_audio_is_resampled_from_its_own_rate(loaded, tmp_path):
    """A `{"array", "sampling_rate"}` clip reaches the encoder exactly like the same clip read from a file."""
    model, processor = loaded
    rate = 8000
    clip = make_tone(700.0, 1.0, rate)
    conversation = to_conversation(_lmms_messages(make_image("green"), clip, rate))
    decoded = decode_media(conversation, processor)[1]["content"][1]["audio"]
    assert processor.feature_extractor.sampling_rate == 16000
    assert decoded.shape == (16000,)  # 1 s at the encoder's rate, not 0.5 s as an 8 kHz array read as 16 kHz

    soundfile.write(tmp_path / "clip.wav", clip, rate, subtype="FLOAT")
    native = [{"role": "user", "content": [{"type": "audio", "audio": str(tmp_path / "clip.wav")}]}]
    from_lmms = [{"role": "user", "content": [conversation[1]["content"][1]]}]
    torch.testing.assert_close(
        prepare_inputs(processor, [from_lmms])["input_features"], prepare_inputs(processor, [native])["input_features"]
    )


def test_generation_settings():
    assert generation_settings({"max_new_tokens": 8, "temperature": 0, "top_p": 0.9, "num_beams": 1}) == (
        8,
        {"do_sample": False, "num_beams": 1},
        [],
    )
    assert generation_settings({"temperature": 0.7, "top_p": 0.9, "until": "\n\n"}, default_max_new_tokens=5) == (
        5,
        {"do_sample": True, "top_p": 0.9, "temperature": 0.7},
        ["\n\n"],
    )
    # Keys lmms-eval tasks set for other models are ignored (with a warning), not passed to `generate`.
    assert generation_settings({"image_aspect_ratio": "pad", "max_new_tokens": 3})[1] == {"do_sample": False}
    assert cut_at_stop("red apple\n\nQ: next", ["\n\n", "Q:"]) == "red apple"


def _mixed_conversations():
    return [
        [{"role": "user", "content": [{"type": "image", "image": make_image(c)}, {"type": "text", "text": q}]}]
        for c, q in (("red", "Colour?"), ("blue", "Which colour is this?"), ("green", "Say it"))
    ] + [
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": {"array": make_tone(f, 1.0, 8000), "sampling_rate": 8000}},
                    {"type": "text", "text": "Pitch?"},
                ],
            }
        ]
        for f in (300.0, 3000.0)
    ]


def test_generate_answers_batches_by_settings_and_keeps_order(loaded):
    model, processor = loaded
    conversations = _mixed_conversations()
    settings = [{"max_new_tokens": 4}, {"max_new_tokens": 2, "until": ["\n"]}] * 2 + [{"max_new_tokens": 4}]
    answers = generate_answers(model, processor, conversations, settings, batch_size=8)
    expected = [
        cut_at_stop(generate_batch(model, processor, [c], max_new_tokens=s["max_new_tokens"])[0], s.get("until", []))
        for c, s in zip(conversations, settings)
    ]
    assert answers == expected
    assert len(set(answers)) > 1  # the media change the answers: the test would notice media being dropped


def _alone(model, processor, conversation, continuation_ids):
    """Log-prob and greedy flag of one row, unpadded, computed directly."""
    inputs = prepare_inputs(processor, [conversation])
    prompt_length = inputs["input_ids"].shape[1]
    target = torch.tensor(continuation_ids)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], target[None]], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(target)[None]], 1)
    with torch.no_grad():
        logits = model(**inputs).logits[0, prompt_length - 1 : -1]
    logprobs = torch.log_softmax(logits.float(), -1)
    return logprobs.gather(-1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_continuation_logprobs_match_unpadded_rows(loaded):
    model, processor = loaded
    tokenizer = processor.tokenizer
    conversations = _mixed_conversations()
    continuations = [" red", " a blue thing", " green", " low", " it is high"]
    scored = continuation_logprobs(model, processor, conversations, continuations, batch_size=8)
    for conversation, continuation, (logprob, greedy) in zip(conversations, continuations, scored):
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        expected_logprob, expected_greedy = _alone(model, processor, conversation, ids)
        assert logprob == pytest.approx(expected_logprob, abs=1e-4)
        assert greedy == expected_greedy
    # What greedy decoding says is, by definition, greedy.
    # (Checked on a conversation whose greedy tokens decode and re-encode to themselves: the continuation is text.)
    exact = []
    for conversation in conversations:
        generated = model.generate(**prepare_inputs(processor, [conversation]), max_new_tokens=3, do_sample=False)
        answer = tokenizer.decode(answer_ids := generated[0, -3:].tolist())
        if tokenizer(answer, add_special_tokens=False)["input_ids"] == answer_ids:
            exact.append((conversation, answer))
    assert exact, "no greedy answer of these conversations round-trips through the tokenizer"
    conversation, answer = exact[0]
    ((_, greedy),) = continuation_logprobs(model, processor, [conversation], [answer])
    assert greedy
    with pytest.raises(ValueError, match=r"Requests \[0\] have an empty continuation"):
        continuation_logprobs(model, processor, conversations[:1], [""])


def test_entry_point_is_declared_and_resolves():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entry = config["options.entry_points"]["lmms_eval.models"].strip()
    assert entry == "any2text = any2text.integrations.lmms_eval:model_manifest"
    module, function = entry.split(" = ")[1].split(":")
    assert callable(getattr(importlib.import_module(module), function))
    assert "lmms-eval" in config["options.extras_require"]


def test_importing_the_plugin_needs_no_lmms_eval(tmp_path):
    """`import any2text` and the plug-in package work where lmms-eval cannot be imported; the manifest says why not."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class _BlockLmmsEval(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "lmms_eval" or name.startswith("lmms_eval."):
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, _BlockLmmsEval())
        import any2text
        from any2text.integrations.lmms_eval import adapter, model_manifest
        assert not [m for m in sys.modules if m.startswith("lmms_eval")]
        try:
            model_manifest()
        except ImportError as error:
            assert 'pip install "any2text[lmms-eval]"' in str(error), error
        else:
            raise SystemExit("model_manifest() worked without lmms-eval")
        """
    )
    # This checkout's sources, whatever the working directory (PYTHONPATH=src is relative).
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(any2text.__file__))}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
