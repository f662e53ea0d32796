"""Tiny "pretrained" parts saved locally with `save_pretrained`, standing in for Hub ids in the builder tests.

Import the fixtures into a test module (`from builders_fixtures import parts  # noqa: F401`); they are
session-scoped, so every builder test shares one set of folders.
"""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from any2text.builders.presets import tiny_audio_config, tiny_text_config, tiny_tokenizer_path, tiny_vision_config

TINY_TEXT_TOWER = dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def tiny_clip(vision: CLIPVisionConfig) -> CLIPModel:
    """A full CLIPModel (text tower too, as on the Hub) around the tiny vision config."""
    return CLIPModel(CLIPConfig(text_config=TINY_TEXT_TOWER, vision_config=vision.to_dict(), projection_dim=16))


def tiny_clap() -> ClapModel:
    """A full ClapModel (text tower too, as on the Hub) around the tiny audio config."""
    return ClapModel(
        ClapConfig(
            text_config={**TINY_TEXT_TOWER, "max_position_embeddings": 40},
            audio_config=tiny_audio_config().to_dict(),
            projection_dim=16,
        )
    )


def tiny_clip_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})


@dataclass
class Parts:
    """Folders of tiny pretrained parts. `llama` is bf16; `qwen2` ties its embeddings and has spare vocab rows."""

    llama: Path
    qwen2: Path
    mistral: Path
    clip: Path
    clip_vision_only: Path
    siglip: Path
    clap: Path


