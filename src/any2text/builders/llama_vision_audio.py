"""Build a `LlamaVisionAudioForConditionalGeneration` from a causal LM, a CLIP/SigLIP and a CLAP checkpoint."""

from pathlib import Path

import torch
from transformers import ClapFeatureExtractor
from transformers.utils import logging

from ..models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioProcessor,
)
from ..models.llama_vision_audio.configuration_llama_vision_audio import VISION_ENCODERS_WITH_CLS
from ..models.llama_vision_audio.processing_llama_vision_audio import DEFAULT_CHAT_TEMPLATE
from .checkpoint import BuildRecord, write_outputs
from .components import AUDIO_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN, assemble, load_parts
from .image_processors import clip_image_processor_class

logger = logging.get_logger(__name__)


def build_llama_vision_audio(
    language_model_path: str | Path,
    vision_tower_path: str | Path | None = None,
    audio_tower_path: str | Path | None = None,
    save_path: str | Path | None = None,
    dtype: str | torch.dtype = "auto",
    *,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str | None = None,
    audio_feature_layer: int = -2,
    projector_hidden_act: str = "gelu",
    spatial_pool_stride: int = 2,
    seed: int = 0,
    max_shard_size: str | int = "5GB",
    remote_code: bool = True,
    push_to_hub: str | None = None,
    private: bool | None = None,
    token: str | None = None,
) -> tuple[LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor]:
    """Compose a LlamaVisionAudio checkpoint: encoder(s) + fresh 2-layer MLP projector(s) + the language model.

    Args:
        language_model_path: Hub id or folder of a causal LM (Llama, Qwen2, Mistral, ...) with its tokenizer.
        vision_tower_path: CLIP or SigLIP checkpoint (full two-tower or vision-only), or `None` for no image input.
        audio_tower_path: CLAP checkpoint (full `ClapModel` or audio tower alone), or `None` for no audio input.
        save_path: folder to write the checkpoint (sharded safetensors, processor, README.md) to; `None` skips it.
        dtype: `"auto"` keeps the language model's checkpoint dtype, or `"float32"`, `"bfloat16"`, `"float16"`.
            Encoders and projectors are cast to the same dtype.
        vision_feature_select_strategy: `"default"` drops CLIP's CLS embedding (576 tokens per 336px image);
            `None` picks `"default"` for encoders with a CLS embedding and `"full"` for the others (SigLIP).
        spatial_pool_stride: pooling kernel and stride over a video frame's patch grid (`config.spatial_pool_stride`);
            the saved processor expands `<video>` by the same `video_frame_seq_length`.
        seed: seeds the projector initialisation (weights ~ N(0, `text_config.initializer_range`), biases 0).
        remote_code: ship the model folder's code and an `auto_map`, so the checkpoint loads with
            `trust_remote_code=True` where any2text is not installed.
        push_to_hub: repo id to upload the saved folder to (one commit), or `None`.

    `<image>` / `<audio>` (for the encoders present; `<video>` with the vision encoder, whose frames it reads; and
    `<pad>` when the tokenizer has none) are added as special tokens; their input and output embedding rows are the mean of the rows of the original vocabulary.
    """
    if vision_tower_path is None and audio_tower_path is None:
        raise ValueError(
            "Both `vision_tower_path` and `audio_tower_path` are None: pass at least one encoder checkpoint "
            "(for a text-only model use the language model as it is)."
        )
    parts = load_parts(
        language_model_path, {"vision": vision_tower_path, "audio": audio_tower_path}, dtype, video=True
    )
    vision_tower, audio_tower = parts.towers.get("vision"), parts.towers.get("audio")
    if vision_tower is not None and vision_feature_select_strategy is None:
        has_cls = vision_tower.config.model_type in VISION_ENCODERS_WITH_CLS
        vision_feature_select_strategy = "default" if has_cls else "full"
    config = LlamaVisionAudioConfig(
        text_config=parts.language_model.config,
        vision_config=vision_tower.config if vision_tower is not None else None,
        audio_config=audio_tower.config if audio_tower is not None else None,
        # An absent modality still needs an id distinct from the other; it is never in any input.
        image_token_id=parts.token_ids.get(IMAGE_TOKEN, -1),
        audio_token_id=parts.token_ids.get(AUDIO_TOKEN, -2),
        video_token_id=parts.token_ids.get(VIDEO_TOKEN),  # with the vision tower only
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy or "default",
        audio_feature_layer=audio_feature_layer,
        projector_hidden_act=projector_hidden_act,
        spatial_pool_stride=spatial_pool_stride,
        tie_word_embeddings=parts.language_model.config.tie_word_embeddings,
    )
    # The audio projector has its own seed stream, so adding or removing the vision tower does not change it.
    projectors = {"vision": ("vision_projector", seed), "audio": ("audio_projector", seed + 1)}
    model = assemble(LlamaVisionAudioForConditionalGeneration, config, parts, projectors)
    processor = LlamaVisionAudioProcessor(
        # The processor always carries both media processors; a missing encoder gets a default (never used).
        image_processor=parts.media_processors.get("vision", clip_image_processor_class()()),
        feature_extractor=parts.media_processors.get("audio", ClapFeatureExtractor()),
        tokenizer=parts.tokenizer,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        audio_token=AUDIO_TOKEN,
        image_seq_length=config.image_seq_length,
        audio_seq_length=config.audio_seq_length,
        # Tokens per video frame as the config pools them (0 without a vision tower: the processor's default then).
        video_frame_seq_length=config.video_frame_seq_length or None,
    )
    record = BuildRecord(
        builder="build_llama_vision_audio",
        language_model=str(language_model_path),
        vision_tower=None if vision_tower_path is None else str(vision_tower_path),
        audio_tower=None if audio_tower_path is None else str(audio_tower_path),
        added_tokens=parts.token_ids,
        num_old_tokens=parts.num_old_tokens,
        seed=seed,
    )
    write_outputs(
        model, processor, record, save_path, push_to_hub, remote_code, max_shard_size, private=private, token=token
    )
    return model, processor
