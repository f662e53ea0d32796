"""Workarounds of transformers / DeepSpeed behaviour, each in one named function with the upstream reference.

When upstream fixes one, delete the function and its call; nothing else depends on it.
"""

from __future__ import annotations

import os

import torch
from transformers import TrainingArguments
from transformers.utils import logging

from .parsing import config_file, read_config

logger = logging.get_logger(__name__)


def keep_saved_keys_after_zero3_load(model: torch.nn.Module) -> None:
    """Under ZeRO-3, forget the weight conversions `from_pretrained` recorded, so `save_pretrained` writes our keys.

    transformers 5.24's ZeRO-3 loading path records every conversion it knows as applied, the legacy renamings of
    Llava-style checkpoints included; saving then "reverts" them and writes `model.language_model.model.*` keys that
    load back as missing weights. Without a record, saving reverts only the model's standard mapping, exactly as
    after a non-ZeRO-3 load. There is no public switch for it. Upstream: the ZeRO-3 conversion path of
    `transformers/integrations/deepspeed.py` (https://github.com/huggingface/transformers/pull/43964 fixed its
    loading side; the saving side is not reported yet). Checked by `tests/test_deepspeed.py` (ZeRO-3 save, reload).
    """
    if getattr(model, "_weight_conversions", None) is not None:
        logger.info("ZeRO-3: dropping the load-time weight-conversion record so the saved keys stay ours.")
        model._weight_conversions = None


def init_cpu_deepspeed(argv: list[str]) -> None:
    """On CPU, make DeepSpeed's process group with gloo before `TrainingArguments` is built.

    `TrainingArguments` sets up distributed state while it is parsed, and DeepSpeed's CPU accelerator would pick its
    own backend (oneCCL), which is not installed; gloo is its supported alternative since DeepSpeed 0.14.1
    (https://github.com/deepspeedai/DeepSpeed/issues/5313). Only under a launcher (`LOCAL_RANK` set): a bare `python`
    would make DeepSpeed look for MPI, so launch even one CPU process with `torchrun`.
    """
    if torch.cuda.is_available() or "LOCAL_RANK" not in os.environ:
        return
    path, _ = config_file(argv)
    if path is not None:
        wants_deepspeed = bool(read_config(path).get("deepspeed"))
    else:
        wants_deepspeed = any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
    if wants_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def check_cpu_deepspeed(training_args: TrainingArguments) -> None:
    """DeepSpeed on its CPU accelerator needs `--use_cpu True`: say so before its batch-size check fails obscurely."""
    if not training_args.deepspeed or training_args.use_cpu:
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        raise ValueError(
            "DeepSpeed runs on its CPU accelerator here, which needs `--use_cpu True` (otherwise the Trainer counts one "
            "process and DeepSpeed's batch-size check fails). Add `--use_cpu True`, and launch with `torchrun`."
        )


__all__ = ["check_cpu_deepspeed", "init_cpu_deepspeed", "keep_saved_keys_after_zero3_load"]
