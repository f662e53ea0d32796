"""Data layer: templates (row -> messages), walking messages for media, media loading, dataset loading and mixing."""

from .bad_rows import BadRowError, BadRowLog, TooManyBadRowsError
from .loading import (
    DatasetSpec,
    MultimodalDataset,
    default_media_root,
    load_spec,
    parse_dataset_specs,
)
from .media import image_to_rgb, load_audio, load_image, load_video, resample, resolve_path
from .messages import iter_media, map_media, media_refs, strip_media
from .preference import PreferenceCollator, PreferenceDataset, PreferenceMessages  # registers preference templates
from .templates import (
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
    "iter_media",
    "load_audio",
    "load_image",
    "load_spec",
    "load_video",
    "map_media",
    "media_refs",
    "parse_dataset_specs",
    "register_template",
    "resample",
    "resolve_path",
    "split_placeholders",
    "strip_media",
    "user_message",
]
