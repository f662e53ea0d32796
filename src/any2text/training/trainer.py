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

from ..data.collator import EMPTY_BATCH_KEY, MultimodalCollator
from ..data.loading import MultimodalDataset
from ..data.packing import PackedDataset
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
from .plots import TrainingCurvesCallback

logger = logging.get_logger(__name__)


def sample_lengths(dataset: torch.utils.data.Dataset, collator: MultimodalCollator) -> list[int]:
    """Exact token length of every sample, without loading media: the one place lengths are measured and checked.

    `MultimodalTrainer`'s length-grouped sampler and `--packing` (`stage.build_stage_data`) both ask here. A dataset
    that already knows its lengths (`dataset.lengths`: a `PackedDataset`, or a `MultimodalDataset` measured before) is
    read; a `MultimodalDataset` is measured in its validation pass (`validate(length_fn=collator.sample_length)`: one
    batched read of the rows, bad rows found now) and keeps them; any other dataset renders each item's `messages`.
    A few minutes for LLaVA-Instruct's 665K rows.

    Samples over the collator's `max_length` are reported here, before the first step rather than mid-run.

    Raises:
        ValueError: samples longer than `max_length` under `truncation="error"` (a `MultimodalDataset` given the
            collator's `check_sample` raises its `BadRowError` naming the row instead).
    """
    lengths = getattr(dataset, "lengths", None)
    if lengths is None and isinstance(dataset, MultimodalDataset):
        lengths = dataset.validate(length_fn=collator.sample_length)
    elif lengths is None:
        logger.warning(
            f"`{type(dataset).__name__}` has no length index (`lengths`): measuring every sample by reading it, "
            "media included. A `MultimodalDataset` measures from its rows without decoding media."
        )
        lengths = [collator.sample_length(dataset[i]["messages"]) for i in range(len(dataset))]
    lengths = [int(length) for length in lengths]
    _report_too_long(lengths, collator)
    return lengths


def _report_too_long(lengths: list[int], collator: MultimodalCollator) -> None:
    max_length = getattr(collator, "max_length", None)
    too_long = [i for i, length in enumerate(lengths) if max_length is not None and length > max_length]
    if not too_long:
        return
    message = (
        f"{len(too_long)} of {len(lengths)} samples are longer than `max_length={max_length}` "
        f"(e.g. sample {too_long[0]}: {lengths[too_long[0]]} tokens)."
    )
    if collator.truncation == "error":
        raise ValueError(f"{message} Raise `--max_length`, or pass `--truncation drop` / `--truncation text`.")
    logger.warning(f"{message} They are handled with `--truncation {collator.truncation}`.")


