"""Training on the stock `Trainer`: one stage set-up (`stage.py`) under SFT and DPO, argument groups, the freezing
policy, LoRA, the entry points and LoRA merging."""

from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments, SFTConfig
from .freezing import apply_freezing, find_components, parameter_table
from .lora import apply_lora, lora_target_regex
from .merge import merge_lora, merge_lora_main
from .stage import Stage, StageData, build_stage, build_stage_data, run_stage
from .train import SFT, build_trainer, main, parse_args, train
from .trainer import DataReportCallback, MultimodalTrainer, sample_lengths

__all__ = [
    "DataArguments",
    "DataReportCallback",
    "LoraArguments",
    "ModelArguments",
    "MultimodalTrainer",
    "MultimodalTrainingArguments",
    "SFT",
    "SFTConfig",
    "Stage",
    "StageData",
    "apply_freezing",
    "apply_lora",
    "build_stage",
    "build_stage_data",
    "build_trainer",
    "find_components",
    "lora_target_regex",
    "main",
    "merge_lora",
    "merge_lora_main",
    "parameter_table",
    "parse_args",
    "run_stage",
    "sample_lengths",
    "train",
]
