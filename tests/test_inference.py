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
from any2text.evaluation.evaluate import load_model_and_processor
from any2text.evaluation.generation import generate_batch
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
    model, processor = load_model_and_processor(str(checkpoint), device="cpu")
    messages = [{"role": "user", "content": [{"type": "image", "image": str(checkpoint / "image.png")}, {"type": "text", "text": "Colour?"}]}]  # fmt: skip
    expected = generate_batch(model, processor, [messages], max_new_tokens=256)[0]
    assert answer == expected and answer


def test_chat_session_keeps_history_and_audio(checkpoint):
    model, processor = load_model_and_processor(str(checkpoint), device="cpu")
    session = chat.ChatSession(model, processor, audio=str(checkpoint / "clip.wav"))
    session.ask("What do you hear?", max_new_tokens=4)
    session.ask("And then?", max_new_tokens=4)
    roles = [m["role"] for m in session.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert session.messages[0]["content"][0] == {"type": "audio"}
    assert session.audio[0].shape == (48000,)  # 1 s at 16 kHz, resampled to CLAP's 48 kHz


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
