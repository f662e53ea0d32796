"""Pieces the builders share: load pretrained parts, add placeholder tokens, initialise what is new, assemble.

Memory: each pretrained part is loaded once (by `from_pretrained`, in the target dtype) and *moved* into a composite
model built on the meta device, so a build holds one copy of the language model plus the new embedding rows.
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    ClapAudioConfig,
    ClapAudioModel,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import logging

logger = logging.get_logger(__name__)

Modality = Literal["vision", "audio"]

# Encoder configs with no `AutoModel` mapping in transformers (CLAP maps only its full two-tower model).
_UNMAPPED_ENCODERS: dict[type[PreTrainedConfig], type[PreTrainedModel]] = {ClapAudioConfig: ClapAudioModel}

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
VIDEO_TOKEN = "<video>"  # videos are frames through the vision tower: added with it
PAD_TOKEN = "<pad>"


def load_language_model(path: str | Path, dtype: str | torch.dtype = "auto", **hub_kwargs) -> PreTrainedModel:
    """The causal LM at `path` (Hub id or folder) in `dtype` ("auto": the checkpoint's own, or a name such as
    "bfloat16", as `from_pretrained` takes it)."""
    logger.info(f"Loading language model from {path} (dtype={dtype})")
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **hub_kwargs)


def encoder_config(path: str | Path, modality: Modality, **hub_kwargs) -> PreTrainedConfig:
    """The encoder's config: the `vision_config`/`audio_config` of a two-tower checkpoint, or the config itself."""
    config = AutoConfig.from_pretrained(path, **hub_kwargs)
    return getattr(config, f"{modality}_config", None) or config


def _encoder_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    if type(config) in _UNMAPPED_ENCODERS:
        return _UNMAPPED_ENCODERS[type(config)]
    if type(config) in MODEL_MAPPING:
        return MODEL_MAPPING[type(config)]
    raise ValueError(
        f"No encoder model class for a `{config.model_type}` config. Pass a CLIP, SigLIP (vision) or CLAP (audio) "
        "checkpoint, or a checkpoint of their vision/audio tower alone."
    )


def _prefix_of(missing: list[str], unexpected: list[str]) -> str | None:
    """The prefix under which a two-tower checkpoint stores the encoder's keys (`audio_model.` in ClapModel)."""
    if not missing:
        return None
    probe = missing[0]
    for key in unexpected:
        if key.endswith("." + probe):
            prefix = key[: -len(probe)]
            if all(prefix + k in unexpected for k in missing):
                return prefix
    return None


def load_encoder(
    path: str | Path, modality: Modality, dtype: torch.dtype | Literal["auto"] = "auto", **hub_kwargs
) -> PreTrainedModel:
    """Load only the vision / audio tower of `path`: a full CLIP/SigLIP/CLAP checkpoint or a tower-only one.

    The other tower's weights (text model, projections) are never materialised in the returned model. Loading is
    checked: if the encoder's weights sit under a prefix in the checkpoint (CLAP keeps its audio tower under
    `audio_model.`), they are loaded through `key_mapping`; any weight still missing raises.
    """
    config = encoder_config(path, modality, **hub_kwargs)
    model_class = _encoder_class(config)
    logger.info(f"Loading {modality} encoder {model_class.__name__} from {path}")
    model, info = _load_quietly(model_class, path, config=config, dtype=dtype, **hub_kwargs)
    missing = sorted(info["missing_keys"])
    if missing:
        prefix = _prefix_of(missing, sorted(info["unexpected_keys"]))
        if prefix is not None:
            # Found where the tower lives: load again with the prefix removed (the first attempt did not load it).
            key_mapping = {"^" + prefix.replace(".", r"\."): ""}
            model, info = _load_quietly(
                model_class, path, config=config, dtype=dtype, key_mapping=key_mapping, **hub_kwargs
            )
            missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(
            f"The {modality} encoder checkpoint `{path}` lacks weights for {len(missing)} parameter(s) of "
            f"`{model_class.__name__}` (e.g. `{missing[0]}`). Pass a full CLIP/SigLIP/CLAP checkpoint or a "
            f"checkpoint of the {modality} tower alone."
        )
    logger.info(f"Kept the {modality} tower; skipped {len(info['unexpected_keys'])} weights of the other parts")
    return model


