"""Named presets: explicit sub-configs for the real recipe and for tiny offline models (tests, `make demo`)."""

from importlib import resources
from pathlib import Path

from transformers import ClapAudioConfig, ClapFeatureExtractor, CLIPVisionConfig, LlamaConfig

DEFAULT_LANGUAGE_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14-336"
DEFAULT_AUDIO_TOWER = "laion/clap-htsat-fused"


def tiny_tokenizer_path() -> Path:
    """The committed byte-level BPE tokenizer with Llama-3's special tokens and chat template (no Hub needed)."""
    return Path(str(resources.files("any2text.builders") / "assets" / "tiny_llama3_tokenizer"))


def tiny_text_config(vocab_size: int = 1024, hidden_size: int = 32, num_hidden_layers: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=4,
        tie_word_embeddings=False,
    )


def tiny_vision_config(image_size: int = 8, patch_size: int = 2, hidden_size: int = 32) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=hidden_size,
    )


def tiny_audio_config(patch_embeds_hidden_size: int = 8, enable_fusion: bool = True) -> ClapAudioConfig:
    # CLAP requires hidden_size == patch_embeds_hidden_size * 2 ** (len(depths) - 1); the 8 x 8 grid of
    # hidden_states[-2] gives 64 tokens per clip, as laion/clap-htsat-fused does.
    depths = [1, 1, 1, 1]
    return ClapAudioConfig(
        depths=depths,
        num_attention_heads=[1, 1, 1, 1],
        patch_embeds_hidden_size=patch_embeds_hidden_size,
        hidden_size=patch_embeds_hidden_size * 2 ** (len(depths) - 1),
        window_size=8,
        enable_fusion=enable_fusion,
        fusion_num_hidden_layers=1,
        projection_hidden_size=32,
        projection_dim=32,
    )


def cheap_audio_config() -> ClapAudioConfig:
    """A tiny CLAP on 2 s of 16 kHz audio with 16 mel bins: 16 tokens per clip, ~10x cheaper than 10 s at 48 kHz.

    Pair it with `cheap_feature_extractor()`: `spec_size * (spec_size // num_mel_bins)` (256) frames hold the
    extractor's 201. Clips longer than its 2 s window are refused by the processor: transformers' CLAP extractor
    fuses long clips at a hard-coded 64 mel bins (a 64-bin variant, spec_size 128 and patch 4, works but trains
    the demo 2.4x slower).
    """
    config = tiny_audio_config()
    config.spec_size, config.num_mel_bins, config.window_size = 64, 16, 4
    config.patch_size, config.patch_stride = 2, (2, 2)
    return config


def cheap_feature_extractor(sampling_rate: int = 16000) -> ClapFeatureExtractor:
    return ClapFeatureExtractor(
        feature_size=16,
        max_length_s=2,
        sampling_rate=sampling_rate,
        hop_length=160,
        fft_window_size=400,
        frequency_max=sampling_rate // 2,
    )
