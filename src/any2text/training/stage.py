"""One set-up for every training stage: model, data, collator and trainer, parametrized by the stage's classes.

A stage (SFT in `training/train.py`, DPO in `training/dpo.py`, and the next ones) declares itself as a `Stage`::

    SFT = Stage(name="sft", data="samples", collator_class=MultimodalCollator, trainer_class=MultimodalTrainer,
                config_class=SFTConfig)
    DPO = Stage(name="dpo", data="pairs", collator_class=PreferenceCollator, trainer_class=DPOTrainer,
                config_class=DPOConfig, label_names=("answer_labels",))

its entry point parses `DPO.argument_groups` (model, data, LoRA groups, then its config class, TRL's names) and
`build_stage(DPO, model_args, data_args, lora_args, training_args, ref_model=...)` returns its trainer. Everything
else is decided here, once, for every stage, so each data flag means the same everywhere:

- model (`load_stage_model`): `from_pretrained` through the Auto classes (ZeRO-3 leaf towers), the freezing policy,
  Liger, LoRA; whether batches need a blank image (a stock model under ZeRO-3);
- data (`build_stage_data`): dataset specs (the `--train_*` comma lists or the config file's `datasets:` records),
  templates, `--media_root` and `--allow_media_outside_root`, one bad-row log (`--skip_bad_rows`, `--max_bad_rows`,
  `output_dir/bad_rows.jsonl`) shared by datasets and collator, `--validate_rows`, the length index (measured from
  the rows, never decoding media, when `--packing` or `group_by_length` need it), `--max_length` / `--truncation`
  (on the stage's config, TRL's names)
  through the collator's one rule (`MultimodalCollator.fit_length`: at row-read time under `error`, so an over-long
  sample or pair is a named, skippable bad row), `--padding_free` / `--packing` (`PackedDataset` bins for samples
  and pairs alike; the rows are laid out by the stage's collator);
- the trainer: the stage's `Trainer` subclass with the datasets, the collator and the data-report callbacks; its
  own keyword arguments (`dpo_args`, `ref_model`...) pass through.

`run_stage(trainer, ...)` then trains, counts skipped steps, saves model, state and card, and evaluates.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..data.bad_rows import BAD_ROWS_FILE, BadRowLog
from ..data.collator import MultimodalCollator
from ..data.loading import MultimodalDataset
from ..data.packing import VARLEN_SDPA, PackedDataset, use_varlen_sdpa
from ..data.preference import PreferenceDataset
from ..data.prompts import PromptDataset
from ..modalities import media_options
from ..models.llama_vision_audio import LlamaVisionAudioPreTrainedModel
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .checkpoints import resolve_resume_checkpoint
from .freezing import find_components, parameter_table
from .model import load_model_and_processor, prepare_model
from .model_card import training_card
from .nonfinite import NonFiniteError
from .throughput import ThroughputCallback, warn_if_data_in_main_process
from .trainer import DataReportCallback, MultimodalTrainer, sample_lengths

logger = logging.get_logger(__name__)

DATA_KINDS = ("samples", "pairs", "prompts")


@dataclass(frozen=True)
class Stage:
    """What a training stage declares; the set-up (`build_stage`) does the rest the same way for every stage.

    Args:
        name: short name (`sft`, `dpo`, `reward`), for messages and the model card.
        data: `"samples"` (conversations, `MultimodalDataset`), `"pairs"` (preference pairs, `PreferenceDataset`:
            one row `[prompt | chosen | rejected]` per pair, media encoded once; see `PreferenceCollator`) or
            `"prompts"` (prompts to generate from, `PromptDataset`; GRPO).
        collator_class: a `MultimodalCollator` (sub)class, built with the set-up's data arguments.
        trainer_class: a `MultimodalTrainer` subclass; `build_stage`'s extra keyword arguments go to it.
        config_class: the stage's `TrainingArguments` subclass (TRL's names), what its entry point parses.
        label_names: the batch keys that hold the targets (the stock Trainer's `label_names` default).
        load_model: how the stage loads its model, `load_model(model_name_or_path, dtype=..., attn_implementation=...)`
            (`from_pretrained`'s shape); default: `AutoModelForImageTextToText.from_pretrained`. The reward stage
            loads `LlamaVisionAudioForSequenceClassification` (from a LlamaVisionAudio or stock Llava checkpoint).
    """

    name: str
    data: Literal["samples", "pairs", "prompts"]
    collator_class: type[MultimodalCollator]
    trainer_class: type[MultimodalTrainer]
    config_class: type[TrainingArguments] = MultimodalTrainingArguments
    label_names: tuple[str, ...] = ("labels",)
    load_model: Callable[..., torch.nn.Module] | None = None

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"`Stage.data` must be one of {DATA_KINDS}, got `{self.data}`.")

    @property
    def dataset_class(self) -> type[MultimodalDataset]:
        return {"pairs": PreferenceDataset, "prompts": PromptDataset}.get(self.data, MultimodalDataset)

    @property
    def argument_groups(self) -> tuple[type, ...]:
        """What the stage's entry point parses: the groups every stage shares, then the stage's config class."""
        return (ModelArguments, DataArguments, LoraArguments, self.config_class)


@dataclass
class StageData:
    """The data side of a stage: the collator the Trainer calls, the datasets (packed or not) and the bad-row log."""

    collator: MultimodalCollator
    train_dataset: torch.utils.data.Dataset | None
    eval_dataset: torch.utils.data.Dataset | None
    bad_rows: BadRowLog
    samples_per_item: float = 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Model


def load_stage_model(
    model_args: ModelArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
    load_model: Callable[..., torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, Any, bool]:
    """The model (loaded, frozen as the stage says, LoRA), its processor, and whether batches need an image.

    A stock model (Llava) cannot run its vision tower without an image; under ZeRO-3 a rank whose batch has none
    would skip it while the others gather its parameters, and the run would hang, so its batches get a blank image
    row with no labels (`ensure_image`). LlamaVisionAudio gets the training lock-step instead (`training/zero3.py`).
    """
    model, processor = load_model_and_processor(model_args, load_model)
    ensure_image = is_deepspeed_zero3_enabled() and not isinstance(model, LlamaVisionAudioPreTrainedModel)
    return prepare_model(model, model_args, lora_args, training_args), processor, ensure_image


# ---------------------------------------------------------------------------------------------------------------------
# Data


def check_packing_arguments(training_args: TrainingArguments) -> None:
    if training_args.packing and training_args.max_length is None:
        raise ValueError("`--packing True` needs `--max_length` (the length of a packed row, media tokens included).")


def build_dataset(
    data_args: DataArguments,
    split: Literal["train", "eval"],
    processor: Any,
    seed: int,
    bad_rows: BadRowLog | None = None,
    check_sample: Callable[[list], int] | None = None,
    validate: bool | None = None,
    dataset_class: type[MultimodalDataset] = MultimodalDataset,
) -> MultimodalDataset | None:
    """The `train` or `eval` dataset `data_args` describes (`None` when none is given).

    `bad_rows` (shared with the collator) records skipped rows; `check_sample` runs on each row as it is read (the
    collator's length check); `validate` (default `--validate_rows`) checks every row now.
    """
    specs = data_args.dataset_specs(split)
    if specs is None:
        return None
    return dataset_class(
        specs,
        media_options=media_options(processor),
        skip_bad_rows=data_args.skip_bad_rows,
        num_samples=data_args.train_num_samples if split == "train" else None,
        seed=seed,
        validate_rows=data_args.validate_rows if validate is None else validate,
        max_bad_rows=data_args.max_bad_rows,
        bad_rows=bad_rows,
        allow_media_outside_root=data_args.allow_media_outside_root,
        check_sample=check_sample,
    )


def build_stage_data(
    stage: Stage,
    data_args: DataArguments,
    training_args: TrainingArguments,
    processor: Any,
    *,
    ensure_image: bool = False,
    model: torch.nn.Module | None = None,
) -> StageData:
    """Datasets, length index, packing and the collator of `stage`, from the arguments every stage shares (the data
    group, and the stage config's `max_length` / `truncation` / `padding_free` / `packing`, TRL's names).

    `model`, when given, has an `sdpa` language model switched to per-sample SDPA (`any2text_varlen_sdpa`) for
    padding-free / packed rows (stock `sdpa` would attend over each whole row under a dense block-diagonal mask), and
    its attention decides whether a packed batch is one row (flash-attention, varlen SDPA) or several.
    """
    flat = training_args.padding_free or training_args.packing
    single_row = False
    if flat:
        check_packing_arguments(training_args)
        # Pair rows carry a 4D mask (the rejected answer never sees the chosen one): no per-sample SDPA for them.
        per_sample = stage.data == "samples"
        attention = _language_model_attention(model, packed=per_sample) if model is not None else None
        # flash-attention reads packed `position_ids` only in a batch of one row; the per-sample SDPA pays nothing
        # for a longer row, so one row spares the pad tail a packed batch's rows would need.
        single_row = "flash" in str(attention or "") or attention == VARLEN_SDPA
    # One record of bad rows for the datasets and the collator: each row counted once, one cap, one file.
    bad_rows = BadRowLog(data_args.max_bad_rows, path=os.path.join(training_args.output_dir, BAD_ROWS_FILE))
    collator = stage.collator_class(
        processor,
        max_length=training_args.max_length,
        truncation=training_args.truncation,
        ensure_image=ensure_image,
        skip_bad_rows=data_args.skip_bad_rows,
        bad_rows=bad_rows,
        allow_media_outside_root=data_args.allow_media_outside_root,
        padding_free=training_args.padding_free,
        single_row=single_row,
    )
    # Lengths are known as soon as a row is read: over `--max_length` under `--truncation error` is a bad row then.
    check = (
        collator.check_sample if training_args.max_length is not None and training_args.truncation == "error" else None
    )
    grouped = training_args.train_sampling_strategy == "group_by_length"
    datasets = {}
    for split in ("train", "eval"):
        # Measuring the length index (packing; grouping the training set) validates every row in the same pass.
        measure = training_args.packing or (grouped and split == "train")
        dataset = build_dataset(
            data_args, split, processor, training_args.seed, bad_rows, check,
            validate=data_args.validate_rows and not measure, dataset_class=stage.dataset_class,
        )  # fmt: skip
        if dataset is not None and measure:
            sample_lengths(dataset, collator)  # the length index: `dataset.lengths`, from the rows alone
        if dataset is not None and training_args.packing:
            dataset = PackedDataset(dataset, dataset.lengths, training_args.max_length, training_args.packing_strategy)
        datasets[split] = dataset
    train = datasets["train"]
    return StageData(
        collator=collator,
        train_dataset=train,
        eval_dataset=datasets["eval"],
        bad_rows=bad_rows,
        samples_per_item=train.samples_per_item if isinstance(train, PackedDataset) else 1.0,
    )


def _language_model_attention(model: torch.nn.Module, packed: bool = False) -> str | None:
    """The language model's attention implementation; with `packed`, an `sdpa` one is switched to varlen SDPA."""
    language_model = find_components(model)["language_model"].modules[0]
    if packed and use_varlen_sdpa(language_model):
        logger.info(f"Packed rows: the language model's `sdpa` runs per sample (`{VARLEN_SDPA}`).")
    return getattr(language_model.config, "_attn_implementation", None)


# ---------------------------------------------------------------------------------------------------------------------
# The stage


def build_stage(
    stage: Stage,
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
    **trainer_kwargs: Any,
) -> MultimodalTrainer:
    """Model, freezing policy, optional LoRA, datasets, length index, packing and collator, as `stage`'s trainer.

    `trainer_kwargs` go to `stage.trainer_class` (e.g. DPO's `dpo_args`, `ref_model`, `ref_model_loader`).
    """
    if not data_args.train_datasets:
        raise ValueError(f"Nothing to train on: pass `--train_datasets` and `--train_template` ({stage.name}).")
    # Samples are `{"messages": ...}`; the stock column filter would drop them before they reach the collator.
    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        training_args.label_names = list(stage.label_names)
    model, processor, ensure_image = load_stage_model(model_args, lora_args, training_args, stage.load_model)
    data = build_stage_data(stage, data_args, training_args, processor, ensure_image=ensure_image, model=model)
    warn_if_data_in_main_process(training_args)
    return stage.trainer_class(
        model=model,
        args=training_args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.collator,
        processing_class=processor,
        callbacks=[DataReportCallback(data.collator, data.train_dataset), ThroughputCallback(data.samples_per_item)],
        **trainer_kwargs,
    )


def run_stage(
    trainer: MultimodalTrainer,
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
    card_section: str = "",
) -> MultimodalTrainer:
    """What every stage does with its trainer: train (resuming when asked), count skipped steps, save the model,
    state and model card (`card_section` appended), log and save the metrics, evaluate."""
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    _report_skipped_steps(trainer, result.metrics)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        card = training_card(
            trainer.model, model_args, data_args, lora_args, training_args, parameter_table(trainer.model),
            trainer.state.log_history,
        )  # fmt: skip
        with open(os.path.join(training_args.output_dir, "README.md"), "w") as f:
            f.write(card + card_section)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


def _report_skipped_steps(trainer: MultimodalTrainer, metrics: dict) -> None:
    """Count the steps skipped (non-finite, `--skip_nonfinite_steps`; empty batches) in the metrics; a run that
    skipped every step is an error."""
    steps_run = trainer.state.global_step
    empty = trainer.num_empty_batches_skipped
    if empty:
        metrics["train_empty_batches_skipped"] = empty
        logger.warning(
            f"Skipped {empty} batch(es) whose every sample was dropped (`--truncation drop`) or skipped as a bad row."
        )
    skipped = trainer.num_nonfinite_steps_skipped
    if not skipped:
        return
    metrics["train_nonfinite_steps_skipped"] = skipped
    logger.warning(f"Skipped {skipped} of {steps_run} optimizer steps on non-finite losses or gradients (see above).")
    if skipped >= steps_run:
        raise NonFiniteError(
            f"Every one of the {steps_run} optimizer steps of this run was non-finite and skipped: nothing was learned, "
            "so nothing is saved. Check the data for non-finite media and lower `--learning_rate`."
        )


def reference_description(model_args: ModelArguments, lora_args: LoraArguments, training_args: Any) -> str:
    """The reference model a preference / on-policy stage compares against, as its model card names it: the policy
    with its adapters disabled under LoRA, else `ref_model_name_or_path` or the starting checkpoint."""
    if lora_args.use_peft:
        return "the model with its adapters disabled"
    return training_args.ref_model_name_or_path or model_args.model_name_or_path


def stage_main(argv: list[str] | None, parse: Callable[[list[str]], tuple], run: Callable[..., Any]) -> int:
    """An entry point's `main`: CPU DeepSpeed's process group, parse (flags or a config file), log set-up, run."""
    from ..cli import setup_logging
    from .workarounds import check_cpu_deepspeed, init_cpu_deepspeed

    argv = list(sys.argv[1:] if argv is None else argv)
    init_cpu_deepspeed(argv)
    groups = parse(argv)
    check_cpu_deepspeed(groups[-1])
    setup_logging(groups[-1])
    run(*groups)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Ranks leave together and close the process group: a rank that exits while another still saves, with the
        # group's threads alive, can abort ("terminate called without an active exception") and fail the launch.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


__all__ = [
    "DATA_KINDS",
    "Stage",
    "StageData",
    "build_dataset",
    "build_stage",
    "build_stage_data",
    "check_packing_arguments",
    "load_stage_model",
    "run_stage",
    "stage_main",
]
