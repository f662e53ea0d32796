"""The model a training stage starts from: loaded through the Auto classes, then frozen / adapted as the stage says."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..modalities import MODALITIES
from .arguments import LoraArguments, ModelArguments
from .freezing import apply_freezing, find_components, parameter_table
from .lora import apply_lora
from .throughput import apply_liger_kernel
from .workarounds import keep_saved_keys_after_zero3_load
from .zero3 import install_lockstep

logger = logging.get_logger(__name__)


def load_model_and_processor(model_args: ModelArguments, load_model: Callable[..., torch.nn.Module] | None = None):
    """The checkpoint through the Auto classes (LlamaVisionAudio and stock Llava alike) and its processor.

    `load_model(model_name_or_path, dtype=..., attn_implementation=...)` loads the model (a stage's own, e.g. the
    reward model's); default: `AutoModelForImageTextToText.from_pretrained`.
    """
    kwargs = {"dtype": model_args.dtype}  # `from_pretrained` takes the dtype's name ("bfloat16", "auto")
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    # `from_pretrained` (not a bare constructor) so that DeepSpeed ZeRO-3 partitions the weights while loading.
    # (Importing `any2text`, which this module's package does, registered LlamaVisionAudio with the Auto classes.)
    load_model = AutoModelForImageTextToText.from_pretrained if load_model is None else load_model
    model = load_model(model_args.model_name_or_path, **kwargs)
    processor = AutoProcessor.from_pretrained(model_args.processor_name_or_path or model_args.model_name_or_path)
    # Every rank runs every encoder every training step (policy and DPO reference alike), installed before DeepSpeed
    # adds its own hooks (training/zero3.py).
    install_lockstep(model)
    if is_deepspeed_zero3_enabled():
        mark_zero3_leaf_towers(model)
        keep_saved_keys_after_zero3_load(model)
    return model, processor


def mark_zero3_leaf_towers(model: torch.nn.Module) -> list[str]:
    """Under ZeRO-3, make each encoder one DeepSpeed "leaf": its parameters are gathered together when it runs.

    ZeRO-3 gathers parameters module by module as they execute, and every rank must issue the same gathers. An encoder
    whose submodules run depending on the data (CLAP's fusion branch runs only for clips marked "longer") would
    otherwise make ranks diverge and deadlock (or crash gloo). LlamaVisionAudio already runs that branch every step;
    as leaves, any encoder is gathered whole whatever runs inside, with fewer hooks. Returns the towers marked.
    """
    from deepspeed.utils import set_z3_leaf_modules

    towers = find_components(model)
    marked = [name for name in dict.fromkeys(m.tower for m in MODALITIES.values()) if name in towers]
    for name in marked:
        set_z3_leaf_modules(towers[name].modules[0], [type(towers[name].modules[0])])
    return marked


def prepare_model(
    model: torch.nn.Module, model_args: ModelArguments, lora_args: LoraArguments, training_args: TrainingArguments
) -> torch.nn.Module:
    """The stage's freezing policy, Liger kernels, gradient checkpointing's input grads and LoRA; returns the model."""
    apply_freezing(model, model_args, use_peft=lora_args.use_peft)
    apply_liger_kernel(model, training_args)  # --use_liger_kernel, on the language model (training/throughput.py)
    if training_args.gradient_checkpointing:
        # Frozen input embeddings give checkpointed blocks inputs without grad; this keeps gradients flowing.
        model.enable_input_require_grads()
    if lora_args.use_peft:
        model = apply_lora(model, lora_args, model_args)
    logger.info(f"Parameters per component:\n{parameter_table(model)}")
    return model


__all__ = ["load_model_and_processor", "mark_zero3_leaf_towers", "prepare_model"]