def _save_lm(model: torch.nn.Module, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_parts(root: Path) -> Parts:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    vocab = len(tokenizer)
    llama = LlamaForCausalLM(tiny_text_config(vocab_size=vocab)).to(torch.bfloat16)
    small = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=4,
    )
    # Qwen2's real vocabularies have spare rows past the tokenizer: new tokens land there without resizing.
    qwen2 = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab + 16, tie_word_embeddings=True, **small))
    mistral = MistralForCausalLM(MistralConfig(vocab_size=vocab, sliding_window=None, **small))

    vision = tiny_vision_config()
    clip = tiny_clip(vision)
    clip_processor = tiny_clip_processor()
    siglip_vision = dict(
        image_size=8, patch_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    siglip = SiglipModel(SiglipConfig(text_config=TINY_TEXT_TOWER, vision_config=siglip_vision))
    siglip_processor = SiglipImageProcessor(size={"height": 8, "width": 8})
    clap = tiny_clap()

    parts = Parts(
        llama=_save_lm(llama, tokenizer, root / "llama"),
        qwen2=_save_lm(qwen2, tokenizer, root / "qwen2"),
        mistral=_save_lm(mistral, tokenizer, root / "mistral"),
        clip=root / "clip",
        clip_vision_only=root / "clip_vision_only",
        siglip=root / "siglip",
        clap=root / "clap",
    )
    clip.save_pretrained(parts.clip)
    clip_processor.save_pretrained(parts.clip)
    vision_only = CLIPVisionModel(vision)
    vision_only.save_pretrained(parts.clip_vision_only)
    clip_processor.save_pretrained(parts.clip_vision_only)
    siglip.save_pretrained(parts.siglip)
    siglip_processor.save_pretrained(parts.siglip)
    clap.save_pretrained(parts.clap)
    ClapFeatureExtractor().save_pretrained(parts.clap)
    return parts


@pytest.fixture(scope="session")
def parts(tmp_path_factory) -> Parts:
    return make_parts(tmp_path_factory.mktemp("pretrained_parts"))


def image(color: str = "red", size: int = 20) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def tone(seconds: float = 1.0, sampling_rate: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


# Run first in a subprocess: a meta path finder that makes `import any2text` fail, so the code under test cannot
# fall back on the installed (editable) package.
BLOCK_ANY2TEXT = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockAny2text(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "any2text" or name.startswith("any2text."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _BlockAny2text())
    try:
        import any2text  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("any2text is importable: the block failed")
    """
)


def run_without_any2text(script: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python that cannot import any2text; raise with its output if it fails."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_MODULES_CACHE": str(cwd / "modules"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_ANY2TEXT + textwrap.dedent(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@dataclass
class SeedCheckpoints:
    """Tiny checkpoints in the two align-anything formats (pickled `pytorch_model.bin`, seed config fields)."""

    llava: Path
    llama_vision_audio: Path
    # The parts they were made from, to recompute the seed's features by hand.
    clip: CLIPModel
    clap_audio: torch.nn.Module
    language_model: LlamaForCausalLM


def _seed_tokenizer(tokens: list[str]):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    tokenizer.add_special_tokens({"extra_special_tokens": tokens})
    return tokenizer


def _prefixed(prefix: str, state_dict: dict) -> dict:
    return {prefix + k: v.clone() for k, v in state_dict.items()}


def make_seed_checkpoints(root: Path) -> SeedCheckpoints:
    """Written with the seed's exact key names and config fields (see shared/reference/align-anything-format.md)."""
    torch.manual_seed(1)
    vision = tiny_vision_config()
    clip = tiny_clip(vision)
    clap = tiny_clap()
    text_config = tiny_text_config(vocab_size=934 + 4)
    language_model = LlamaForCausalLM(text_config)
    hidden = text_config.hidden_size
    # The seed saved its CLIP tower as a FULL CLIPModel (text tower included) and Llava's old key layout.
    clip_state = _prefixed("vision_tower.", CLIPModel.state_dict(clip))
    lm_state = _prefixed("language_model.", language_model.state_dict())

    def projector(prefix: str, in_features: int) -> dict:
        return {
            f"{prefix}.linear_1.weight": torch.randn(hidden, in_features) * 0.02,
            f"{prefix}.linear_1.bias": torch.randn(hidden) * 0.02,
            f"{prefix}.linear_2.weight": torch.randn(hidden, hidden) * 0.02,
            f"{prefix}.linear_2.bias": torch.randn(hidden) * 0.02,
        }

    vision_dict = {**vision.to_dict(), "model_type": "clip_vision_model"}
    text_dict = {**text_config.to_dict(), "model_type": "llama"}

    llava = root / "seed_llava"
    llava.mkdir()
    llava_tokenizer = _seed_tokenizer(["<image>", "<unk>", "<pad>"])
    llava_state = {**clip_state, **lm_state, **projector("multi_modal_projector", vision.hidden_size)}
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        llava_state[key] = llava_state[key][: 934 + 3]  # <image>, <unk>, <pad>: one row fewer than with <audio>
    torch.save({k: v.to(torch.bfloat16) for k, v in llava_state.items()}, llava / "pytorch_model.bin")
    llava_config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "ignore_index": -100,
        "image_token_index": 934,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "text_config": {**text_dict, "vocab_size": 934 + 3},
        "vision_config": vision_dict,
        "torch_dtype": "bfloat16",
    }
    (llava / "config.json").write_text(json.dumps(llava_config))
    llava_tokenizer.save_pretrained(llava)
    (llava / "chat_template.jinja").unlink(missing_ok=True)  # the seed saved no chat template
    tiny_clip_processor().save_pretrained(llava)

    lva = root / "seed_llama_vision_audio"
    lva.mkdir()
    lva_tokenizer = _seed_tokenizer(["<image>", "<audio>", "<unk>", "<pad>"])
    audio_config = clap.config.audio_config
    lva_state = {
        **clip_state,
        **_prefixed("audio_tower.", clap.audio_model.state_dict()),
        **lm_state,
        **projector("image_projector", vision.hidden_size),
        **projector("audio_projector", audio_config.hidden_size),
    }
    torch.save(lva_state, lva / "pytorch_model.bin")
    lva_config = {
        "architectures": ["LlamaVisionAudioForConditionalGeneration"],
        "model_type": "llama_vision_audio",
        "text_config": text_dict,
        "vision_config": vision_dict,
        "audio_config": {**audio_config.to_dict(), "model_type": "clap_audio_model"},
        "ignore_index": -100,
        "image_token_index": 934,
        "audio_token_index": 935,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "audio_feature_select_strategy": "default",
        "audio_feature_layer": -2,
        "torch_dtype": "float32",
    }
    (lva / "config.json").write_text(json.dumps(lva_config))
    lva_tokenizer.save_pretrained(lva)
    (lva / "chat_template.jinja").unlink(missing_ok=True)
    # CLIP and CLAP both wrote preprocessor_config.json; CLAP's (written last) is what the seed folder holds.
    tiny_clip_processor().save_pretrained(lva)
    ClapFeatureExtractor().save_pretrained(lva)
    return SeedCheckpoints(llava, lva, clip.eval(), clap.audio_model.eval(), language_model.eval())


@pytest.fixture(scope="session")
def seed_checkpoints(tmp_path_factory) -> SeedCheckpoints:
    return make_seed_checkpoints(tmp_path_factory.mktemp("seed_checkpoints"))
