"""Throughput switches of `any2text.train`: padding-free / packed batches, Liger kernels, and a data-rate report.

Kept apart from `train.py` so each switch is one call there:

- `prepare_packing` wraps the datasets and the collator for `--padding_free` / `--packing` (see `data/packing.py`);
- `apply_liger_kernel` puts Liger's Triton kernels on the language model instance for `--use_liger_kernel`;
- `ThroughputCallback` logs data loader samples/s against training-step samples/s, so a starving GPU shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.utils import is_liger_kernel_available, logging

from ..data.collator import MultimodalCollator
from ..data.packing import VARLEN_SDPA, PackedCollator, PackedDataset, use_varlen_sdpa
from .arguments import DataArguments
from .freezing import find_components
from .trainer import sample_lengths

logger = logging.get_logger(__name__)


@dataclass
class PackedData:
    collator: Any
    train_dataset: torch.utils.data.Dataset | None
    eval_dataset: torch.utils.data.Dataset | None
    samples_per_item: float = 1.0


def check_packing_arguments(data_args: DataArguments) -> None:
    if data_args.packing and data_args.max_length is None:
        raise ValueError("`--packing True` needs `--max_length` (the length of a packed row, media tokens included).")


def prepare_packing(
    data_args: DataArguments,
    collator: MultimodalCollator,
    train_dataset: torch.utils.data.Dataset | None,
    eval_dataset: torch.utils.data.Dataset | None,
    ensure_image: bool,
    attn_implementation: str | None = None,
    model: torch.nn.Module | None = None,
) -> PackedData:
    """The collator and datasets for `--padding_free` / `--packing` (unchanged when neither is set).

    Packing fills rows from exact sample lengths (`trainer.sample_lengths`), so a packed run reads every sample's text
    once before training (not its media). `attn_implementation` is the language model's: flash-attention gets all
    packed rows as one row.
    `model`, when given, has an `sdpa` language model switched to per-sample SDPA (`any2text_varlen_sdpa`): stock
    `sdpa` would attend over each whole packed row under a dense block-diagonal mask, quadratic in the row length.
    """
    if not (data_args.padding_free or data_args.packing):
        return PackedData(collator, train_dataset, eval_dataset)
    check_packing_arguments(data_args)
    if model is not None and use_varlen_sdpa(find_components(model)["language_model"].modules[0]):
        attn_implementation = VARLEN_SDPA
        logger.info(f"Packed rows: the language model's `sdpa` runs per sample (`{VARLEN_SDPA}`).")
    # flash-attention reads packed `position_ids` only in a batch of one row (see `PackedCollator.single_row`); the
    # per-sample SDPA pays nothing for a longer row, so one row spares the pad tail a packed batch's rows would need.
    single_row = "flash" in str(attn_implementation or "") or attn_implementation == VARLEN_SDPA
    wrapped = PackedCollator(collator, packing=data_args.packing, ensure_image=ensure_image, single_row=single_row)
    if not data_args.packing:
        return PackedData(wrapped, train_dataset, eval_dataset)
    packed_train = pack_dataset(train_dataset, collator, data_args)
    spi = packed_train.samples_per_item if packed_train is not None else 1.0
    return PackedData(wrapped, packed_train, pack_dataset(eval_dataset, collator, data_args), spi)


def pack_dataset(
    dataset: torch.utils.data.Dataset | None, collator: Any, data_args: DataArguments
) -> PackedDataset | None:
    """`--packing`: `dataset`'s samples (or DPO pairs) in bins of at most `--max_length` tokens, as measured by
    `collator` (`trainer.sample_lengths`); `None` stays `None`."""
    if dataset is None:
        return None
    return PackedDataset(dataset, sample_lengths(dataset, collator), data_args.max_length, data_args.packing_strategy)


def language_model_attention(model: torch.nn.Module) -> str | None:
    """The attention implementation the language model runs (`sdpa`, `eager`, `flash_attention_2`...)."""
    language_model = find_components(model)["language_model"].modules[0]
    return getattr(language_model.config, "_attn_implementation", None)


def apply_liger_kernel(model: torch.nn.Module, training_args: TrainingArguments) -> None:
    """`--use_liger_kernel`: Liger's kernels (RMSNorm, RoPE, SwiGLU) on the language model instance.

    The Trainer's own switch dispatches on the top-level `model_type`, which Liger does not know for
    `llama_vision_audio` (and its Llava patch replaces the whole forward); the language model inside is a plain
    Llama / Qwen2 / Mistral / Gemma Liger does know. Our sparse loss already skips the full logits, which is what
    Liger's fused linear cross-entropy would save. The Trainer's switch is turned off afterwards so nothing is
    patched twice.
    """
    if not training_args.use_liger_kernel:
        return
    if not torch.cuda.is_available():
        raise ValueError(
            "`--use_liger_kernel True` needs a CUDA GPU: Liger's kernels are Triton GPU kernels and do not run on "
            "CPU. Leave the flag out here."
        )
    if not is_liger_kernel_available():
        raise ImportError("`--use_liger_kernel True` needs `liger-kernel`: `pip install liger-kernel`.")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    language_model = find_components(model)["language_model"].modules[0]
    _apply_liger_kernel_to_instance(model=language_model, **(training_args.liger_kernel_config or {}))
    logger.info(f"Liger kernels applied to the language model ({type(language_model).__name__}).")
    training_args.use_liger_kernel = False


class ThroughputCallback(TrainerCallback):
    """Log, at each logging step, the data loader's samples/s against the training step's samples/s (per process).

    The data loader's rate is the samples of a step over the time the training loop waited for them (between one
    step's end and the next one's start, evaluation and checkpointing excluded); the step's rate is the same samples
    over the forward/backward/optimizer time. With `dataloader_num_workers > 0` the workers prepare batches while
    the model trains, so the wait, and the loader's measured rate, is what data still costs the step. A loader rate
    close to or below the step rate means data starves the accelerator: raise `--dataloader_num_workers`.
    """

    def __init__(self, samples_per_item: float = 1.0):
        self.samples_per_item = samples_per_item
        self._reset()
        self._last_end: float | None = None
        self._step_start = 0.0

    def _reset(self) -> None:
        self.wait_seconds = self.step_seconds = 0.0
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()
        if self._last_end is not None:
            self.wait_seconds += self._step_start - self._last_end

    def on_step_end(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()
        self.step_seconds += self._last_end - self._step_start
        self.steps += 1

    def on_save(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()

    def rates(self, args: TrainingArguments) -> tuple[float, float]:
        """(data loader samples/s, step samples/s) since the last report."""
        samples = self.steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        samples *= self.samples_per_item
        data_rate = samples / self.wait_seconds if self.wait_seconds > 0 else float("inf")
        step_rate = samples / self.step_seconds if self.step_seconds > 0 else float("inf")
        return data_rate, step_rate

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.steps or not state.is_local_process_zero:
            return
        data_rate, step_rate = self.rates(args)
        starved = " - data starves training: raise `--dataloader_num_workers`" if data_rate < step_rate else ""
        logger.info(
            f"throughput: data loader {data_rate:.1f} samples/s, training steps {step_rate:.1f} samples/s "
            f"(per process; waited for data {self.wait_seconds:.2f} s of {self.wait_seconds + self.step_seconds:.2f}"
            f" s){starved}"
        )
        self._reset()


def warn_if_data_in_main_process(training_args: TrainingArguments) -> None:
    if training_args.dataloader_num_workers == 0:
        logger.warning(
            "`--dataloader_num_workers 0`: media decoding and image/audio preprocessing run in the training process, "
            "between steps. Set `--dataloader_num_workers 4` (or more) so DataLoader workers prepare batches while "
            "the model trains."
        )


__all__ = [
    "PackedData",
    "ThroughputCallback",
    "apply_liger_kernel",
    "check_packing_arguments",
    "language_model_attention",
    "pack_dataset",
    "prepare_packing",
    "warn_if_data_in_main_process",
]
