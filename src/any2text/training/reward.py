"""Reward model: a bias-free `score` head on LlamaVisionAudio, trained on image / audio / text preference pairs.

From stage 2's output, LoRA on the language model (the `score` head trains fully and is saved beside the adapter)::

    deepspeed --module any2text.reward --model_name_or_path out/stage2 --deepspeed examples/ds_z3_config.json \\
        --train_datasets openbmb/RLAIF-V-Dataset, --train_template RLAIF-V, --output_dir out/rm --bf16 True \\
        --freeze_language_model False --use_peft True --center_rewards_coefficient 0.01

The same module runs under `python -m any2text.reward`, `torchrun -m any2text.reward`, `any2text reward` and with one
`.yaml` / `.json` config file. The model and LoRA flags are `any2text.train`'s; `RewardConfig` holds TRL's
`RewardConfig` names (`max_length`, `center_rewards_coefficient`, `disable_dropout`) beside the data flags of
`any2text.dpo` (every preference template: `AA_TI2T`, `AA_TA2T`, `RLAIF-V`, `TRL-Preference`; an optional `margin`
column) and the stock `TrainingArguments`. The starting checkpoint is any LlamaVisionAudio checkpoint or a stock Llava
one (`load_reward_model`).

Loss and metrics are TRL `RewardTrainer`'s: `-logsigmoid(r_chosen - r_rejected - margin)`, plus
`center_rewards_coefficient * mean((r_chosen + r_rejected) ** 2)`; `accuracy`, `margin`, `min_reward`, `mean_reward`,
`max_reward` (`eval_` prefixed in evaluation). Unlike TRL, which forwards chosen and rejected as two sequences (and
drops images), a pair is ONE row `[prompt | chosen | rejected]` (`any2text.dpo`'s layout): the media are encoded and
the prompt is run once, the rejected answer never attends to the chosen one, and each reward is the score at the last
non-pad token of its answer, exactly what `AutoModelForSequenceClassification` gives `prompt + answer` alone.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoProcessor
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..cli import setup_logging
from ..data.preference import PreferenceCollator
from ..models.llama_vision_audio import LlamaVisionAudioConfig, LlamaVisionAudioForSequenceClassification
from ..models.llama_vision_audio.modeling_llama_vision_audio import LLAVA_KEY_MAPPING
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .dpo import _MODEL_KEYS, _attention_mask, _config_of, build_preference_dataset, disable_dropout
from .model import mark_zero3_leaf_towers, prepare_model
from .parsing import parse_argument_groups
from .throughput import check_packing_arguments, pack_dataset
from .train import run_stage
from .trainer import DataReportCallback, MultimodalTrainer
from .workarounds import check_cpu_deepspeed, init_cpu_deepspeed, keep_saved_keys_after_zero3_load

logger = logging.get_logger(__name__)

MARGIN_COLUMN = "margin"


@dataclass
class RewardConfig(MultimodalTrainingArguments, DataArguments):
    """The stock `TrainingArguments`, the preference data flags (`--train_datasets`, `--max_length`, `--truncation`,
    `--packing`...) and the reward knobs under TRL `RewardConfig`'s names."""

    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={
            "help": "Weight of `mean((r_chosen + r_rejected) ** 2)` added to the loss, which keeps rewards centred "
            "on zero (TRL's name; 0.01 is the usual value). Default: None (off)."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in the model (TRL's default)."})

    def __post_init__(self):
        DataArguments.__post_init__(self)
        if self.center_rewards_coefficient is not None and not self.center_rewards_coefficient >= 0:
            raise ValueError(
                f"`--center_rewards_coefficient` must be >= 0 (or unset), got {self.center_rewards_coefficient}."
            )
        super().__post_init__()


# ---------------------------------------------------------------------------------------------------------------------
# Loss, metrics and the rewards of a pair row (pure functions)


def reward_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """TRL `RewardTrainer`'s loss over pairs: `-logsigmoid(chosen - rejected - margin).mean()`, plus
    `center_rewards_coefficient * mean((chosen + rejected) ** 2)` when the coefficient is set."""
    difference = chosen - rejected
    if margin is not None:
        difference = difference - margin
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
    return loss


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL `RewardTrainer`'s metrics of a batch of pairs: `accuracy` (chosen scored higher), mean `margin`, and the
    `min_reward` / `mean_reward` / `max_reward` over every reward (chosen and rejected)."""
    rewards = torch.cat([chosen, rejected])
    return {
        "accuracy": (chosen > rejected).float().mean(),
        "margin": (chosen - rejected).mean(),
        "min_reward": rewards.min(),
        "mean_reward": rewards.mean(),
        "max_reward": rewards.max(),
    }


def answer_end_columns(
    input_ids: torch.Tensor, position_ids: torch.Tensor, pad_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each pair's rewards are read in a `PreferenceCollator` batch: `(rows, chosen_columns, rejected_columns)`,
    one entry per pair in batch order (`pair_mask`'s order), padded, padding-free and packed layouts alike.

    A pair's `prompt + chosen` is a run of positions counting up from 0 and its rejected answer a run continuing from
    the prompt's end (positions > 0); padding columns have position 0 and stand alone. Within an answer's run the
    column read is the last one that is not `pad_token_id`: the token `AutoModelForSequenceClassification` pools for
    `prompt + answer` alone. A padding pair (`ensure_image`) has no rejected run; its chosen column is used twice.
    """
    rows, length = input_ids.shape
    breaks = torch.ones_like(input_ids, dtype=torch.bool)  # a run starts at this column
    breaks[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    ends = torch.ones_like(breaks)
    ends[:, :-1] = breaks[:, 1:]
    starts, stops = breaks.nonzero(), ends.nonzero()  # row-major: the k-th start and k-th stop are one run
    run_row, first, last = starts[:, 0], starts[:, 1], stops[:, 1]
    start_position = position_ids[run_row, first]
    is_chosen = (start_position == 0) & (last > first)
    is_rejected = start_position > 0
    columns = torch.arange(length, device=input_ids.device).expand(rows, length)
    if pad_token_id is None:
        last_real = columns
    else:
        last_real = torch.where(input_ids != pad_token_id, columns, -1).cummax(dim=1).values
    end = last_real[run_row, last]
    end = torch.where(end >= first, end, last)
    answers = (is_chosen | is_rejected).nonzero().flatten()  # padding runs left out: in order, chosen then rejected
    run_row, end, is_chosen, is_rejected = run_row[answers], end[answers], is_chosen[answers], is_rejected[answers]
    chosen_runs = is_chosen.nonzero().flatten()
    following = (chosen_runs + 1).clamp(max=len(run_row) - 1)
    paired = (chosen_runs + 1 < len(run_row)) & is_rejected[following] & (run_row[following] == run_row[chosen_runs])
    rejected_runs = torch.where(paired, following, chosen_runs)
    return run_row[chosen_runs], end[chosen_runs], end[rejected_runs]


def pair_rewards(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], pad_token_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards `(pairs,)` of the chosen and rejected answers of a `PreferenceCollator` batch, from one forward.

    Reads `input_ids`, `attention_mask` (4D pair mask), `position_ids`, the media keys and `pair_mask`.
    `pad_token_id`: the model's (`config.get_text_config().pad_token_id`, read from `model` when not given; a
    DeepSpeed engine hides it, so the trainer passes it).
    """
    inputs = {key: batch[key] for key in _MODEL_KEYS if key in batch}
    outputs = model(
        **inputs, attention_mask=_attention_mask(model, batch["attention_mask"]), logits_to_keep=0, use_cache=False
    )
    scores = outputs.logits[..., 0]
    if pad_token_id is None:
        pad_token_id = _config_of(model).get_text_config().pad_token_id
    rows, chosen, rejected = answer_end_columns(batch["input_ids"], batch["position_ids"], pad_token_id)
    if len(rows) != len(batch["pair_mask"]):
        raise ValueError(
            f"Found {len(rows)} answers to score in a batch of {len(batch['pair_mask'])} pairs: the batch is not in "
            "`PreferenceCollator`'s layout (positions counting up from 0 through prompt + chosen, continuing from "
            "the prompt through rejected)."
        )
    return scores[rows, chosen], scores[rows, rejected]


# ---------------------------------------------------------------------------------------------------------------------
# Data: the pair collator plus the optional `margin` column


def margin_table(dataset: torch.utils.data.Dataset | None) -> dict[tuple[str, int], float]:
    """The `margin` column of every dataset behind `dataset` (a `build_preference_dataset` result), by
    `(dataset name, row)` as the items' `source` names them; datasets without the column have no entries."""
    base = getattr(dataset, "dataset", dataset)
    table: dict[tuple[str, int], float] = {}
    for spec, data in zip(getattr(base, "specs", []), getattr(base, "datasets", [])):
        if MARGIN_COLUMN not in data.column_names:
            continue
        for row, value in enumerate(data[MARGIN_COLUMN]):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(
                    f"Row {row} of dataset {spec} has `margin={value!r}`; expected a finite number (how much the "
                    "chosen answer should out-score the rejected one). Fix the row, or drop the `margin` column."
                )
            table[(str(spec), row)] = float(value)
    return table


class RewardCollator(PreferenceCollator):
    """`PreferenceCollator` whose batches also hold `margin` `(pairs,)`: each pair's row of the `margin` column
    (`margins`, from `margin_table`), 0 for rows without one and for padding pairs."""

    def __init__(self, *args, margins: Mapping[tuple[str, int], float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.margins = dict(margins or {})

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(samples)
        if self.margins and "index" in batch:
            flat = [item for sample in samples for item in sample.get("packed", [sample])]
            sources = {item["index"]: item.get("source") or {} for item in flat}
            batch["margin"] = torch.tensor([
                self.margins.get((sources[i].get("dataset"), sources[i].get("index")), 0.0) if keep else 0.0
                for i, keep in zip(batch["index"].tolist(), batch["pair_mask"].tolist())
            ])  # fmt: skip
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# The model and the trainer


def load_reward_model(
    model_name_or_path: str, num_labels: int = 1, **kwargs
) -> LlamaVisionAudioForSequenceClassification:
    """`LlamaVisionAudioForSequenceClassification` from a LlamaVisionAudio checkpoint (a stage-2 output, or a trained
    reward model) or from a stock Llava one (its config mapped by `LlamaVisionAudioConfig.from_llava_config`, its
    projector renamed by `LLAVA_KEY_MAPPING`). A new `score` head is initialised, and logged."""
    config = AutoConfig.from_pretrained(model_name_or_path)
    if config.model_type == "llava":
        kwargs.update(config=LlamaVisionAudioConfig.from_llava_config(config, num_labels=num_labels))
        kwargs.update(key_mapping=LLAVA_KEY_MAPPING)
        model, info = LlamaVisionAudioForSequenceClassification.from_pretrained(
            model_name_or_path, output_loading_info=True, **kwargs
        )
        # transformers keeps a user's `key_mapping` to save the weights back under the checkpoint's (Llava's) names;
        # this is a LlamaVisionAudio model now and must save under its own. No public switch: the record is the one
        # `keep_saved_keys_after_zero3_load` drops too.
        model._weight_conversions = None
    else:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path, num_labels=num_labels, output_loading_info=True, **kwargs
        )
    if not isinstance(model, LlamaVisionAudioForSequenceClassification):
        raise ValueError(
            f"`{model_name_or_path}` loads as `{type(model).__name__}`; the reward model starts from a LlamaVisionAudio "
            "or a stock Llava checkpoint (what `any2text build` and `any2text train` write)."
        )
    if any(key.startswith("score.") for key in info["missing_keys"]):
        logger.info(
            f"`{model_name_or_path}` has no reward head: `score` ({model.config.text_config.hidden_size} -> "
            f"{model.num_labels}, no bias) is newly initialised and will be trained."
        )
    return model


class RewardTrainer(MultimodalTrainer):
    """`Trainer` whose loss is TRL `RewardTrainer`'s, on `RewardCollator` batches (one row per pair)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.model_accepts_loss_kwargs = False  # a mean over pairs: the Trainer divides by accumulation steps
        # Read now: once DeepSpeed wraps the model, `model.config` is DeepSpeed's own.
        self.pad_token_id = _config_of(self.model).get_text_config().pad_token_id
        if getattr(self.args, "disable_dropout", True):
            disable_dropout(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_rewards(model, inputs, self.pad_token_id)
        keep = inputs["pair_mask"]
        chosen, rejected = chosen[keep], rejected[keep]
        margin = inputs["margin"][keep] if "margin" in inputs else None
        loss = reward_loss(chosen, rejected, margin, getattr(self.args, "center_rewards_coefficient", None))
        pairs = self.accelerator.gather_for_metrics(torch.stack([chosen, rejected], dim=1).detach().float())
        metrics = reward_metrics(pairs[:, 0], pairs[:, 1])
        values = torch.stack(list(metrics.values())).tolist()  # one device sync for all of them
        for name, value in zip(metrics, values, strict=True):
            self._metrics["train" if model.training else "eval"][name].append(value)
        return (loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged reward metrics since the last log (TRL's names; `eval_` prefixed in evaluation)."""
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        self._metrics[mode].clear()
        logs.update(metrics)  # in place, as TRL does: `evaluate()` returns (and saves) these too
        super().log(logs, start_time)


# ---------------------------------------------------------------------------------------------------------------------
# Entry point

ARGUMENT_GROUPS = (ModelArguments, LoraArguments, RewardConfig)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, LoraArguments, RewardConfig]:
    """Flags, or one `.yaml` / `.json` config file, into the three argument groups."""
    return parse_argument_groups(ARGUMENT_GROUPS, argv)


def build_reward_trainer(model_args: ModelArguments, lora_args: LoraArguments, args: RewardConfig) -> RewardTrainer:
    """Reward model (freezing policy, optional LoRA, `score` always trained), preference data, pair collator."""
    if not args.train_datasets:
        raise ValueError("Nothing to train on: pass `--train_datasets` and a preference `--train_template`.")
    if args.train_sampling_strategy == "group_by_length":
        raise ValueError("`--train_sampling_strategy group_by_length` is not supported for pairs yet, as in DPO.")
    args.remove_unused_columns = False  # samples are `{"messages": ...}`
    kwargs = {"dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = load_reward_model(model_args.model_name_or_path, **kwargs)
    if is_deepspeed_zero3_enabled():
        mark_zero3_leaf_towers(model)
        keep_saved_keys_after_zero3_load(model)
    processor = AutoProcessor.from_pretrained(model_args.processor_name_or_path or model_args.model_name_or_path)
    model = prepare_model(model, model_args, lora_args, args)
    if args.padding_free or args.packing:
        check_packing_arguments(args)
    train_dataset = build_preference_dataset(args, "train", processor, args.seed)
    eval_dataset = build_preference_dataset(args, "eval", processor, args.seed)
    collator = RewardCollator(
        processor, max_length=args.max_length, truncation=args.truncation, padding_free=args.padding_free or
        args.packing, margins={**margin_table(train_dataset), **margin_table(eval_dataset)},
    )  # fmt: skip
    if args.packing:
        train_dataset, eval_dataset = (
            pack_dataset(train_dataset, collator, args),
            pack_dataset(eval_dataset, collator, args),
        )
    return RewardTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collator,
        processing_class=processor, callbacks=[DataReportCallback(collator, train_dataset)],
    )  # fmt: skip


def reward(model_args: ModelArguments, lora_args: LoraArguments, args: RewardConfig) -> RewardTrainer:
    """Train the reward model; save it (or its adapter and `score` head), the processor, state, card and metrics."""
    transformers.set_seed(args.seed)
    trainer = build_reward_trainer(model_args, lora_args, args)
    card_section = (
        "\n## Reward model\n\nA `score` head at the last non-pad token (`AutoModelForSequenceClassification`), trained "
        f"with TRL's pairwise loss, `center_rewards_coefficient={args.center_rewards_coefficient}`.\n"
    )
    return run_stage(trainer, model_args, args, lora_args, args, card_section=card_section)


def main(argv: list[str] | None = None) -> int:
    """`python -m any2text.reward` / `any2text reward`: parse the arguments and train the reward model."""
    argv = list(sys.argv[1:] if argv is None else argv)
    init_cpu_deepspeed(argv)
    model_args, lora_args, args = parse_args(argv)
    check_cpu_deepspeed(args)
    setup_logging(args)
    reward(model_args, lora_args, args)
    return 0


__all__ = [
    "RewardCollator",
    "RewardConfig",
    "RewardTrainer",
    "answer_end_columns",
    "build_reward_trainer",
    "load_reward_model",
    "main",
    "margin_table",
    "pair_rewards",
    "reward",
    "reward_loss",
    "reward_metrics",
]
