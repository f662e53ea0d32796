"""The model card of a trained stage: what it started from, what trained, on what data, and how it went."""

from pathlib import Path

from huggingface_hub import ModelCard
from transformers import PreTrainedModel, TrainingArguments

from ..builders.checkpoint import card_front_matter
from .arguments import DataArguments, LoraArguments, ModelArguments
from .plots import CURVES_FILE


def _previous_card(model_name_or_path: str) -> list[str]:
    """The body of the starting checkpoint's card (builder or earlier stage), without its front matter."""
    path = Path(model_name_or_path) / "README.md"
    if not path.is_file():
        return []
    text = ModelCard(path.read_text()).text
    # Its curves image is a file of that folder, not of this one: the link would show this stage's curves.
    lines = [line for line in text.strip().splitlines() if f"]({CURVES_FILE})" not in line]
    body = [f"#{line}" if line.startswith("#") else line for line in lines]
    return ["## Starting checkpoint", "", *body, ""]


def training_card(
    model: PreTrainedModel,
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
    parameter_table: str,
    log_history: list[dict],
) -> str:
    """A README.md for `output_dir` after a stage; the starting checkpoint's card is kept below it."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    summary = next((entry for entry in reversed(log_history) if "train_runtime" in entry), {})
    schedule = training_args.lr_scheduler_type
    steps = training_args.max_steps
    length = f"{steps} steps" if steps and steps > 0 else f"{training_args.num_train_epochs:g} epoch(s)"
    front_matter = card_front_matter(
        [model_args.model_name_or_path], model.config.model_type, "peft" if lora_args.use_peft else "transformers"
    )
    lines = [
        f"# {Path(training_args.output_dir).name}: trained with any2text",
        "",
        f"Started from `{model_args.model_name_or_path}` and trained with `python -m any2text.train`.",
        "",
        "## What trained",
        "",
        "```",
        parameter_table,
        "```",
        "",
    ]
    if lora_args.use_peft:
        lines += [
            f"LoRA on the language model only: r={lora_args.lora_r}, alpha={lora_args.lora_alpha}, "
            f"dropout={lora_args.lora_dropout}. Merge with `any2text merge-lora --model OUTPUT --output MERGED`.",
            "",
        ]
    lines += [
        "## Data",
        "",
        f"- datasets: `{data_args.train_datasets}`",
        f"- templates: `{data_args.train_template}`, splits: `{data_args.train_split}`",
    ]
    if data_args.train_weights:
        lines.append(f"- sampling weights: `{data_args.train_weights}`")
    lines += [
        "",
        "## Hyper-parameters and result",
        "",
        f"- learning rate {training_args.learning_rate} ({getattr(schedule, 'value', schedule)} schedule), {length}, "
        f"{training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
        f"accumulation x {training_args.world_size} process(es)",
        f"- precision: {'bf16' if training_args.bf16 else 'fp16' if training_args.fp16 else 'fp32'}; "
        f"DeepSpeed: {training_args.deepspeed or 'no'}",
    ]
    if losses:
        lines.append(f"- training loss: {losses[0]:.4g} at the first log, {losses[-1]:.4g} at the last")
    if summary:
        lines.append(f"- {summary.get('step', '?')} steps in {summary['train_runtime']:.0f} s")
    lines += ["", "The full loss history is in `trainer_state.json`.", ""]
    if (Path(training_args.output_dir) / CURVES_FILE).is_file():
        lines += [f"![Training curves: loss, learning rate, gradient norm and the stage's metrics]({CURVES_FILE})", ""]
    return front_matter + "\n".join(lines + _previous_card(model_args.model_name_or_path))