class MultimodalTrainer(Trainer):
    """`Trainer` for datasets of messages, which stops (or skips) at non-finite values and never saves them.

    - `train_sampling_strategy="group_by_length"` works: the sampler asks `sample_lengths` (once, when training
      starts); the stock sampler only reads lengths from a `datasets.Dataset` column or tokenized `input_ids`.
    - A non-finite loss or gradient stops training with a `NonFiniteError` naming the step and the rows of its batch
      (dataset, row index, id). With `args.skip_nonfinite_steps=True` the step's optimizer update is skipped instead
      (no weight or optimizer-state change; the learning-rate schedule still advances), logged with its rows and
      counted in `num_nonfinite_steps_skipped`. (`logging_nan_inf_filter` is unrelated: it only keeps NaN losses out
      of the logged average.) With `--fp16` the loss scaler already skips overflowing steps, so only the loss is
      checked; under DeepSpeed the optimizer steps inside `backward`, so a non-finite gradient norm is an error.
    - `save_model` (every checkpoint and the final model) refuses weights holding a non-finite value.
    - Each checkpoint gets a manifest written last (`checkpoints.CheckpointManifestCallback`), so an interrupted save
      never looks complete to `--resume_from_checkpoint True`.

    Row identity: `data_collator` (given as a keyword) is wrapped so each batch carries `row_ids` (see
    `nonfinite.RowIdCollator`), removed before the model's forward; a `train_dataset` whose items do not name their row
    (`MultimodalDataset` and packed items do) is wrapped to give each its sample index.
    """

    def __init__(self, *args, **kwargs):
        train_dataset = kwargs.get("train_dataset")
        if _lacks_row_identity(train_dataset):
            kwargs["train_dataset"] = RowIdentityDataset(train_dataset)
        collator = kwargs.get("data_collator")
        # The stage's own collator (lengths, counts), kept beside the wrapper the Trainer calls.
        self.collator = collator.collator if isinstance(collator, RowIdCollator) else collator
        if collator is not None and not isinstance(collator, RowIdCollator):
            kwargs["data_collator"] = RowIdCollator(collator)
        super().__init__(*args, **kwargs)
        self.num_empty_batches_skipped = 0
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
        self._trainable: list[torch.nn.Parameter] | None = None  # listed once per `train()`, checked every step
        self.add_callback(_NonFiniteGuard(self))
        self.add_callback(CheckpointManifestCallback())
        self.add_callback(TrainingCurvesCallback())  # output_dir/training_curves.png at each save and at the end

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and _is_map_style(dataset):
            lengths = sample_lengths(dataset, self.collator)
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths
            )
        return super()._get_train_sampler(train_dataset)

    # -----------------------------------------------------------------------------------------------------------------
    # Non-finite losses and gradients

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        rows = inputs.pop(ROW_IDS_KEY, None)
        if inputs.pop(EMPTY_BATCH_KEY, False):
            return self._skip_empty_batch(model, inputs)
        self._step_rows.extend(rows or [None])
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            self._step_loss_finite = False
            if not self.skip_nonfinite_steps:
                raise NonFiniteError(self._nonfinite_message(f"a non-finite loss ({loss.item()})", rows))
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if inputs.get(EMPTY_BATCH_KEY):
            return None, None, None  # nothing left to evaluate in this batch (every sample dropped or skipped)
        inputs = {key: value for key, value in inputs.items() if key != ROW_IDS_KEY}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _skip_empty_batch(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """A batch whose every sample was dropped (`--truncation drop`) or skipped (`--skip_bad_rows`): no update
        from it, counted in `num_empty_batches_skipped`. One process: nothing runs. DeepSpeed or several processes:
        the stage's `compute_loss` runs on the collator's placeholder (`empty_batch`) times zero, forward and backward,
        so every rank issues the same collectives (ZeRO-3 gathers, DDP's all-reduce, metric gathers) as the others."""
        self.num_empty_batches_skipped += 1
        logger.warning(
            f"Step {self.state.global_step + 1}: every sample of this batch was dropped or skipped; no update from it "
            f"({self.num_empty_batches_skipped} empty batch(es) so far). Raise `--max_length` or fix the rows."
        )
        if not self.is_deepspeed_enabled and self.args.world_size == 1:
            return torch.zeros((), device=self.args.device)
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs) * 0.0  # the stage's own forwards (a reference's too)
        self.accelerator.backward(loss)
        return loss.detach()

    def _begin_step(self) -> None:
        self._step_rows, self._step_loss_finite = [], True

    def _gradients_finite(self, model: torch.nn.Module) -> bool:
        if self.args.fp16:
            return True  # the loss scaler skips steps whose (scaled) gradients overflow, and lowers the scale
        if self.is_deepspeed_enabled:
            norm = self.model_wrapped.get_global_grad_norm()
            return norm is None or math.isfinite(float(norm))
        if self._trainable is None:
            self._trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        return gradients_are_finite(self._trainable)

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
            for parameter in model.parameters() if self._trainable is None else self._trainable:
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
    """A dataset indexed by sample; not an iterable or a `datasets.Dataset` (the stock Trainer's own cases)."""
    return (
        dataset is not None
        and hasattr(dataset, "__getitem__")
        and not isinstance(dataset, torch.utils.data.IterableDataset | datasets.Dataset | datasets.IterableDataset)
    )


def _lacks_row_identity(dataset: Any) -> bool:
    """A map-style dataset whose items do not carry `source` (what `RowIdentityDataset` adds)."""
    return _is_map_style(dataset) and not isinstance(dataset, MultimodalDataset | PackedDataset | RowIdentityDataset)


class _NonFiniteGuard(TrainerCallback):
    """The stock loop's hooks into `MultimodalTrainer`'s checks: a step begins; the optimizer is about to update."""

    def __init__(self, trainer: MultimodalTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._trainable = None  # freezing or LoRA may differ from the last `train()`

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
                f"The collator dropped {self.collator.num_dropped} samples (or pairs) longer than "
                f"`max_length={self.collator.max_length}` (truncation=`{self.collator.truncation}`)."
            )
        if self.dataset is not None and hasattr(self.dataset, "log_skip_summary"):
            self.dataset.log_skip_summary()


__all__ = ["DataReportCallback", "MultimodalTrainer", "sample_lengths"]
