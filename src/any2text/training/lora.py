"""LoRA on the language model only; projectors (and any unfrozen tower) train fully and are saved with the adapter.

peft matches a *list* of `target_modules` by name suffix, so a bare `["q_proj", "v_proj"]` would also adapt CLIP's and
CLAP's attention layers. The target here is one regex anchored on the language model's module path
(`model\\.language_model\\..*\\.(q_proj|v_proj)`), so nothing inside an encoder or projector can match.
"""

from __future__ import annotations

import re

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.utils import logging

from .arguments import LoraArguments, ModelArguments
from .freezing import find_components, frozen_components

logger = logging.get_logger(__name__)


def lora_target_regex(model: nn.Module, target_modules: list[str] | None = None) -> str:
    """A regex (peft `fullmatch`es it) selecting linear layers of the language model only.

    Args:
        model: the model, before peft wraps it.
        target_modules: linear layer names (`q_proj`, `v_proj`...); `None` or `["all-linear"]` means every linear layer
            of the language model (`lm_head` is outside it and never adapted).

    Raises:
        ValueError: a requested name matches no linear layer of the language model.
    """
    prefix = find_components(model)["language_model"].path
    language_model = model.get_submodule(prefix)
    linear_names = {
        name.rsplit(".", 1)[-1] for name, module in language_model.named_modules() if isinstance(module, nn.Linear)
    }
    if not target_modules or [name.lower() for name in target_modules] == ["all-linear"]:
        names = sorted(linear_names)
    else:
        names = sorted(dict.fromkeys(target_modules))
        unknown = [name for name in names if name not in linear_names]
        if unknown:
            raise ValueError(
                f"`--lora_target_modules` {unknown} match no linear layer of the language model; its linear layers "
                f"are {sorted(linear_names)}."
            )
    if not names:
        raise ValueError("The language model has no `nn.Linear` layer for LoRA to adapt.")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(re.escape(name) for name in names)})"


def apply_lora(model: nn.Module, lora_args: LoraArguments, model_args: ModelArguments) -> PeftModel:
    """Wrap `model` with LoRA on its language model; unfrozen projectors / towers become `modules_to_save`.

    The freezing flags must already be applied (`apply_freezing(..., use_peft=True)`); peft freezes everything that is
    neither an adapter nor a module to save, which is the policy the flags describe.
    """
    if model_args.freeze_language_model:
        raise ValueError(
            "`--use_peft True` trains the language model through LoRA, but `--freeze_language_model True` freezes it. "
            "Pass `--freeze_language_model False` with `--use_peft True` (stage 2), or drop `--use_peft`."
        )
    components = find_components(model)
    frozen = frozen_components(model_args, use_peft=True)
    modules_to_save = [
        component.path for name, component in components.items() if name != "language_model" and not frozen[name]
    ]
    config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=lora_target_regex(model, lora_args.lora_target_modules),
        modules_to_save=modules_to_save or None,
        use_rslora=lora_args.use_rslora,
        use_dora=lora_args.use_dora,
    )
    logger.info(f"LoRA on `{config.target_modules}`; trained fully and saved with the adapter: {modules_to_save}.")
    return get_peft_model(model, config)


__all__ = ["apply_lora", "lora_target_regex"]
