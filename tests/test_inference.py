"""Inference entry points on tiny checkpoints: one-shot chat, `pipeline(...)`, the seed's usage snippets."""

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from transformers import (
    pipeline,
)

from any2text.evaluation import chat
from any2text.inference import generate_batch, load_inference_model, prepare_inputs
from conftest import make_image, make_tone

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tester):
    path = tmp_path_factory.mktemp("lva")
    tester.get_model(seed=3).save_pretrained(path)
    tester.get_processor().save_pretrained(path)
    make_image("orange").save(path / "image.png")
    soundfile.write(path / "clip.wav", make_tone(500.0, 1.0, 16000), 16000)
    return path


@pytest.fixture(scope="module")
def llava_checkpoint(tmp_path_factory, tester):
    path = tester.save_llava_checkpoint(tmp_path_factory.mktemp("llava"))
    make_image("purple").save(path / "image.png")
    return path


def test_one_shot_chat_answers_like_batched_generation(checkpoint, capsys):
    assert (
        chat.main(["--model", str(checkpoint), "--image", str(checkpoint / "image.png"), "--prompt", "Colour?"]) == 0
    )
    answer = capsys.readouterr().out.strip()
    model, processor = load_inference_model(str(checkpoint), device="cpu")
    messages = [{"role": "user", "content": [{"type": "image", "image": str(checkpoint / "image.png")}, {"type": "text", "text": "Colour?"}]}]  # fmt: skip
    expected = generate_batch(model, processor, [messages], max_new_tokens=256)[0]
    assert answer == expected and answer


def test_prepare_inputs_left_pads_with_one_bos_and_leaves_the_tokenizer_alone(checkpoint):
    _, processor = load_inference_model(str(checkpoint), device="cpu")
    tokenizer = processor.tokenizer
    tokenizer.add_bos_token = True  # like Llama-3's tokenizer, whose chat template also writes BOS
    side = tokenizer.padding_side
    short = [{"role": "user", "content": [{"type": "image", "image": str(checkpoint / "image.png")}, {"type": "text", "text": "Hi"}]}]  # fmt: skip
    long = [{"role": "user", "content": [{"type": "audio", "audio": str(checkpoint / "clip.wav")}, {"type": "text", "text": "Hi " * 20}]}]  # fmt: skip
    inputs = prepare_inputs(processor, [short, long])
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # left padded: both prompts end in the last column
    assert inputs["input_features"].shape[0] == 1 and inputs["pixel_values"].shape[0] == 1
    # The chat template writes BOS; the tokenizer must not add a second one.
    assert processor.apply_chat_template(short, add_generation_prompt=True).startswith(tokenizer.bos_token)
    assert [int((row == tokenizer.bos_token_id).sum()) for row in inputs["input_ids"]] == [1, 1]
    assert tokenizer.padding_side == side


def test_chat_session_keeps_history_and_audio(checkpoint):
    model, processor = load_inference_model(str(checkpoint), device="cpu")
    session = chat.ChatSession(model, processor, audio=str(checkpoint / "clip.wav"))
    session.ask("What do you hear?", max_new_tokens=4)
    session.ask("And then?", max_new_tokens=4)
    roles = [m["role"] for m in session.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    audio = session.messages[0]["content"][0]
    assert audio["type"] == "audio" and audio["audio"].shape == (48000,)  # 1 s at 16 kHz, resampled to 48 kHz
    assert all(item["type"] == "text" for item in session.messages[2]["content"])  # media once, in the first turn


def test_image_text_to_text_pipeline_matches_generate(checkpoint):
    pipe = pipeline("image-text-to-text", model=str(checkpoint))
    messages = [{"role": "user", "content": [{"type": "image", "image": make_image("orange")}, {"type": "text", "text": "Colour?"}]}]  # fmt: skip
    out = pipe(text=messages, max_new_tokens=5, return_full_text=False)
    expected = generate_batch(pipe.model, pipe.processor, [messages], max_new_tokens=5)[0]
    assert out[0]["generated_text"].strip() == expected


def _run_example(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_seed_usage_snippet_llava_runs_as_written(llava_checkpoint):
    out = _run_example("seed_usage_llava.py", str(llava_checkpoint), str(llava_checkpoint / "image.png"), "4")
    assert "Give an overview of what's in the image." in out


def test_seed_usage_snippet_audio_model_runs(checkpoint):
    out = _run_example("seed_usage_llama_vision_audio.py", str(checkpoint), str(checkpoint / "clip.wav"), "4")
    # The prompt comes back decoded, and the audio tokens (special) are skipped: the processor expanded them.
    assert "Give an overview of what's in the audio." in out and "<audio>" not in out
