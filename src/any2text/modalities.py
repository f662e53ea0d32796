"""The modality table: every medium any2text knows, described once; every layer of the data and training path reads it.

One frozen `Modality` record per medium says how a row names it, how a message holds it, how it is decoded, what the
processor takes and returns for it, which token marks it and which modules of the model encode it::

    >>> from any2text.modalities import MODALITIES
    >>> [(m.name, m.placeholder, m.processor_kwarg, m.output_keys) for m in MODALITIES.values()]  # doctest: +ELLIPSIS
    [('image', '<image>', 'images', ('pixel_values',)), ('audio', '<audio>', 'audio', ...), ('video', ...)]

Templates, media loading, dataset loading, the collators, packing, inference, freezing and the stage code iterate
over `MODALITIES` (through `any2text.data.messages` for conversations), so adding a modality is a record here
(`register_modality`), a decoder, the processor's `replace_<name>_token` and the model's feature getter.

The shipped model folder cannot import this package (it is remote code), so the model keeps its own small table of
its side (placeholders, token ids, inputs, towers, feature getters); the shipped records here take those fields from
it, so they are written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image


@dataclass(frozen=True)
class Modality:
    """One medium, as every layer sees it.

    Args:
        name: `"image"`, `"audio"`, `"video"`; also the message part's key (`{"type": name, name: ref}`) and the
            processor's placeholder attribute (`<name>_token`).
        placeholder: the text placeholder in rows and chat templates (`"<image>"`).
        token_id_attr: the config (and processor) attribute holding the placeholder's token id (`"image_token_id"`).
        content_type: the message part type (`{"type": "image", ...}`).
        row_columns: the dataset columns holding the medium, several items first (`("images", "image")`).
        decoder: `decoder(ref, media_root=None, *, allow_outside_root=False, **options)` -> the decoded item (see
            `any2text.data.media`); `options` come from `decoder_options(processor)`, unknown ones are ignored.
        processor_kwarg: the processor's keyword for a list of decoded items (`"images"`).
        output_keys: the processor's outputs for the medium (`("pixel_values",)`); per item, concatenated along dim 0
            by the collators.
        token_type: the `mm_token_type_ids` value of its tokens (transformers': image 1, video 2, audio 3).
        tower: the encoder module's attribute on the base model (`"vision_tower"`).
        projector: the projector module's attribute on the base model (`"vision_projector"`).
        feature_getter: the model method turning `output_keys` into features (`"get_image_features"`).
        decoder_options: `processor -> {option: value}`, what the decoder needs from the processor (audio: the
            feature extractor's `sampling_rate`; video: `num_frames` / `fps`).
        processor_options: decoder options the processor is also called with (audio: `sampling_rate`, so the
            processor never has to assume the rate of the audio it is given).
        processor_kwargs: fixed keywords of a processor call with decoded items (video: `do_sample_frames=False`,
            the decoder already sampled the frames).
        blank: `options -> item`, a blank decoded item of one unit (to measure the tokens a unit becomes, or to run a
            tower).
        units: `(ref, media_root, allow_outside_root, **options) -> int`, how many units (video: frames) an item
            becomes, read without decoding media; `None`: an item is one unit.
        folders: whether a folder is a valid reference (a video given as a folder of frame images).
        check: `(processor, items) -> None`, training-side checks of decoded items (raises `ValueError`: a bad row).
        dummy: `base_model -> tuple of tensors`, the smallest inputs of `feature_getter` (positional, in its order)
            that run the modality's tower and projector: the ZeRO-3 lock-step (`any2text.training.zero3`) runs it
            when a batch lacks the modality and multiplies its features by zero. `None`: no lock-step slot (the
            lock-step raises if the model has the modality).
    """

    name: str
    placeholder: str
    token_id_attr: str
    content_type: str
    row_columns: tuple[str, ...]
    decoder: Callable[..., Any]
    processor_kwarg: str
    output_keys: tuple[str, ...]
    token_type: int
    tower: str
    projector: str
    feature_getter: str
    decoder_options: Callable[[Any], dict[str, Any]] = field(default=lambda processor: {})
    processor_options: tuple[str, ...] = ()
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    blank: Callable[[Mapping[str, Any]], Any] | None = None
    units: Callable[..., int] | None = None
    folders: bool = False
    check: Callable[[Any, list], None] | None = None
    dummy: Callable[[Any], tuple] | None = None

    @property
    def token_attr(self) -> str:
        """The processor attribute holding the placeholder (`image_token`), as transformers' processors name it."""
        return f"{self.name}_token"

    def processor_token(self, processor: Any) -> str | None:
        """The processor's placeholder for this medium; `None` when the processor does not take it."""
        return getattr(processor, self.token_attr, None)


def _sampling_rate(processor: Any) -> dict[str, Any]:
    rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", None)
    return {"sampling_rate": rate} if rate is not None else {}


def _frame_sampling(processor: Any) -> dict[str, Any]:
    return {key: getattr(processor, key) for key in ("num_frames", "fps") if getattr(processor, key, None) is not None}


def _blank_frame(options: Mapping[str, Any]) -> np.ndarray:
    return np.zeros((1, 32, 32, 3), dtype=np.uint8)


def _blank_pixels(model: Any) -> tuple:
    """One black image (or frame) at the vision tower's size: `pixel_values` / `pixel_values_videos` `(1, C, H, W)`."""
    import torch

    vision = model.config.vision_config
    size, channels = vision.image_size, getattr(vision, "num_channels", 3)
    return (torch.zeros(1, channels, size, size, device=model.device, dtype=model.vision_tower.dtype),)


def _silent_long_clips(model: Any) -> tuple:
    """Silent CLAP clips flagged `is_longer` (so the fusion branch runs too): `(input_features, is_longer)`; two when
    the tower trains (its fusion BatchNorm needs more than one), else one."""
    import torch

    audio = model.config.audio_config
    channels = 4 if getattr(audio, "enable_fusion", False) else 1
    frames = audio.spec_size * (audio.spec_size // audio.num_mel_bins)  # HTSAT folds time into spec_size rows
    clips = 2 if model.audio_tower.training else 1
    features = torch.zeros(
        clips, channels, frames, audio.num_mel_bins, device=model.device, dtype=model.audio_tower.dtype
    )
    return features, torch.ones(clips, 1, dtype=torch.bool, device=model.device)


MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Add `modality` to the table (or replace the record of the same name); returns it."""
    clash = [m.name for m in MODALITIES.values() if m.name != modality.name and m.placeholder == modality.placeholder]
    if clash:
        raise ValueError(f"Modality `{modality.name}` uses the placeholder `{modality.placeholder}` of `{clash[0]}`.")
    MODALITIES[modality.name] = modality
    return modality


def unregister_modality(name: str) -> None:
    """Remove a modality from the table (tests that add a toy one)."""
    MODALITIES.pop(name, None)


def by_content_type(content_type: Any) -> Modality | None:
    """The modality of a message part type (`"image"`), `None` for text and unknown types."""
    for modality in MODALITIES.values():
        if modality.content_type == content_type:
            return modality
    return None


def get_modality(name: str) -> Modality:
    """The record of modality `name`.

    Raises:
        ValueError: no such modality; the message lists the known ones.
    """
    if name not in MODALITIES:
        raise ValueError(f"Unknown modality `{name}`; known: {', '.join(f'`{m}`' for m in MODALITIES)}.")
    return MODALITIES[name]


def media_options(processor: Any) -> dict[str, Any]:
    """Every decoder option the processor sets (`sampling_rate`, `num_frames`, `fps`), for datasets and collators."""
    options: dict[str, Any] = {}
    for modality in MODALITIES.values():
        options.update(modality.decoder_options(processor))
    return options


def _with_model_part(name: str, **data_side: Any) -> Modality:
    """The record of `name`: its data-side fields as given, its model-side facts (placeholder, token id attribute,
    `mm_token_type_ids` value, processor outputs = the model's inputs, tower, projector, feature getter) read from the
    shipped model's own table, where they are written once (the model folder is remote code and cannot import this)."""
    from .models.llama_vision_audio.modeling_llama_vision_audio import MODALITIES as MODEL_MODALITIES

    part = next(m for m in MODEL_MODALITIES if m.name == name)
    return Modality(
        name=name,
        placeholder=part.placeholder,
        token_id_attr=part.token_id_attr,
        output_keys=part.input_keys,
        token_type=part.token_type,
        tower=part.tower,
        projector=part.projector,
        feature_getter=part.feature_getter,
        **data_side,
    )


# The decoders live in the data layer, which reads this table: imported after the table's names exist.
from .data import media  # noqa: E402

register_modality(
    _with_model_part(
        "image",
        content_type="image",
        row_columns=("images", "image"),
        decoder=media.decode_image,
        processor_kwarg="images",
        blank=lambda options: PIL.Image.new("RGB", (32, 32)),
        dummy=_blank_pixels,
    )
)
register_modality(
    _with_model_part(
        "audio",
        content_type="audio",
        row_columns=("audios", "audio"),
        decoder=media.decode_audio,
        processor_kwarg="audio",
        decoder_options=_sampling_rate,
        processor_options=("sampling_rate",),
        blank=lambda options: np.zeros(options["sampling_rate"], dtype=np.float32),
        check=media.check_clip_lengths,
        dummy=_silent_long_clips,
    )
)
register_modality(
    _with_model_part(
        "video",
        content_type="video",
        row_columns=("videos", "video"),
        decoder=media.load_video,
        processor_kwarg="videos",
        decoder_options=_frame_sampling,
        processor_kwargs={"do_sample_frames": False},
        blank=_blank_frame,
        units=media.video_num_frames,
        folders=True,
        dummy=_blank_pixels,
    )
)

__all__ = [
    "MODALITIES",
    "Modality",
    "by_content_type",
    "get_modality",
    "media_options",
    "register_modality",
    "unregister_modality",
]
