"""lmms-eval plug-in: evaluate any2text checkpoints with lmms-eval's own command and tasks, no fork.

    pip install "any2text[lmms-eval]"
    lmms-eval --model any2text --model_args pretrained=./ckpt,dtype=bfloat16 --tasks mme,clotho_aqa_val --batch_size 8

lmms-eval (>= 0.7) finds the model through the entry point `any2text = any2text.integrations.lmms_eval:model_manifest`
in the group `lmms_eval.models`. The classes (`Any2Text` for chat tasks, `Any2TextSimple` for `--force_simple`) are
imported from `.model` only when asked for, so importing this package (or `any2text`) never needs lmms-eval.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "any2text"
CHAT_CLASS_PATH = "any2text.integrations.lmms_eval.Any2Text"
SIMPLE_CLASS_PATH = "any2text.integrations.lmms_eval.Any2TextSimple"
_MODEL_CLASSES = ("Any2Text", "Any2TextSimple")


def model_manifest() -> Any:
    """The `lmms_eval.models.registry_v2.ModelManifest` of the `any2text` model (the entry point's payload)."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as error:
        raise ImportError(
            "The any2text lmms-eval model needs lmms-eval >= 0.7 (`ModelManifest`); install it with "
            '`pip install "any2text[lmms-eval]"`.'
        ) from error
    return ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH, simple_class_path=SIMPLE_CLASS_PATH)


def __getattr__(name: str) -> Any:
    if name in _MODEL_CLASSES:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHAT_CLASS_PATH", "MODEL_ID", "SIMPLE_CLASS_PATH", "model_manifest"]
