"""Merge a LoRA stage-2 output (adapter + fully trained projectors) into a plain checkpoint.

    any2text merge-lora --model out/stage2-lora --output out/stage2-merged

The result loads with `AutoModelForImageTextToText.from_pretrained` / `AutoProcessor.from_pretrained` and needs
neither peft nor the adapter.
"""

from __future__ import annotations

import argparse
import os

from peft import PeftConfig, PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging

from ..cli import setup_logging

logger = logging.get_logger(__name__)


def merge_lora(model: str, output: str, base_model: str | None = None, dtype: str = "auto") -> str:
    """Load the base checkpoint, apply the adapter in `model`, merge it, and save model + processor to `output`.

    Args:
        model: a LoRA training output (`adapter_config.json`, `adapter_model.safetensors`, the processor).
        output: folder for the merged checkpoint.
        base_model: the checkpoint the adapter was trained on; defaults to the one recorded in `adapter_config.json`.
        dtype: dtype to merge and save in (`auto`: the base checkpoint's).

    Returns:
        `output`.
    """
    if not os.path.isfile(os.path.join(model, "adapter_config.json")):
        raise ValueError(
            f"`{model}` holds no `adapter_config.json`, so it is not a LoRA output; a full checkpoint needs no merge."
        )
    base = base_model or PeftConfig.from_pretrained(model).base_model_name_or_path
    if not base:
        raise ValueError(f"`{model}/adapter_config.json` does not name its base model; pass `--base_model`.")
    logger.info(f"Merging the adapter in `{model}` into `{base}`.")
    base_weights = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)  # the name ("bfloat16", "auto")
    merged = PeftModel.from_pretrained(base_weights, model).merge_and_unload()
    merged.save_pretrained(output)
    # The training run saved its processor beside the adapter; an adapter copied alone falls back to the base's.
    has_processor = any(
        os.path.isfile(os.path.join(model, name)) for name in ("processor_config.json", "preprocessor_config.json")
    )
    AutoProcessor.from_pretrained(model if has_processor else base).save_pretrained(output)
    return output


def make_merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="any2text merge-lora", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="LoRA training output folder (adapter + processor).")
    parser.add_argument("--output", required=True, help="Folder for the merged checkpoint.")
    parser.add_argument("--base_model", default=None, help="Base checkpoint; default: the adapter's recorded base.")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    return parser


def merge_lora_main(argv: list[str] | None = None) -> int:
    """`any2text merge-lora --model OUT --output MERGED [--base_model BASE] [--dtype auto]`."""
    args = make_merge_parser().parse_args(argv)
    setup_logging()
    merge_lora(args.model, args.output, base_model=args.base_model, dtype=args.dtype)
    return 0


__all__ = ["make_merge_parser", "merge_lora", "merge_lora_main"]
