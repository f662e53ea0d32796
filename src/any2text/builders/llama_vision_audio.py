"""Build a `LlamaVisionAudioForConditionalGeneration` from a causal LM, a CLIP/SigLIP and a CLAP checkpoint."""

from pathlib import Path

import torch
from transformers import ClapFeatureExtractor, CLIPImageProcessor
from transformers.utils import logging

from ..models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioProcessor,
)
from ..models.llama_vision_audio.configuration_llama_vision_audio import VISION_ENCODERS_WITH_CLS
from ..models.llama_vision_audio.processing_llama_vision_audio import DEFAULT_CHAT_TEMPLATE
from .checkpoint import BuildRecord, write_outputs
from .components import (
    AUDIO_TOKEN,
    IMAGE_TOKEN,
    add_placeholder_tokens,
    attach_language_model,
    check_image_processor,
    init_projector,
    load_encoder,
    load_feature_extractor,
    load_image_processor,
    load_language_model,
    load_tokenizer,
    text_init_std,
)

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
        seed: seeds the projector initialisation (weights ~ N(0, `text_config.initializer_range`), biases 0).
        remote_code: ship the model folder's code and an `auto_map`, so the checkpoint loads with
            `trust_remote_code=True` where any2text is not installed.
        push_to_hub: repo id to upload the saved folder to (one commit), or `None`.

    `<image>` / `<audio>` (for the encoders present, and `<pad>` when the tokenizer has none) are added as special
    tokens; their input and output embedding rows are the mean of the rows of the original vocabulary.
    """
    if vision_tower_path is None and audio_tower_path is None:
        raise ValueError(
            "Both `vision_tower_path` and `audio_tower_path` are None: pass at least one encoder checkpoint "
            "(for a text-only model use the language model as it is)."
        )
    logger.info("[1/5] Loading the language model and tokenizer")
    language_model = load_language_model(language_model_path, dtype)
    dtype = language_model.dtype
    tokenizer = load_tokenizer(language_model_path)

    logger.info("[2/5] Loading the encoders, image processor and feature extractor")
    vision_tower = audio_tower = None
    # The processor always carries both media processors; a missing encoder gets a default (never used).
    image_processor, feature_extractor = CLIPImageProcessor(), ClapFeatureExtractor()
    placeholders = []
    if vision_tower_path is not None:
        vision_tower = load_encoder(vision_tower_path, "vision", dtype=dtype)
        image_processor = load_image_processor(vision_tower_path)
        check_image_processor(image_processor, vision_tower.config.image_size, vision_tower_path)
        placeholders.append(IMAGE_TOKEN)
        if vision_feature_select_strategy is None:
            has_cls = vision_tower.config.model_type in VISION_ENCODERS_WITH_CLS
            vision_feature_select_strategy = "default" if has_cls else "full"
    if audio_tower_path is not None:
        audio_tower = load_encoder(audio_tower_path, "audio", dtype=dtype)
        feature_extractor = load_feature_extractor(audio_tower_path)
        placeholders.append(AUDIO_TOKEN)

    logger.info("[3/5] Adding placeholder tokens and assembling the model")
    token_ids, num_old_tokens = add_placeholder_tokens(tokenizer, placeholders)
    # An absent modality still needs an id distinct from the other; it is never in any input.
    image_token_id = token_ids.get(IMAGE_TOKEN, -1)
    audio_token_id = token_ids.get(AUDIO_TOKEN, -2)
    config = LlamaVisionAudioConfig(
        text_config=language_model.config,
        vision_config=vision_tower.config if vision_tower is not None else None,
        audio_config=audio_tower.config if audio_tower is not None else None,
        image_token_id=image_token_id,
        audio_token_id=audio_token_id,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy or "default",
        audio_feature_layer=audio_feature_layer,
        projector_hidden_act=projector_hidden_act,
        tie_word_embeddings=language_model.config.tie_word_embeddings,
    )
    # Built on the meta device, then the loaded parts are moved in: the language model is never copied.
    with torch.device("meta"):
        model = LlamaVisionAudioForConditionalGeneration(config)
    std = text_init_std(config.text_config)
    if vision_tower is not None:
        model.model.vision_tower = vision_tower
        init_projector(model.model.vision_projector, std, seed, dtype)
    if audio_tower is not None:
        model.model.audio_tower = audio_tower
        # Its own seed stream, so adding or removing the vision tower does not change the audio projector.
        init_projector(model.model.audio_projector, std, seed + 1, dtype)
    placeholders = [config.image_token_id, config.audio_token_id]
    attach_language_model(model, language_model, tokenizer, num_old_tokens, token_ids, placeholders, dtype)
    del language_model

    processor = LlamaVisionAudioProcessor(
        image_processor=image_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        audio_token=AUDIO_TOKEN,
        image_seq_length=config.image_seq_length,
        audio_seq_length=config.audio_seq_length,
    )
    record = BuildRecord(
        builder="build_llama_vision_audio",
        language_model=str(language_model_path),
        vision_tower=None if vision_tower_path is None else str(vision_tower_path),
        audio_tower=None if audio_tower_path is None else str(audio_tower_path),
        added_tokens=token_ids,
        num_old_tokens=num_old_tokens,
        seed=seed,
    )
    write_outputs(
        model, processor, record, save_path, push_to_hub, remote_code, max_shard_size, private=private, token=token
    )
    return model, processor
