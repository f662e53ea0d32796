"""The stock `Trainer`, taught where sample lengths come from, guarded against non-finite values, with safe saves.

Plus a callback reporting skipped / dropped samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from transformers import Trainer, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging

from ..data.collator import MultimodalCollator
from .checkpoints import CheckpointManifestCallback
from .nonfinite import (
    ROW_IDS_KEY,
    NonFiniteError,
    RowIdCollator,
    RowIdentityDataset,
    describe_rows,
    gradients_are_finite,
    non_finite_parameters,
)

logger = logging.get_logger(__name__)


def sample_lengths(dataset: torch.utils.data.Dataset, collator: MultimodalCollator) -> list[int]:
    """Exact token length of every sample, without loading media.

    Uses `dataset.lengths` when the dataset provides it; otherwise renders each sample's messages with
    `dataset.messages(i, decode_media=False)` (`MultimodalDataset`) or `dataset[i]["messages"]` and counts tokens with
    `collator.sample_length`. One pass over the data: a few minutes for LLaVA-Instruct's 665K rows.
    """
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return [int(length) for length in lengths]
    if hasattr(dataset, "messages"):
        return [collator.sample_length(dataset.messages(i, decode_media=False)) for i in range(len(dataset))]
    return [collator.sample_length(dataset[i]["messages"]) for i in range(len(dataset))]


class MultimodalTrainer(Trainer):
    """`Trainer` for datasets of messages, which stops (or skips) at non-finite values and never saves them.

    - `train_sampling_strategy="group_by_length"` works: lengths come from `train_lengths` (see `sample_lengths`); the
      stock sampler only reads them from a `datasets.Dataset` column or tokenized `input_ids`.
    - A non-finite loss or gradient stops training with a `NonFiniteError` naming the step and the rows of its batch
      (dataset, row index, id). With `args.skip_nonfinite_steps=True` the step's optimizer update is skipped instead
      (no weight or optimizer-state change; the learning-rate schedule still advances), logged with its rows and
      counted in `num_nonfinite_steps_skipped`. (`logging_nan_inf_filter` is unrelated: it only keeps NaN losses out
      of the logged average.) With `--fp16` the loss scaler already skips overflowing steps, so only the loss is
      checked; under DeepSpeed the optimizer steps inside `backward`, so a non-finite gradient norm is an error.
    - `save_model` (every checkpoint and the final model) refuses weights holding a non-finite value.
    - Each checkpoint gets a manifest written last (`checkpoints.CheckpointManifestCallback`), so an interrupted save
      never looks complete to `--resume_from_checkpoint True`.

    Row identity: `train_dataset` and `data_collator` given as keywords are wrapped so each batch carries `row_ids`
    (see `nonfinite.RowIdCollator`); the key is removed before the model's forward.
    """

    def __init__(self, *args, train_lengths: Sequence[int] | None = None, **kwargs):
        train_dataset = kwargs.get("train_dataset")
        if _is_map_style(train_dataset) and not isinstance(train_dataset, RowIdentityDataset):
            kwargs["train_dataset"] = RowIdentityDataset(train_dataset)
        if kwargs.get("data_collator") is not None and not isinstance(kwargs["data_collator"], RowIdCollator):
            kwargs["data_collator"] = RowIdCollator(kwargs["data_collator"])
        super().__init__(*args, **kwargs)
        self.train_lengths = list(train_lengths) if train_lengths is not None else None
        self.skip_nonfinite_steps = bool(getattr(self.args, "skip_nonfinite_steps", False))
        if self.skip_nonfinite_steps and self.is_deepspeed_enabled:
            raise ValueError(
                "`--skip_nonfinite_steps True` cannot skip a step under DeepSpeed: its optimizer steps inside "
                "`backward`, before the gradients can be checked. Leave the flag out (a non-finite loss or gradient "
                "then stops the run, naming the rows), or with `--fp16` let DeepSpeed's loss scaler skip overflowing "
                "steps."
            )
        self.num_nonfinite_steps_skipped = 0
        self._step_rows: list[Any] = []
        self._step_loss_finite = True
        self.add_callback(_NonFiniteGuard(self))
        self.add_callback(CheckpointManifestCallback())

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and self.train_lengths is not None:
            if len(self.train_lengths) != len(dataset):
                raise ValueError(
                    f"`train_lengths` has {len(self.train_lengths)} entries for a dataset of {len(dataset)} samples."
                )
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=self.train_lengths
            )
        return super()._get_train_sampler(train_dataset)

    # -----------------------------------------------------------------------------------------------------------------
    # Non-finite losses and gradients

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        rows = inputs.pop(ROW_IDS_KEY, None)
        self._step_rows.extend(rows or [None])
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            self._step_loss_finite = False
            if not self.skip_nonfinite_steps:
                raise NonFiniteError(self._nonfinite_message(f"a non-finite loss ({loss.item()})", rows))
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {key: value for key, value in inputs.items() if key != ROW_IDS_KEY}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _begin_step(self) -> None:
        self._step_rows, self._step_loss_finite = [], True

    def _gradients_finite(self, model: torch.nn.Module) -> bool:
        if self.args.fp16:
            return True  # the loss scaler skips steps whose (scaled) gradients overflow, and lowers the scale
        if self.is_deepspeed_enabled:
            norm = self.model_wrapped.get_global_grad_norm()
            return norm is None or math.isfinite(float(norm))
        return gradients_are_finite(model)

    def _check_step(self, model: torch.nn.Module) -> None:
        """Before the optimizer update: raise, or (skip mode) drop this step's gradients, when anything is non-finite."""
        finite = self._step_loss_finite and self._gradients_finite(model)
        if self.skip_nonfinite_steps and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank must skip the same steps, even when only one rank's loss was non-finite.
            flag = torch.tensor(float(finite), device=self.args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = bool(flag.item())
        if finite:
            return
        what = "a non-finite loss" if not self._step_loss_finite else "a non-finite gradient norm"
        if not self.skip_nonfinite_steps:
            raise NonFiniteError(self._nonfinite_message(what, self._step_rows))
        if not self.args.fp16:  # with fp16 the loss scaler skips the update itself (and needs the gradients to)
            for parameter in model.parameters():
                parameter.grad = None  # optimizers leave parameters without a gradient untouched
        self.num_nonfinite_steps_skipped += 1
        logger.warning(
            f"Skipping step {self.state.global_step + 1} ({what}; no optimizer update): its batch held "
            f"{describe_rows(self._step_rows)}. {self.num_nonfinite_steps_skipped} step(s) skipped so far."
        )

    def _nonfinite_message(self, what: str, rows: Sequence[Any] | None) -> str:
        return (
            f"Training stopped at step {self.state.global_step + 1} on {what}. "
            f"The batch held {describe_rows(rows)}. Nothing from this step was saved. Likely causes: a row with "
            "non-finite media (check the rows above), a learning rate too high for this model, or fp16 overflow "
            "(try `--bf16`). Fix or drop the rows, lower `--learning_rate`, or pass `--skip_nonfinite_steps True` to "
            "skip such steps (counted and logged, no optimizer update); resume with `--resume_from_checkpoint True`."
        )

    # -----------------------------------------------------------------------------------------------------------------
    # Saving

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model` (every checkpoint and the final model), refusing weights with a non-finite value."""
        bad = non_finite_parameters(self.model)
        total = sum(bad.values())
        if is_deepspeed_zero3_enabled() and torch.distributed.is_initialized():
            # Each rank holds a shard: all of them must agree (save_model runs on every rank under ZeRO-3).
            count = torch.tensor(float(total), device=self.args.device)
            torch.distributed.all_reduce(count)
            total = int(count.item())
        if total:
            names = ", ".join(f"`{name}` ({count})" for name, count in list(bad.items())[:5]) or "another rank's shard"
            raise NonFiniteError(
                f"Refusing to save to `{output_dir or self.args.output_dir}` at step {self.state.global_step}: "
                f"{total} weight value(s) are non-finite, e.g. in {names}. Training diverged at or before this step. "
                "Resume from the last checkpoint with `--resume_from_checkpoint True` and a lower `--learning_rate`, "
                "check the data for non-finite media, or pass `--skip_nonfinite_steps True`."
            )
        super().save_model(output_dir, _internal_call=_internal_call)


def _is_map_style(dataset: Any) -> bool:
    """A dataset indexed by sample (what `RowIdentityDataset` can wrap); not an iterable or a `datasets.Dataset`."""
    return (
        dataset is not None
        and hasattr(dataset, "__getitem__")
        and not isinstance(dataset, torch.utils.data.IterableDataset | datasets.Dataset | datasets.IterableDataset)
    )


class _NonFiniteGuard(TrainerCallback):
    """The stock loop's hooks into `MultimodalTrainer`'s checks: a step begins; the optimizer is about to update."""

    def __init__(self, trainer: MultimodalTrainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._begin_step()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.trainer._check_step(model if model is not None else self.trainer.model)


class DataReportCallback(TrainerCallback):
    """At the end of training, report the bad rows the dataset skipped and the samples the collator dropped.

    Counts are those of the main process' collator / dataset; with `dataloader_num_workers > 0` each worker keeps its
    own and logs its own warnings as it goes.
    """

    def __init__(self, collator: MultimodalCollator, dataset: torch.utils.data.Dataset | None = None):
        self.collator = collator
        self.dataset = dataset

    def on_train_end(self, args, state, control, **kwargs):
        if self.collator.num_dropped:
            logger.warning(
                f"The collator dropped {self.collator.num_dropped} samples longer than "
                f"`max_length={self.collator.max_length}` (truncation=`{self.collator.truncation}`)."
            )
        if self.dataset is not None and hasattr(self.dataset, "log_skip_summary"):
            self.dataset.log_skip_summary()


__all__ = ["DataReportCallback", "MultimodalTrainer", "sample_lengths"]
