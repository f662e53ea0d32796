"""Argument groups of `any2text.train`, parsed by `HfArgumentParser` beside the stock `TrainingArguments`.

Everything the stock `TrainingArguments` owns (`output_dir`, `deepspeed`, `bf16`, `gradient_checkpointing`,
`resume_from_checkpoint`, `report_to`, ...) is used from there and never declared again here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments

from ..data.bad_rows import BAD_ROWS_FILE, DEFAULT_MAX_BAD_ROWS, check_max_bad_rows
from ..data.collator import TRUNCATION_MODES
from ..data.loading import DatasetSpec, parse_dataset_specs
from ..data.packing import PACKING_STRATEGIES


@dataclass
class ModelArguments:
    """Which checkpoint to train, and which of its parts train (the stage is a freezing policy)."""

    model_name_or_path: str = field(
        metadata={
            "help": "Checkpoint to train: a LlamaVisionAudio or stock Llava checkpoint (Hub id or folder), e.g. what "
            "`any2text build` wrote, or the output_dir of a previous stage."
        }
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor to use; defaults to the one saved with `model_name_or_path`."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights are loaded in. float32 keeps full-precision master weights; mixed precision "
            "comes from `--bf16` / `--fp16`. `auto` uses the checkpoint's dtype.",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel (`sdpa`, `eager`, `flash_attention_2`); default: sdpa."}
    )
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Freeze the vision encoder."})
    freeze_audio_tower: bool = field(default=True, metadata={"help": "Freeze the audio encoder."})
    freeze_mm_proj: bool = field(
        default=False,
        metadata={"help": "Freeze both projectors (`--freeze_vision_proj` / `--freeze_audio_proj` refine it)."},
    )
    freeze_vision_proj: bool | None = field(
        default=None, metadata={"help": "Freeze the vision projector; defaults to `--freeze_mm_proj`."}
    )
    freeze_audio_proj: bool | None = field(
        default=None, metadata={"help": "Freeze the audio projector; defaults to `--freeze_mm_proj`."}
    )
    freeze_language_model: bool = field(
        default=True,
        metadata={
            "help": "Freeze the language model (its embeddings and `lm_head` included). Stage 1: True (projectors "
            "only); stage 2: False (the language model trains fully, or through LoRA with `--use_peft`)."
        },
    )

    def is_frozen(self, component: str) -> bool:
        """Whether a tower or projector of the modality table is frozen: `--freeze_<tower>` for a tower
        (`--freeze_vision_tower`; a tower without a flag stays frozen), `--freeze_<x>_proj` for a projector `<x>_projector`
        (`--freeze_mm_proj` when unset)."""
        if component.endswith("_projector"):
            flag = getattr(self, f"freeze_{component.removesuffix('_projector')}_proj", None)
            return self.freeze_mm_proj if flag is None else flag
        return getattr(self, f"freeze_{component}", True)

    @property
    def vision_proj_frozen(self) -> bool:
        return self.freeze_mm_proj if self.freeze_vision_proj is None else self.freeze_vision_proj

    @property
    def audio_proj_frozen(self) -> bool:
        return self.freeze_mm_proj if self.freeze_audio_proj is None else self.freeze_audio_proj


@dataclass
class DataArguments:
    """Training / evaluation data as comma lists, one value per dataset (or one for all); a trailing comma is fine."""

    train_datasets: str | None = field(
        default=None,
        metadata={
            "help": "Comma list of datasets: Hub ids, local dataset folders, or .json/.jsonl/.parquet files, "
            "e.g. `liuhaotian/LLaVA-Instruct-150K,HuggingFaceM4/A-OKVQA,`."
        },
    )
    train_template: str | None = field(
        default=None, metadata={"help": "Comma list of templates (case-insensitive), e.g. `LLAVA,A-OKVQA,`."}
    )
    train_split: str = field(default="train", metadata={"help": "Comma list of splits."})
    train_data_files: str | None = field(default=None, metadata={"help": "Comma list of data files per dataset."})
    train_name: str | None = field(default=None, metadata={"help": "Comma list of dataset configuration names."})
    train_size: str | None = field(
        default=None, metadata={"help": "Comma list: keep a seeded random subset of this many rows per dataset."}
    )
    train_weights: str | None = field(
        default=None,
        metadata={
            "help": "Comma list of sampling weights (all datasets or none); without it datasets are concatenated."
        },
    )
    train_num_samples: int | None = field(
        default=None, metadata={"help": "Length of the weighted mix; default: the total number of rows."}
    )
    media_root: str | None = field(
        default=None,
        metadata={
            "help": "Folder relative image/audio paths start from (a comma list gives one per dataset); default: the "
            "dataset's own folder."
        },
    )
    eval_datasets: str | None = field(default=None, metadata={"help": "Like `--train_datasets`, for evaluation."})
    eval_template: str | None = field(default=None, metadata={"help": "Like `--train_template`."})
    eval_split: str = field(default="validation", metadata={"help": "Like `--train_split`."})
    eval_data_files: str | None = field(default=None, metadata={"help": "Like `--train_data_files`."})
    eval_name: str | None = field(default=None, metadata={"help": "Like `--train_name`."})
    eval_size: str | None = field(default=None, metadata={"help": "Like `--train_size`."})
    eval_media_root: str | None = field(default=None, metadata={"help": "Like `--media_root`, for evaluation."})
    skip_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "Skip bad rows (a template, media file or length check fails) instead of stopping: each is counted "
            f"once per dataset and cause, logged, and listed in `output_dir/{BAD_ROWS_FILE}`."
        },
    )
    max_bad_rows: float = field(
        default=DEFAULT_MAX_BAD_ROWS,
        metadata={
            "help": "With `--skip_bad_rows`: training stops, with a summary of the likely cause, once a dataset has "
            "more bad rows than this: a count (`100`), a fraction of the dataset's rows (`0.01`, the default), `0` "
            "(no bad row tolerated) or `inf` (no cap). The same in every stage (`any2text.train`, `any2text.dpo`)."
        },
    )
    validate_rows: bool = field(
        default=False,
        metadata={
            "help": "Check every row before training starts (template, conversation rules, media files exist, length "
            "under `--truncation error`)."
        },
    )
    allow_media_outside_root: bool = field(
        default=False,
        metadata={
            "help": "Read media paths that lead outside the media root (`../x.png`, absolute paths elsewhere); "
            "refused by default."
        },
    )

    def __post_init__(self):
        if self.train_datasets and not self.train_template:
            raise ValueError(
                "`--train_datasets` needs `--train_template` (one per dataset, e.g. `--train_template LLAVA,`)."
            )
        if self.eval_datasets and not self.eval_template:
            raise ValueError("`--eval_datasets` needs `--eval_template` (one per dataset).")
        self.max_bad_rows = check_max_bad_rows(self.max_bad_rows)

    def dataset_specs(self, split: Literal["train", "eval"]) -> list[DatasetSpec] | None:
        """The `DatasetSpec`s the `--train_*` (or `--eval_*`) comma lists describe; `None` when no dataset is given.

        Weights (and so `--train_num_samples`) apply to training only; evaluation reads `--eval_media_root`.
        """
        if split == "train":
            if not self.train_datasets:
                return None
            return parse_dataset_specs(
                self.train_datasets, templates=self.train_template, splits=self.train_split,
                data_files=self.train_data_files, names=self.train_name, sizes=self.train_size,
                weights=self.train_weights, media_roots=self.media_root,
            )  # fmt: skip
        if split != "eval":
            raise ValueError(f"`split` must be `train` or `eval`, got `{split}`.")
        if not self.eval_datasets:
            return None
        return parse_dataset_specs(
            self.eval_datasets, templates=self.eval_template, splits=self.eval_split,
            data_files=self.eval_data_files, names=self.eval_name, sizes=self.eval_size,
            media_roots=self.eval_media_root,
        )  # fmt: skip


# A config file's dataset records (TRL's `DatasetMixtureConfig(datasets=[DatasetConfig(path, name, split, ...)])`, with
# our `template`, `weight`, `media_root`, `size`) and the argument each key fills, for `datasets` / `eval_datasets`.
_RECORD_FIELDS = {
    "datasets": {"path": "train_datasets", "template": "train_template", "split": "train_split", "name": "train_name",
                 "data_files": "train_data_files", "size": "train_size", "weight": "train_weights",
                 "media_root": "media_root"},
    "eval_datasets": {"path": "eval_datasets", "template": "eval_template", "split": "eval_split", "name": "eval_name",
                      "data_files": "eval_data_files", "size": "eval_size", "media_root": "eval_media_root"},
}  # fmt: skip


def dataset_records_to_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """A config mapping with `datasets:` (and `eval_datasets:`) given as records turned into the comma-list arguments.

    Example (YAML)::

        datasets:
          - {path: data/LLaVA-Instruct, template: LLaVA, data_files: llava_v1_5_mix665k.json, weight: 3,
             media_root: data/LLaVA-Instruct/images}
          - {path: AudioCaps/AudioCaps, template: AudioCaps, weight: 1}

    is `train_datasets: data/LLaVA-Instruct,AudioCaps/AudioCaps,`, `train_template: LLaVA,AudioCaps,`, ... A record
    needs `path` and `template`; a key it leaves out takes that argument's default. Comma lists stay the
    command-line shorthand; one config file uses one form or the other.

    Raises:
        ValueError: an unknown record key, a record without `path` / `template`, both forms given, or a value holding
            a comma.
    """
    config = dict(config)
    for key, fields in _RECORD_FIELDS.items():
        records = config.get(key)
        if key == "eval_datasets" and not isinstance(records, list):
            continue  # `eval_datasets: a.json,b.json,` is the comma-list argument itself
        if records is None:
            continue
        config.pop(key)
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"`{key}` must be a list of records such as `{{path: data.json, template: LLaVA}}`.")
        given = [field for field in fields.values() if field in config]
        if given:
            raise ValueError(
                f"`{key}` records and the comma-list argument(s) {', '.join(f'`{g}`' for g in given)} are both set; "
                "use one form."
            )
        for number, record in enumerate(records):
            unknown = sorted(set(record) - set(fields))
            if unknown or "path" not in record or "template" not in record:
                raise ValueError(
                    f"`{key}` record {number} ({record}) needs `path` and `template`, and may set "
                    f"{', '.join(f'`{k}`' for k in fields if k not in ('path', 'template'))}"
                    + (f"; unknown: {', '.join(f'`{k}`' for k in unknown)}." if unknown else ".")
                )
        defaults = {field.name: field.default for field in dataclasses.fields(DataArguments)}
        for record_key, argument in fields.items():
            values = []
            for record in records:
                value = record.get(record_key)
                if isinstance(value, list | tuple) or (isinstance(value, str) and "," in value):
                    raise ValueError(f"`{key}` record `{record.get('path')}`: `{record_key}` must be one value "
                                     f"without commas, got {value!r}.")  # fmt: skip
                values.append("" if value is None else str(value))
            if all(value == "" for value in values):
                continue
            default = defaults.get(argument)
            values = [value or (default if isinstance(default, str) else "") for value in values]
            config[argument] = ",".join(values) + ","
    return config


@dataclass
class LoraArguments:
    """LoRA on the language model only, named as TRL names it. Projectors (and any unfrozen tower) train fully."""

    use_peft: bool = field(default=False, metadata={"help": "Train the language model through LoRA adapters."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names of the language model's linear layers to adapt (e.g. `q_proj v_proj`), matched inside the "
            "language model only; default: all of its linear layers except `lm_head`."
        },
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling (alpha / sqrt(r))."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})


@dataclass
class MultimodalTrainingArguments(TrainingArguments):
    """The stock `TrainingArguments` (every flag as transformers spells it) plus the knobs every stage shares, under
    TRL's `SFTConfig` names: `max_length`, `truncation`, `padding_free`, `packing`, `packing_strategy`; and how
    training meets non-finite values. The SFT stage's config (`SFTConfig`); `DPOConfig` adds DPO's own.

    A subclass, as TRL's `SFTConfig` is, so the argument groups stay four and nothing stock is declared again.
    """

    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest sample in tokens, media tokens included (a preference pair: its row, prompt + chosen + "
            "rejected); default: no limit."
        },
    )
    truncation: str = field(
        default="error",
        metadata={
            "help": "Samples over `--max_length`: `error` stops with the sample named; `drop` skips them (counted, "
            "logged); `text` cuts text at the end. Media spans are never cut.",
            "choices": list(TRUNCATION_MODES),
        },
    )
    # Throughput (TRL's `SFTConfig` / `DPOConfig` names; see `any2text.data.packing`).
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Concatenate a batch's samples into one row without padding; positions restart per sample and "
            "attention never crosses samples. Loss and gradients equal the padded batch's."
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Bin-pack samples into rows of at most `--max_length` tokens (media counted, no sample split); "
            "`--per_device_train_batch_size` then counts rows. Implies padding-free rows."
        },
    )
    packing_strategy: str = field(
        default="bfd",
        metadata={
            "help": "How `--packing` fills rows: `bfd` (best-fit decreasing).",
            "choices": list(PACKING_STRATEGIES),
        },
    )

    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={
            "help": "On a non-finite loss or gradient norm, skip that optimizer update (logged with the batch's rows, "
            "counted) instead of stopping with an error naming the step and the rows. Not the stock "
            "`--logging_nan_inf_filter`, which only keeps NaN losses out of the logged average. Not under DeepSpeed."
        },
    )


# TRL's name for the supervised stage's configuration.
SFTConfig = MultimodalTrainingArguments

__all__ = [
    "SFTConfig",
    "DataArguments",
    "LoraArguments",
    "ModelArguments",
    "MultimodalTrainingArguments",
    "dataset_records_to_arguments",
]
