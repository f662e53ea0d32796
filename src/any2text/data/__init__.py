"""Data layer: templates (row -> messages), media loading, dataset loading and mixing."""

from .bad_rows import BadRowError, BadRowLog, TooManyBadRowsError
from .loading import (
    DatasetSpec,
    MultimodalDataset,
    default_media_root,
    load_spec,
    parse_dataset_specs,
)
from .media import image_to_rgb, load_audio, load_image, resample, resolve_path
from .preference import PreferenceCollator, PreferenceDataset, PreferenceMessages  # registers preference templates
from .templates import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    Template,
    assistant_message,
    available_templates,
    check_conversation,
    get_template,
    register_template,
    split_placeholders,
    user_message,
)

__all__ = [
    "AUDIO_PLACEHOLDER",
    "IMAGE_PLACEHOLDER",
    "BadRowError",
    "BadRowLog",
    "DatasetSpec",
    "MultimodalDataset",
    "PreferenceCollator",
    "PreferenceDataset",
    "PreferenceMessages",
    "Template",
    "TooManyBadRowsError",
    "assistant_message",
    "available_templates",
    "check_conversation",
    "default_media_root",
    "get_template",
    "image_to_rgb",
    "load_audio",
    "load_image",
    "load_spec",
    "parse_dataset_specs",
    "register_template",
    "resample",
    "resolve_path",
    "split_placeholders",
    "user_message",
]
