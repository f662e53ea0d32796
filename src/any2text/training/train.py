"""Train a LlamaVisionAudio or stock Llava checkpoint on the stock `Trainer`: stage 1, stage 2, LoRA, DeepSpeed.

Stage 1 (projectors only), then stage 2 (projectors + language model) from stage 1's output::

    deepspeed --master_port 29500 --module any2text.train \\
        --model_name_or_path checkpoints/llama-vision-audio --deepspeed examples/ds_z3_config.json \\
        --train_datasets liuhaotian/LLaVA-Pretrain, --train_template LLaVA, --train_data_files blip_laion_cc_sbu_558k.json \\
        --media_root data/llava-pretrain --output_dir out/stage1 --bf16 True \\
        --freeze_vision_tower True --freeze_mm_proj False --freeze_language_model True
    deepspeed --module any2text.train --model_name_or_path out/stage1 ... --freeze_language_model False

The same module runs under `python -m any2text.train` (one process), `torchrun -m any2text.train`,
`accelerate launch -m any2text.train` and `any2text train`; a single `.yaml` / `.json` file holding the arguments can
replace the flags (`python -m any2text.train examples/stage2_vision_audio.yaml`). An unknown or misspelled flag (or
config key) is an error, and flags are never abbreviated.

Multi-node: the stock launchers do it, nothing here changes. With DeepSpeed, list the nodes in a hostfile
(`node1 slots=8`) and run the same command on the first node with `deepspeed --hostfile hostfile --master_addr node1
--master_port 29500 --module any2text.train ...`; with torchrun, run on every node
`torchrun --nnodes 2 --node_rank $RANK --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node1:29500
-m any2text.train ...`. Every node needs the data and `--output_dir` on a shared filesystem (or `--save_on_each_node
True`).
"""

from __future__ import annotations

import transformers
from transformers import HfArgumentParser, TrainingArguments

from ..data.collator import MultimodalCollator
from .arguments import DataArguments, LoraArguments, ModelArguments, SFTConfig
from .model import load_model_and_processor
from .parsing import make_argument_parser, parse_argument_groups
from .stage import Stage, build_stage, run_stage, stage_main
from .trainer import MultimodalTrainer

# Supervised fine-tuning (stages 1 and 2): conversations, loss on the assistant tokens (the model's own).
SFT = Stage(
    name="sft",
    data="samples",
    collator_class=MultimodalCollator,
    trainer_class=MultimodalTrainer,
    config_class=SFTConfig,
)
ARGUMENT_GROUPS = SFT.argument_groups  # (ModelArguments, DataArguments, LoraArguments, SFTConfig)


def make_parser(groups: tuple[type, ...] = ARGUMENT_GROUPS) -> HfArgumentParser:
    return make_argument_parser(groups)


def parse_args(
    argv: list[str] | None = None, groups: tuple[type, ...] = ARGUMENT_GROUPS
) -> tuple[ModelArguments, DataArguments, LoraArguments, TrainingArguments]:
    """Parse flags, or a single `.yaml` / `.json` config file, into the argument groups (see `training.parsing`).

    Raises:
        ValueError: an unknown or misspelled flag (with the closest known flag) or config-file key.
    """
    return parse_argument_groups(groups, argv)


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
) -> MultimodalTrainer:
    """Model, freezing policy, optional LoRA, datasets and collator, assembled into a `MultimodalTrainer`."""
    return build_stage(SFT, model_args, data_args, lora_args, training_args)


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
) -> MultimodalTrainer:
    """Run one stage: train, save the model (or adapter) and processor to `output_dir`, and `trainer_state.json`.

    `--resume_from_checkpoint True` resumes from the newest complete checkpoint in `--output_dir` (torn ones are passed
    over with a warning; see `checkpoints.resolve_resume_checkpoint`).
    """
    transformers.set_seed(training_args.seed)
    trainer = build_trainer(model_args, data_args, lora_args, training_args)
    return run_stage(trainer, model_args, data_args, lora_args, training_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m any2text.train` / `any2text train`: parse the arguments and run one stage."""
    return stage_main(argv, parse_args, train)


__all__ = [
    "SFT",
    "build_trainer",
    "load_model_and_processor",
    "main",
    "make_parser",
    "parse_args",
    "run_stage",
    "train",
]
