"""Data layer: templates (row -> messages), media loading, dataset loading and mixing."""

from .loading import (
    BadRowError,
    DatasetSpec,
    MultimodalDataset,
    default_media_root,
    load_spec,
    parse_dataset_specs,
)
from .media import load_audio, load_image, resample, resolve_path
from .preference import PreferenceCollator, PreferenceDataset, PreferenceMessages  # registers preference templates
from .templates import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    Template,
    assistant_message,
    available_templates,
    get_template,
    register_template,
    split_placeholders,
    user_message,
)

__all__ = [
    "AUDIO_PLACEHOLDER",
    "IMAGE_PLACEHOLDER",
    "BadRowError",
    "DatasetSpec",
    "MultimodalDataset",
    "PreferenceCollator",
    "PreferenceDataset",
    "PreferenceMessages",
    "Template",
    "assistant_message",
    "available_templates",
    "default_media_root",
    "get_template",
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
