"""Throughput switches of the training stages: Liger kernels, and a data-rate report.

Kept apart from the stage set-up so each switch is one call there (padding-free / packed batches are the set-up's,
`training/stage.py`, on `data/packing.py`):

- `apply_liger_kernel` puts Liger's Triton kernels on the language model instance for `--use_liger_kernel`;
- `ThroughputCallback` logs data loader samples/s against training-step samples/s, so a starving GPU shows.
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.utils import is_liger_kernel_available, logging

from .freezing import find_components

logger = logging.get_logger(__name__)


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


__all__ = ["ThroughputCallback", "apply_liger_kernel", "warn_if_data_in_main_process"]
