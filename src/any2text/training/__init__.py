"""Training on the stock `Trainer`: argument groups, the freezing policy, LoRA, the entry point and LoRA merging."""

from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .freezing import apply_freezing, find_components, parameter_table
from .lora import apply_lora, lora_target_regex
from .merge import merge_lora, merge_lora_main
from .train import build_trainer, main, parse_args, train
from .trainer import DataReportCallback, MultimodalTrainer, sample_lengths

__all__ = [
    "DataArguments",
    "DataReportCallback",
    "LoraArguments",
    "ModelArguments",
    "MultimodalTrainer",
    "MultimodalTrainingArguments",
    "apply_freezing",
    "apply_lora",
    "build_trainer",
    "find_components",
    "lora_target_regex",
    "main",
    "merge_lora",
    "merge_lora_main",
    "parameter_table",
    "parse_args",
    "sample_lengths",
    "train",
]
