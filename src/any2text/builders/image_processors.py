"""CLIP's image processor for this machine, named explicitly so transformers never warns about falling back.

transformers 5's `CLIPImageProcessor` is the torchvision ("fast") backend; without torchvision, importing that name
falls back to `CLIPImageProcessorPil` with a warning, which every command then printed first. Both classes save the
same `preprocessor_config.json` (`"image_processor_type": "CLIPImageProcessor"`), and `AutoProcessor` /
`AutoImageProcessor` pick the backend when loading (torchvision where installed, else PIL) without a warning, so a
checkpoint built on one machine loads with the right backend on any other.
"""

from __future__ import annotations

from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import is_torchvision_available


def clip_image_processor_class() -> type[BaseImageProcessor]:
    """`CLIPImageProcessor` (torchvision backend) where torchvision is installed, else `CLIPImageProcessorPil`."""
    if is_torchvision_available():
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil


__all__ = ["clip_image_processor_class"]
