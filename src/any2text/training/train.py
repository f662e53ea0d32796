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

import difflib
import json
import logging as pylogging
import os
import sys

import torch
import transformers
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..data.bad_rows import BAD_ROWS_FILE, BadRowLog
from ..data.collator import MultimodalCollator
from ..data.loading import MultimodalDataset, parse_dataset_specs
from ..models.llama_vision_audio import LlamaVisionAudioPreTrainedModel
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .checkpoints import resolve_resume_checkpoint
from .freezing import apply_freezing, find_components, parameter_table
from .lora import apply_lora
from .model_card import training_card
from .nonfinite import NonFiniteError
from .throughput import (
    ThroughputCallback,
    apply_liger_kernel,
    language_model_attention,
    prepare_packing,
    warn_if_data_in_main_process,
)
from .trainer import DataReportCallback, MultimodalTrainer, sample_lengths

logger = logging.get_logger(__name__)

ARGUMENT_GROUPS = (ModelArguments, DataArguments, LoraArguments, MultimodalTrainingArguments)
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def make_parser() -> HfArgumentParser:
    # No abbreviations: `--lora_alph 8` must fail rather than silently mean `--lora_alpha 8`.
    return HfArgumentParser(ARGUMENT_GROUPS, allow_abbrev=False)


def _config_file(argv: list[str]) -> tuple[str | None, dict]:
    """The config file when it is the only argument besides launcher flags, and those flags.

    The DeepSpeed launcher puts `--local_rank=N` before the script's own arguments, so
    `deepspeed --module any2text.train stage2.yaml` arrives as `['--local_rank=0', 'stage2.yaml']`.
    """
    rest, launcher = [], {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("--local_rank="):
            launcher["local_rank"] = int(arg.split("=", 1)[1])
        elif arg == "--local_rank" and index + 1 < len(argv):
            launcher["local_rank"] = int(argv[index + 1])
            index += 1
        else:
            rest.append(arg)
        index += 1
    if len(rest) == 1 and rest[0].endswith(_CONFIG_SUFFIXES):
        return rest[0], launcher
    return None, {}


def _read_config(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"`{path}` must hold a mapping of argument names to values, got {type(config).__name__}.")
    return config


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, LoraArguments, TrainingArguments]:
    """Parse flags, or a single `.yaml` / `.json` config file, into the four argument groups.

    Raises:
        ValueError: an unknown or misspelled flag (with the closest known flag) or config-file key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    path, launcher = _config_file(argv)
    if path is not None:
        return parser.parse_dict({**_read_config(path), **launcher}, allow_extra_keys=False)
    *groups, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        known = [option for action in parser._actions for option in action.option_strings]
        hints = []
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
                hints.append(f"`{arg}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise ValueError(
            f"Unknown arguments: {', '.join(hints) or unknown}. Flags are never abbreviated; see `--help` for the "
            "full list."
        )
    return tuple(groups)


def _init_cpu_deepspeed(argv: list[str]) -> None:
    """On CPU, DeepSpeed needs its process group made with gloo before `TrainingArguments` is built.

    `TrainingArguments` sets up distributed state while it is parsed, and DeepSpeed's CPU accelerator would otherwise
    pick a backend that is not there. Only under a launcher (`LOCAL_RANK` set): a bare `python` would make DeepSpeed
    look for MPI, so launch even one CPU process with `torchrun`.
    """
    if torch.cuda.is_available() or "LOCAL_RANK" not in os.environ:
        return
    path, _ = _config_file(argv)
    if path is not None:
        wants_deepspeed = bool(_read_config(path).get("deepspeed"))
    else:
        wants_deepspeed = any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
    if wants_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def _check_cpu_deepspeed(training_args: TrainingArguments) -> None:
    if not training_args.deepspeed or training_args.use_cpu:
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        raise ValueError(
            "DeepSpeed runs on its CPU accelerator here, which needs `--use_cpu True` (otherwise the Trainer counts one "
            "process and DeepSpeed's batch-size check fails). Add `--use_cpu True`, and launch with `torchrun`."
        )


def _setup_logging(training_args: TrainingArguments) -> None:
    """The example scripts' setup: info on the main process, `--log_level(_replica)` elsewhere, for transformers and
    any2text alike (any2text's loggers are not under transformers' and need their level set too)."""
    pylogging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[pylogging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    pylogging.getLogger("any2text").setLevel(log_level)


def load_model_and_processor(model_args: ModelArguments):
    """The checkpoint through the Auto classes (LlamaVisionAudio and stock Llava alike) and its processor."""
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    kwargs = {"dtype": dtype}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    # `from_pretrained` (not a bare constructor) so that DeepSpeed ZeRO-3 partitions the weights while loading.
    # (Importing `any2text`, which this module's package does, registered LlamaVisionAudio with the Auto classes.)
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **kwargs)
    processor = AutoProcessor.from_pretrained(model_args.processor_name_or_path or model_args.model_name_or_path)
    return model, processor


def mark_zero3_leaf_towers(model: torch.nn.Module) -> list[str]:
    """Under ZeRO-3, make each encoder one DeepSpeed "leaf": its parameters are gathered together when it runs.

    ZeRO-3 gathers parameters module by module as they execute, and every rank must issue the same gathers. An encoder
    whose submodules run depending on the data (CLAP's fusion branch runs only for clips marked "longer") would
    otherwise make ranks diverge and deadlock (or crash gloo). LlamaVisionAudio already runs that branch every step;
    as leaves, any encoder is gathered whole whatever runs inside, with fewer hooks. Returns the towers marked.
    """
    from deepspeed.utils import set_z3_leaf_modules

    towers = find_components(model)
    marked = [name for name in ("vision_tower", "audio_tower") if name in towers]
    for name in marked:
        set_z3_leaf_modules(towers[name].modules[0], [type(towers[name].modules[0])])
    return marked


def build_dataset(
    data_args: DataArguments,
    split: str,
    processor,
    seed: int,
    bad_rows: BadRowLog | None = None,
    check_sample=None,
    validate: bool | None = None,
) -> MultimodalDataset | None:
    """The `train` or `eval` dataset the comma-list arguments describe (`None` when none is given).

    `bad_rows` (shared with the collator) records skipped rows; `check_sample` runs on each row as it is read (the
    collator's length check); `validate` (default `--validate_rows`) checks every row now.
    """
    prefix = "train" if split == "train" else "eval"
    datasets_ = getattr(data_args, f"{prefix}_datasets")
    if not datasets_:
        return None
    specs = parse_dataset_specs(
        datasets_,
        templates=getattr(data_args, f"{prefix}_template"),
        splits=getattr(data_args, f"{prefix}_split"),
        data_files=getattr(data_args, f"{prefix}_data_files"),
        names=getattr(data_args, f"{prefix}_name"),
        sizes=getattr(data_args, f"{prefix}_size"),
        weights=data_args.train_weights if prefix == "train" else None,
        media_roots=data_args.media_root if prefix == "train" else data_args.eval_media_root,
    )
    feature_extractor = getattr(processor, "feature_extractor", None)
    return MultimodalDataset(
        specs,
        sampling_rate=getattr(feature_extractor, "sampling_rate", None),
        skip_bad_rows=data_args.skip_bad_rows,
        num_samples=data_args.train_num_samples if prefix == "train" else None,
        seed=seed,
        validate_rows=data_args.validate_rows if validate is None else validate,
        max_bad_rows=data_args.max_bad_rows,
        bad_rows=bad_rows,
        allow_media_outside_root=data_args.allow_media_outside_root,
        check_sample=check_sample,
    )


def _resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """`--resume_from_checkpoint` as a path; `True` / `last` means the newest COMPLETE checkpoint in `--output_dir`.

    Torn checkpoints (a save cut by a kill or a full disk) are passed over with a warning and left in place; an
    explicit torn path is an error (see `checkpoints.resolve_resume_checkpoint`).
    """
    return resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)


def _check_lengths(lengths: list[int], collator: MultimodalCollator) -> None:
    """With lengths known up front, samples over `max_length` are reported before the first step, not mid-run."""
    if collator.max_length is None:
        return
    too_long = [i for i, length in enumerate(lengths) if length > collator.max_length]
    if not too_long:
        return
    message = (
        f"{len(too_long)} of {len(lengths)} training samples are longer than `max_length={collator.max_length}` "
        f"(e.g. sample {too_long[0]}: {lengths[too_long[0]]} tokens)."
    )
    if collator.truncation == "error":
        raise ValueError(f"{message} Raise `--max_length`, or pass `--truncation drop` / `--truncation text`.")
    logger.warning(f"{message} They are handled with `--truncation {collator.truncation}`.")


def _checked_lengths(lengths: list[int], collator: MultimodalCollator) -> list[int]:
    _check_lengths(lengths, collator)
    return lengths


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
    if is_deepspeed_zero3_enabled():
        mark_zero3_leaf_towers(model)
        # transformers 5.24's ZeRO-3 loading records every conversion it knows, legacy renamings included, as applied;
        # saving then "reverts" them and writes `model.language_model.model.*` keys that load as missing weights.
        # Without a record, saving reverts only the model's standard mapping, exactly as after a non-ZeRO-3 load.
        if getattr(model, "_weight_conversions", None) is not None:
            logger.info("ZeRO-3: dropping the load-time weight-conversion record so the saved keys stay ours.")
            model._weight_conversions = None
    apply_freezing(model, model_args, use_peft=lora_args.use_peft)
    apply_liger_kernel(model, training_args)  # --use_liger_kernel, on the language model (training/throughput.py)
    if training_args.gradient_checkpointing:
        # Frozen input embeddings give checkpointed blocks inputs without grad; this keeps gradients flowing.
        model.enable_input_require_grads()
    if lora_args.use_peft:
        model = apply_lora(model, lora_args, model_args)
    logger.info(f"Parameters per component:\n{parameter_table(model)}")

    # One record of bad rows for the datasets and the collator: each row counted once, one cap, one file.
    bad_rows = BadRowLog(data_args.max_bad_rows, path=os.path.join(training_args.output_dir, BAD_ROWS_FILE))
    flat = data_args.padding_free or data_args.packing  # the packing wrapper adds the blank image row itself
    collator = MultimodalCollator(
        processor,
        max_length=data_args.max_length,
        truncation=data_args.truncation,
        ensure_image=ensure_image and not flat,
        skip_bad_rows=data_args.skip_bad_rows,
        bad_rows=bad_rows,
        allow_media_outside_root=data_args.allow_media_outside_root,
    )
    # Lengths are known as soon as a row is read: a sample too long under `--truncation error` is a bad row then.
    check = collator.check_sample if data_args.max_length is not None and data_args.truncation == "error" else None
    group_by_length = training_args.train_sampling_strategy == "group_by_length"
    train_dataset = build_dataset(data_args, "train", processor, training_args.seed, bad_rows, check, validate=False)
    eval_dataset = build_dataset(data_args, "eval", processor, training_args.seed, bad_rows, check)
    measure = group_by_length or data_args.packing
    if train_dataset is not None and (data_args.validate_rows or measure):
        # One pass before step 1: bad rows found (or dropped) now, and lengths measured for grouping / packing.
        lengths = train_dataset.validate(length_fn=collator.sample_length if measure else None)
        if lengths is not None:
            _check_lengths(lengths, collator)
    # --padding_free / --packing (training/throughput.py): datasets of bins and a flattening collator.
    packed = prepare_packing(
        data_args, collator, train_dataset, eval_dataset, ensure_image,
        lengths_of=lambda dataset: _checked_lengths(sample_lengths(dataset, collator), collator),
        attn_implementation=language_model_attention(model), model=model,
    )  # fmt: skip
    train_dataset, eval_dataset = packed.train_dataset, packed.eval_dataset
    warn_if_data_in_main_process(training_args)
    # Lengths of what the sampler sees (samples, or packed rows); both datasets keep them, so this reads a list.
    train_lengths = sample_lengths(train_dataset, collator) if train_dataset is not None and group_by_length else None

    return MultimodalTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=packed.collator,
        processing_class=processor,
        callbacks=[DataReportCallback(collator, train_dataset), ThroughputCallback(packed.samples_per_item)],
        train_lengths=train_lengths,
    )


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
) -> MultimodalTrainer:
    """Run one stage: train, save the model (or adapter) and processor to `output_dir`, and `trainer_state.json`."""
    transformers.set_seed(training_args.seed)
    trainer = build_trainer(model_args, data_args, lora_args, training_args)
    result = trainer.train(resume_from_checkpoint=_resume_checkpoint(training_args))
    _report_skipped_steps(trainer, result.metrics)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        card = training_card(
            trainer.model, model_args, data_args, lora_args, training_args, parameter_table(trainer.model),
            trainer.state.log_history,
        )  # fmt: skip
        with open(os.path.join(training_args.output_dir, "README.md"), "w") as f:
            f.write(card)
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
    _init_cpu_deepspeed(argv)
    model_args, data_args, lora_args, training_args = parse_args(argv)
    _check_cpu_deepspeed(training_args)
    _setup_logging(training_args)
    train(model_args, data_args, lora_args, training_args)
    return 0


__all__ = ["build_trainer", "load_model_and_processor", "main", "make_parser", "parse_args", "train"]