def _load_quietly(model_class: type[PreTrainedModel], path: str | Path, **kwargs) -> tuple[PreTrainedModel, dict]:
    """`from_pretrained` without transformers' table of unexpected keys: a two-tower checkpoint always has the
    other tower's weights, and `load_encoder` checks the missing ones itself."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        logging.set_verbosity(verbosity)


def load_image_processor(path: str | Path, **hub_kwargs):
    """The image processor saved with the vision checkpoint (CLIP / SigLIP)."""
    return AutoImageProcessor.from_pretrained(path, **hub_kwargs)


def load_feature_extractor(path: str | Path, **hub_kwargs):
    """The audio feature extractor saved with the audio checkpoint (CLAP)."""
    return AutoFeatureExtractor.from_pretrained(path, **hub_kwargs)


def load_tokenizer(path: str | Path, **hub_kwargs) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path, **hub_kwargs)


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> tuple[dict[str, int], int]:
    """Add `tokens` (and `<pad>` as pad token when the tokenizer has none) as special tokens.

    Returns the ids of every requested token plus `<pad>` if added, and the tokenizer length before adding, which
    marks the rows that existed (and were trained) before.
    """
    num_old = len(tokenizer)
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        # Special tokens are never split, so one `<image>` in a prompt is always exactly one id.
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        tokens = [*tokens, PAD_TOKEN]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    logger.info(f"Placeholder tokens: {ids} (tokenizer had {num_old} tokens, now {len(tokenizer)})")
    return ids, num_old


@torch.no_grad()
def resize_with_mean_init(
    model: PreTrainedModel, num_old_tokens: int, token_ids: dict[str, int], vocab_size: int
) -> None:
    """Grow the embeddings to `vocab_size` rows (never shrink) and set the rows of the tokens added to the tokenizer
    (ids >= `num_old_tokens`) to the mean of rows `[0, num_old_tokens)`, for the input embeddings and (if untied)
    the output embeddings. A placeholder the tokenizer already had keeps its row.

    Done here rather than by `resize_token_embeddings(mean_resizing=True)`, whose rule (a sample around the mean)
    changed between transformers versions; the mean is computed in float32 and is the same everywhere.
    Some vocabularies (Qwen2) have spare rows past the tokenizer: new tokens may land there without resizing.
    """
    if vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    new_ids = sorted(i for i in token_ids.values() if i >= num_old_tokens)
    if not new_ids:
        return
    index = torch.tensor(new_ids)
    for embeddings in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
        weight = embeddings.weight
        mean = weight[:num_old_tokens].float().mean(dim=0)
        weight[index] = mean.to(weight.dtype)


@torch.no_grad()
def init_projector(projector: nn.Module, std: float, seed: int, dtype: torch.dtype) -> nn.Module:
    """Materialise a meta-device projector on CPU: Linear weights ~ N(0, std), biases 0 (transformers' default rule),
    drawn in float32 from a `torch.Generator` seeded with `seed`, then cast to `dtype`.

    A private generator keeps the global RNG untouched and makes the projector depend on `seed` only.
    """
    projector.to_empty(device="cpu")
    projector.to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    for module in projector.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
    return projector.to(dtype)


def check_image_processor(image_processor, image_size: int, path: str | Path) -> None:
    """The image processor must produce the encoder's input size, or every image would give the wrong token count."""
    from PIL import Image

    pixel_values = image_processor(Image.new("RGB", (2 * image_size, image_size)), return_tensors="pt")["pixel_values"]
    if tuple(pixel_values.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"The image processor saved with `{path}` makes {tuple(pixel_values.shape[-2:])} images but the vision "
            f"tower expects {image_size}x{image_size}. Fix its `size`/`crop_size` in preprocessor_config.json."
        )


def text_init_std(text_config: PreTrainedConfig) -> float:
    return float(getattr(text_config, "initializer_range", 0.02))


def assert_materialised(model: nn.Module) -> None:
    """Every tensor of an assembled model must be real: a leftover meta tensor means a part was not loaded."""
    meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"Internal error: {len(meta)} tensor(s) were never loaded, e.g. `{meta[0]}`.")


