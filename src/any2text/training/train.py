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

import os
import sys

import transformers
from transformers import HfArgumentParser, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..cli import setup_logging
from ..models.llama_vision_audio import LlamaVisionAudioPreTrainedModel
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .checkpoints import resolve_resume_checkpoint
from .data_setup import build_training_data
from .freezing import parameter_table
from .model import load_model_and_processor, prepare_model
from .model_card import training_card
from .nonfinite import NonFiniteError
from .parsing import make_argument_parser, parse_argument_groups
from .throughput import ThroughputCallback, language_model_attention, warn_if_data_in_main_process
from .trainer import DataReportCallback, MultimodalTrainer
from .workarounds import check_cpu_deepspeed, init_cpu_deepspeed

logger = logging.get_logger(__name__)

ARGUMENT_GROUPS = (ModelArguments, DataArguments, LoraArguments, MultimodalTrainingArguments)


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
    if not data_args.train_datasets:
        raise ValueError("Nothing to train on: pass `--train_datasets` and `--train_template`.")
    # Samples are `{"messages": ...}`; the stock column filter would drop them before they reach the collator.
    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        training_args.label_names = ["labels"]

    model, processor = load_model_and_processor(model_args)
    # A stock model (Llava) cannot run its vision tower without an image; under ZeRO-3 a rank whose batch has none
    # would skip it while the others gather its parameters, and the run would hang. The collator then adds a blank
    # image row with no labels. LlamaVisionAudio runs every tower every training step by itself.
    ensure_image = is_deepspeed_zero3_enabled() and not isinstance(model, LlamaVisionAudioPreTrainedModel)
    model = prepare_model(model, model_args, lora_args, training_args)
    collator, data = build_training_data(
        data_args, training_args, processor, ensure_image, attn_implementation=language_model_attention(model),
        model=model,
    )  # fmt: skip
    warn_if_data_in_main_process(training_args)
    return MultimodalTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.collator,
        processing_class=processor,
        callbacks=[DataReportCallback(collator, data.train_dataset), ThroughputCallback(data.samples_per_item)],
    )


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


def run_stage(
    trainer: MultimodalTrainer,
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
    card_section: str = "",
) -> MultimodalTrainer:
    """What every stage does with its trainer (SFT and DPO alike): train (resuming when asked), count skipped steps,
    save the model, state and model card (`card_section` appended), log and save the metrics, evaluate."""
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
    """Count the steps `--skip_nonfinite_steps` skipped in the metrics; a run that skipped every step is an error."""
    skipped = trainer.num_nonfinite_steps_skipped
    if not skipped:
        return
    metrics["train_nonfinite_steps_skipped"] = skipped
    steps_run = trainer.state.global_step
    logger.warning(f"Skipped {skipped} of {steps_run} optimizer steps on non-finite losses or gradients (see above).")
    if skipped >= steps_run:
        raise NonFiniteError(
            f"Every one of the {steps_run} optimizer steps of this run was non-finite and skipped: nothing was learned, "
            "so nothing is saved. Check the data for non-finite media and lower `--learning_rate`."
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m any2text.train` / `any2text train`: parse the arguments and run one stage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    init_cpu_deepspeed(argv)
    model_args, data_args, lora_args, training_args = parse_args(argv)
    check_cpu_deepspeed(training_args)
    setup_logging(training_args)
    train(model_args, data_args, lora_args, training_args)
    return 0


__all__ = ["build_trainer", "load_model_and_processor", "main", "make_parser", "parse_args", "run_stage", "train"]
