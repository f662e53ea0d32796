"""Stages as a freezing policy: which components of the model train, and a table of what does.

Components are found by the module names transformers' multimodal models use, so stock Llava and LlamaVisionAudio
checkpoints are handled alike: the towers and projectors the modality table names (`vision_tower`, `audio_tower`,
`vision_projector` (Llava: `multi_modal_projector`), `audio_projector`; video shares the vision ones), and
`language_model` (plus `lm_head`, which belongs to it).

Embedding rows of the added tokens (`<image>`, `<audio>`, `<pad>`): they are part of the language model's embedding
matrix and `lm_head`, so they follow `freeze_language_model`.

- Stage 1 (language model frozen): they never change. That is harmless: at `<image>` / `<audio>` positions the
  input embedding is replaced by the projected media features before the language model sees it, and `<pad>` is
  masked out of attention and of the loss.
- Stage 2 (language model trained fully): the input rows of `<image>` / `<audio>` still get no gradient (their
  embeddings are overwritten), so they stay as built; their `lm_head` rows do train, and since those tokens are never
  a label, training lowers their logits, i.e. teaches the model never to emit a placeholder.
- LoRA: the embeddings and `lm_head` are not adapted and stay frozen, so none of these rows change.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.utils import logging

from ..modalities import MODALITIES
from .arguments import ModelArguments

logger = logging.get_logger(__name__)

# Stock Llava's name for its (vision) projector.
_ALIASES = {"vision_projector": ("multi_modal_projector",)}


def component_attributes() -> dict[str, tuple[str, ...]]:
    """Component -> attribute names on the base model (the `model` inside `*ForConditionalGeneration`), first found
    wins: every tower and projector of the modality table (each once), then the language model."""
    names = [name for modality in MODALITIES.values() for name in (modality.tower, modality.projector)]
    attributes = {name: (name, *_ALIASES.get(name, ())) for name in dict.fromkeys(names)}
    return {**attributes, "language_model": ("language_model",)}


@dataclass
class Component:
    name: str
    path: str  # dotted module path from the top-level model, e.g. `model.vision_projector`
    modules: list[nn.Module]


def find_components(model: nn.Module) -> dict[str, Component]:
    """The model's components that exist, by name. Works on a plain model and on a peft-wrapped one."""
    if hasattr(model, "get_base_model"):  # peft: resolve on the wrapped model, whose module tree is unchanged
        model = model.get_base_model()
    base_name = next(
        (name for name in ("model", getattr(model, "base_model_prefix", "")) if name and hasattr(model, name)), ""
    )
    base = getattr(model, base_name) if base_name else model
    components: dict[str, Component] = {}
    for component, attributes in component_attributes().items():
        for attribute in attributes:
            module = getattr(base, attribute, None)
            if isinstance(module, nn.Module):
                path = f"{base_name}.{attribute}" if base_name else attribute
                components[component] = Component(component, path, [module])
                break
    if "language_model" not in components:
        raise ValueError(
            f"`{type(model).__name__}` has no `language_model` module; any2text trains models built like "
            "LlamaVisionAudio / Llava (`model.vision_tower`, `model.language_model`, `lm_head`...)."
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module):
        components["language_model"].modules.append(head)
    if isinstance(getattr(model, "score", None), nn.Module):  # a reward model's head: new, so always trained
        components["score"] = Component("score", "score", [model.score])
    return components


def frozen_components(model_args: ModelArguments, use_peft: bool = False) -> dict[str, bool]:
    """Component name -> frozen, from the `--freeze_*` flags (`ModelArguments.is_frozen`). With LoRA the language
    model's own weights are frozen; a reward model's `score` head is new, so always trained."""
    frozen = {name: model_args.is_frozen(name) for name in component_attributes() if name != "language_model"}
    return {**frozen, "language_model": model_args.freeze_language_model or use_peft, "score": False}


def apply_freezing(model: nn.Module, model_args: ModelArguments, use_peft: bool = False) -> dict[str, Component]:
    """Set `requires_grad` per component from the flags; returns the components found.

    Parameters outside every component (none in LlamaVisionAudio or Llava) are frozen, so nothing trains unasked.
    """
    components = find_components(model)
    frozen = frozen_components(model_args, use_peft)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, component in components.items():
        for module in component.modules:
            module.requires_grad_(not frozen[name])
    if not any(parameter.requires_grad for parameter in model.parameters()) and not use_peft:
        raise ValueError(
            "Every parameter is frozen, so there is nothing to train. Unfreeze something: stage 1 is "
            "`--freeze_mm_proj False`, stage 2 adds `--freeze_language_model False` (or `--use_peft True`)."
        )
    return components


def parameter_table(model: nn.Module) -> str:
    """A table of trainable / total parameters per component (LoRA weights count under the language model)."""
    components = find_components(model)
    seen: set[int] = set()
    rows = []
    for name, component in components.items():
        params = {id(p): p for module in component.modules for p in module.parameters()}
        # peft's modules_to_save keep a frozen `original_module` beside the trained copy; count the copy only.
        originals = {
            id(p) for module in component.modules for n, p in module.named_parameters() if "original_module." in n
        }
        seen.update(originals)
        params = {key: p for key, p in params.items() if key not in seen}
        seen.update(params)
        rows.append((name, _numel(p for p in params.values() if p.requires_grad), _numel(params.values())))
    others = [p for n, p in model.named_parameters() if id(p) not in seen and "original_module." not in n]
    if others:
        rows.append(("other", _numel(p for p in others if p.requires_grad), _numel(others)))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'component':<{width}}  {'trainable':>14}  {'total':>14}  {'%':>6}"]
    for name, trainable, total in rows:
        share = 100.0 * trainable / total if total else 0.0
        lines.append(f"{name:<{width}}  {trainable:>14,}  {total:>14,}  {share:>6.2f}")
    return "\n".join(lines)


def _numel(params) -> int:
    # Under DeepSpeed ZeRO-3 parameters are partitioned; `ds_numel` is the full size.
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


__all__ = ["Component", "apply_freezing", "find_components", "frozen_components", "parameter_table"]