def attach_language_model(
    model: PreTrainedModel,
    language_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_old_tokens: int,
    token_ids: dict[str, int],
    placeholder_ids: list[int],
    dtype: torch.dtype,
) -> None:
    """Move the loaded language model into a composite model assembled on the meta device, then grow and
    mean-initialise the embeddings for the added tokens, record the pad id, and check nothing is left on meta.

    The generation config is the language model's (its EOS ids, sampling defaults), with the media placeholders
    suppressed: a generated placeholder would be a media slot with no media behind it.
    """
    model.model.language_model = language_model.base_model
    model.lm_head = language_model.get_output_embeddings()
    generation_config = copy.deepcopy(language_model.generation_config)
    suppressed = set(generation_config.suppress_tokens or []) | {i for i in placeholder_ids if i >= 0}
    generation_config.suppress_tokens = sorted(suppressed)
    model.generation_config = generation_config
    resize_with_mean_init(model, num_old_tokens, token_ids, len(tokenizer))
    set_pad_token_id(model, tokenizer.pad_token_id)
    model.config.dtype = dtype
    assert_materialised(model)
    model.eval()


def set_pad_token_id(model: PreTrainedModel, pad_token_id: int) -> None:
    """Record the pad id on the composite config, the text config and the generation config."""
    for config in (model.config, model.config.get_text_config()):
        config.pad_token_id = pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = pad_token_id


@dataclass
class Parts:
    """The pretrained parts of a build, loaded in one dtype, with the placeholder tokens added to the tokenizer."""

    language_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    token_ids: dict[str, int]
    num_old_tokens: int
    towers: dict[Modality, PreTrainedModel] = field(default_factory=dict)
    media_processors: dict[Modality, object] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype


def load_parts(
    language_model_path: str | Path,
    encoder_paths: dict[Modality, str | Path | None],
    dtype: str | torch.dtype = "auto",
    video: bool = False,
) -> Parts:
    """Steps 1-3 of every build: the language model and tokenizer, each encoder (`None`: none for that modality) with
    its image processor / feature extractor, and the `<image>` / `<audio>` (and `<pad>`) tokens; with `video`, also
    `<video>` when there is a vision encoder (videos are frames through it)."""
    logger.info("[1/5] Loading the language model and tokenizer")
    language_model = load_language_model(language_model_path, dtype)
    tokenizer = load_tokenizer(language_model_path)
    logger.info("[2/5] Loading the encoders, image processor and feature extractor")
    towers: dict[Modality, PreTrainedModel] = {}
    media_processors: dict[Modality, object] = {}
    for modality, path in encoder_paths.items():
        if path is None:
            continue
        towers[modality] = load_encoder(path, modality, dtype=language_model.dtype)
        if modality == "vision":
            media_processors[modality] = load_image_processor(path)
            check_image_processor(media_processors[modality], towers[modality].config.image_size, path)
        else:
            media_processors[modality] = load_feature_extractor(path)
    logger.info("[3/5] Adding placeholder tokens and assembling the model")
    placeholders = [{"vision": IMAGE_TOKEN, "audio": AUDIO_TOKEN}[modality] for modality in towers]
    if video and "vision" in towers:
        placeholders.append(VIDEO_TOKEN)  # last, so `<image>` and `<audio>` keep their ids (128256, 128257 on Llama-3)
    token_ids, num_old_tokens = add_placeholder_tokens(tokenizer, placeholders)
    return Parts(language_model, tokenizer, token_ids, num_old_tokens, towers, media_processors)


def assemble(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    parts: Parts,
    projectors: dict[Modality, tuple[str, int]],
) -> PreTrainedModel:
    """Build `model_class(config)` on the meta device and move the loaded parts in: the language model is never
    copied. Each tower goes to `model.model.<modality>_tower`; `projectors` maps a modality to the name of its
    projector under `model.model` and the seed of its initialisation. `parts.language_model` is consumed."""
    with torch.device("meta"):
        model = model_class(config)
    std = text_init_std(config.text_config)
    for modality, tower in parts.towers.items():
        setattr(model.model, f"{modality}_tower", tower)
        name, seed = projectors[modality]
        init_projector(getattr(model.model, name), std, seed, parts.dtype)
    placeholder_ids = [i for token, i in parts.token_ids.items() if token != PAD_TOKEN]
    attach_language_model(
        model, parts.language_model, parts.tokenizer, parts.num_old_tokens, parts.token_ids, placeholder_ids,
        parts.dtype,
    )  # fmt: skip
    return model
