"""Lock-step training for sharded data parallelism: every rank runs the same encoder calls every step.

Under DeepSpeed ZeRO-3 (and FSDP) a module's parameters are gathered from every rank each time it runs, so every
rank must run the same modules, the same number of times, in the same order, or the gathers of a rank whose batch
lacks a modality never meet those of the others and training hangs (DDP without `find_unused_parameters` fails the
same way on a projector that got no gradient). A LlamaVisionAudio batch decides which encoders run, so
`install_lockstep(model)` adds, with public torch hooks on the model's own modules:

- one call per modality slot (image, audio, video, then any a subclass adds: the model's `modalities` table, in its order) every training forward: a modality the batch
  lacks runs its feature getter on the modality table's dummy (`any2text.modalities.Modality.dummy`: one blank image
  / frame, silent "longer" audio clips; a new modality brings its own) right where its real call would have been,
  and the result joins `inputs_embeds` times zero, so the loss and every gradient are unchanged. Image and video share the vision tower and its projector: they are two calls of one tower, and each
  tower runs as many times as it serves modalities, whatever the batch holds;
- CLAP's fusion branch on every audio call: CLAP runs its fusion modules only for clips flagged `is_longer`, so a
  call with none gets silent long clips appended (two when CLAP trains: its fusion BatchNorm needs more than one),
  and the tower's outputs are cut back to the real clips.

The model (shipped as remote code) knows nothing of this; the training set-up (`build_stage`) installs it. Only the
model's training mode activates it: evaluation and generation run the plain model.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.utils import logging

from ..modalities import MODALITIES as MODALITY_TABLE
from ..models.llama_vision_audio import LlamaVisionAudioModel
from ..models.llama_vision_audio.modeling_llama_vision_audio import Modality

logger = logging.get_logger(__name__)

_INSTALLED: weakref.WeakKeyDictionary[nn.Module, list[RemovableHandle]] = weakref.WeakKeyDictionary()


@dataclass
class _Step:
    """One training forward: the modalities it encodes for real (in order) and the slots still to run."""

    real: list[Modality] = field(default_factory=list)
    pending: list[Modality] = field(default_factory=list)
    tower_calls: dict[str, int] = field(default_factory=dict)
    zero: torch.Tensor | float = 0.0
    in_dummy: bool = False
    grad_enabled: bool = True


class _Lockstep:
    def __init__(self, model: LlamaVisionAudioModel):
        self.model = model
        self.slots = [modality for modality in model.modalities if model.has_modality(modality)]
        self.signature = inspect.signature(model.forward)
        self.step: _Step | None = None
        self.extra_clips: list[int] = []

    # --- modality slots -------------------------------------------------------------------------------------------

    def start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Base model pre-hook: which modalities this forward encodes, hence which slots need a dummy."""
        if not module.training:
            self.step = None
            return
        inputs = self.signature.bind_partial(*args, **kwargs).arguments
        inputs = {**inputs.pop("kwargs", {}), **inputs}  # an added modality's inputs come as keyword arguments
        real = [modality for modality in self.slots if modality.given(inputs)]
        self.step = _Step(real=real, pending=list(self.slots), grad_enabled=torch.is_grad_enabled())

    def before_tower(self, tower: str):
        def hook(module: nn.Module, args: tuple) -> None:
            step = self.step
            if step is None or step.in_dummy:
                return
            # The n-th call of a tower is its n-th modality with inputs: the model encodes them in table order.
            index = step.tower_calls.get(tower, 0)
            step.tower_calls[tower] = index + 1
            serving = [modality for modality in step.real if modality.tower == tower]
            if index >= len(serving):
                return  # a call we do not know of (e.g. the user's own): nothing to line up
            self._run_dummies_before(step, serving[index])

        return hook

    def before_language_model(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Language model pre-hook: the slots not run yet, then their zero joins `inputs_embeds`."""
        step, self.step = self.step, None
        if step is None:
            return None
        self._run_dummies_before(step, None)
        if not torch.is_tensor(step.zero) or "inputs_embeds" not in kwargs:
            return None
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"] + step.zero.to(kwargs["inputs_embeds"].dtype)
        return args, kwargs

    def _run_dummies_before(self, step: _Step, modality: Modality | None) -> None:
        """Run the dummy of every pending slot before `modality` (all of them for `None`); `modality` is then done."""
        while step.pending:
            slot = step.pending.pop(0)
            if slot is modality:
                return
            if slot in step.real:
                continue  # ran (or will run) for real: not ours to replace
            step.in_dummy = True
            # The forward's own grad mode: a dummy that runs inside a frozen tower's call (its pre-hook) would
            # otherwise build no graph, and its projector would miss the backward (and ZeRO-3's gathers there).
            try:
                with torch.set_grad_enabled(step.grad_enabled):
                    features = getattr(self.model, slot.feature_getter)(*self._dummy_inputs(slot), return_dict=True)
                    step.zero = step.zero + features.pooler_output.sum() * 0.0
            finally:
                step.in_dummy = False

    def _dummy_inputs(self, modality: Modality) -> tuple[torch.Tensor, ...]:
        """The modality table's zero-contribution dummy (`any2text.modalities.Modality.dummy`) for this model."""
        record = MODALITY_TABLE.get(modality.name)
        if record is None or record.dummy is None:
            raise ValueError(
                f"No zero-contribution dummy for the `{modality.name}` modality: give its record in "
                "`any2text.modalities` a `dummy` (see `register_modality`)."
            )
        return record.dummy(self.model)

    # --- CLAP's fusion branch -------------------------------------------------------------------------------------

    def _long_clips_needed(self) -> int:
        # A trainable CLAP is in train mode, where its fusion BatchNorm needs more than one long clip.
        return 2 if self.model.audio_tower.training else 1

    def before_audio_tower(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Append silent clips flagged "longer" when too few clips are, so CLAP's fusion branch runs every call."""
        # `ClapAudioModel.forward(input_features, is_longer, ...)`: its first two arguments, as keywords from here on.
        inputs = {**kwargs, **dict(zip(("input_features", "is_longer"), args))}
        args = args[2:]
        input_features, is_longer = inputs.get("input_features"), inputs.get("is_longer")
        extra = 0
        if self.model.training and input_features is not None:
            if is_longer is None:
                is_longer = torch.zeros(input_features.shape[0], 1, dtype=torch.bool, device=input_features.device)
            extra = max(0, self._long_clips_needed() - int(is_longer.sum()))
        self.extra_clips.append(extra)
        if not extra:
            return None
        silent = torch.zeros_like(input_features[:1]).expand(extra, *input_features.shape[1:])
        flags = torch.ones(extra, *is_longer.shape[1:], dtype=is_longer.dtype, device=is_longer.device)
        inputs["input_features"] = torch.cat([input_features, silent])
        inputs["is_longer"] = torch.cat([is_longer, flags])
        return args, inputs

    def after_audio_tower(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """The tower's outputs of the real clips only; the silent clips' rows are dropped (their gradient is zero)."""
        extra = self.extra_clips.pop() if self.extra_clips else 0
        if not extra:
            return None
        num_clips = kwargs["input_features"].shape[0] - extra
        for key, value in output.items():
            output[key] = _first_rows(value, num_clips)
        return output


def _first_rows(value: Any, rows: int) -> Any:
    if torch.is_tensor(value):
        return value[:rows]
    if isinstance(value, tuple):
        return tuple(_first_rows(item, rows) for item in value)
    return value


def install_lockstep(model: nn.Module) -> list[RemovableHandle]:
    """Install the training lock-step on every LlamaVisionAudio model inside `model` (a wrapper, a PEFT model...).

    Idempotent. Returns the hooks' handles (`handle.remove()` uninstalls); none for a model of another type (a stock
    Llava gets a blank image in its batches from the collator instead, see `MultimodalCollator(ensure_image=...)`).
    Install it before DeepSpeed wraps the model, so that a dummy runs before ZeRO-3 gathers the next module.
    """
    handles = []
    for module in model.modules():
        if not isinstance(module, LlamaVisionAudioModel) or module in _INSTALLED:
            continue
        lockstep = _Lockstep(module)
        added = [
            module.register_forward_pre_hook(lockstep.start, with_kwargs=True),
            module.language_model.register_forward_pre_hook(lockstep.before_language_model, with_kwargs=True),
        ]
        for tower in sorted({modality.tower for modality in lockstep.slots}):
            added.append(getattr(module, tower).register_forward_pre_hook(lockstep.before_tower(tower)))
        if module.audio_tower is not None and getattr(module.config.audio_config, "enable_fusion", False):
            added.append(module.audio_tower.register_forward_pre_hook(lockstep.before_audio_tower, with_kwargs=True))
            added.append(module.audio_tower.register_forward_hook(lockstep.after_audio_tower, with_kwargs=True))
        _INSTALLED[module] = added
        handles.extend(added)
        logger.info(f"Training lock-step installed: every step runs {[m.name for m in lockstep.slots]} once each.")
    return handles


__all__ = ["install_lockstep"]
