"""Reward model: a bias-free `score` head on LlamaVisionAudio, trained on image / audio / text preference pairs.

From stage 2's output, LoRA on the language model (the `score` head trains fully and is saved beside the adapter)::

    deepspeed --module any2text.reward --model_name_or_path out/stage2 --deepspeed examples/ds_z3_config.json \\
        --train_datasets openbmb/RLAIF-V-Dataset, --train_template RLAIF-V, --output_dir out/rm --bf16 True \\
        --freeze_language_model False --use_peft True --center_rewards_coefficient 0.01

The same module runs under `python -m any2text.reward`, `torchrun -m any2text.reward`, `any2text reward` and with one
`.yaml` / `.json` config file. It is one more stage on the set-up every stage shares (`training.stage`, `REWARD`
below): the model, data and LoRA flags mean what they mean in `any2text.train` and `any2text.dpo` (every preference
template: `AA_TI2T`, `AA_TA2T`, `RLAIF-V`, `TRL-Preference`; an optional `margin` column), and `RewardConfig` holds
TRL's `RewardConfig` names (`max_length`, `center_rewards_coefficient`, `disable_dropout`) beside the stock
`TrainingArguments`. The starting checkpoint is any LlamaVisionAudio checkpoint or a stock Llava one
(`load_reward_model`, the stage's model loader).

Loss and metrics are TRL `RewardTrainer`'s: `-logsigmoid(r_chosen - r_rejected - margin)`, plus
`center_rewards_coefficient * mean((r_chosen + r_rejected) ** 2)`; `accuracy`, `margin`, `min_reward`, `mean_reward`,
`max_reward` (`eval_` prefixed in evaluation). Unlike TRL, which forwards chosen and rejected as two sequences (and
drops images), a pair is ONE row `[prompt | chosen | rejected]` (`any2text.dpo`'s layout): the media are encoded and
the prompt is run once, the rejected answer never attends to the chosen one, and each reward is the score at the last
non-pad token of its answer, exactly what `AutoModelForSequenceClassification` gives `prompt + answer` alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, HfArgumentParser
from transformers.utils import logging

from ..data.collator import EMPTY_BATCH_KEY
from ..data.preference import PreferenceCollator
from ..models.llama_vision_audio import LlamaVisionAudioConfig, LlamaVisionAudioForSequenceClassification
from ..models.llama_vision_audio.modeling_llama_vision_audio import LLAVA_KEY_MAPPING
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .dpo import _config_of, disable_dropout, pair_forward
from .parsing import make_argument_parser, parse_argument_groups
from .stage import Stage, build_stage, run_stage, stage_main
from .trainer import MultimodalTrainer

logger = logging.get_logger(__name__)

MARGIN_COLUMN = "margin"


@dataclass
class RewardConfig(MultimodalTrainingArguments):
    """The reward stage's configuration, as TRL's `RewardConfig`: the stock `TrainingArguments`, the knobs every stage
    shares (`max_length`, `truncation`, `padding_free`, `packing`...; see `MultimodalTrainingArguments`), and the
    reward model's own under TRL's names."""

    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={
            "help": "Weight of `mean((r_chosen + r_rejected) ** 2)` added to the loss, which keeps rewards centred "
            "on zero (TRL's name; 0.01 is the usual value). Default: None (off)."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in the model (TRL's default)."})

    def __post_init__(self):
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
    batch: Mapping[str, torch.Tensor], pad_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each pair's rewards are read in a pair batch (see `PreferenceCollator`): `(rows, chosen_columns,
    rejected_columns)`, one entry per pair in `pair_mask`'s order, padded, padding-free and packed layouts alike.

    The batch names them: `pair_rows` and `answer_ends` (the last token of each answer). An answer ending in
    `pad_token_id` (a tokenizer whose pad token is its end-of-turn token) is read at its last other token, as
    `AutoModelForSequenceClassification` reads `prompt + answer` alone (the last non-pad token); the chosen answer
    may fall back into its prompt, as the Auto class would, and the rejected one stops at its own first column.
    """
    rows, ends = batch["pair_rows"], batch["answer_ends"]
    chosen, rejected = ends[:, 0], ends[:, 1]
    if pad_token_id is None:
        return rows, chosen, rejected
    input_ids = batch["input_ids"]
    columns = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    last_real = torch.where(input_ids != pad_token_id, columns, -1).cummax(dim=1).values  # per column
    chosen_read = last_real[rows, chosen]
    rejected_read = last_real[rows, rejected]
    rejected_read = torch.where(rejected_read > chosen, rejected_read, rejected)  # not into the chosen answer
    return rows, torch.where(chosen_read >= 0, chosen_read, chosen), rejected_read


def pair_rewards(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], pad_token_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards `(pairs,)` of the chosen and rejected answers of a `PreferenceCollator` batch, from one forward.

    Reads `input_ids`, `attention_mask` (4D pair mask), `position_ids`, the media keys, `pair_rows` and `answer_ends`
    (`answer_end_columns`). `pad_token_id`: the model's (`config.get_text_config().pad_token_id`, read from `model`
    when not given; a DeepSpeed engine hides it, so the trainer passes it).
    """
    if pad_token_id is None:
        pad_token_id = _config_of(model).get_text_config().pad_token_id
    rows, chosen, rejected = answer_end_columns(batch, pad_token_id)
    # Scores only at the columns read (the union over rows), as DPO keeps logits only at its answer columns.
    keep, where = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
    outputs = pair_forward(model, batch, logits_to_keep=keep)
    scores = outputs.logits[..., 0]  # (rows, len(keep))
    pairs = len(rows)
    return scores[rows, where[:pairs]], scores[rows, where[pairs:]]


# ---------------------------------------------------------------------------------------------------------------------
# Data: the pair collator plus the optional `margin` column


def margin_table(dataset: torch.utils.data.Dataset | None) -> dict[tuple[str, int], float]:
    """The `margin` column of every dataset behind `dataset` (a `PreferenceDataset`, packed or not), by
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
    """`Trainer` whose loss is TRL `RewardTrainer`'s, on `RewardCollator` batches (one row per pair).

    The `margin` column of the train and eval datasets, where they have one, reaches the collator's batches here.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.model_accepts_loss_kwargs = False  # a mean over pairs: the Trainer divides by accumulation steps
        # Read now: once DeepSpeed wraps the model, `model.config` is DeepSpeed's own.
        self.pad_token_id = _config_of(self.model).get_text_config().pad_token_id
        if getattr(self.args, "disable_dropout", True):
            disable_dropout(self.model)
        if isinstance(self.collator, RewardCollator):
            self.collator.margins.update({**margin_table(self.train_dataset), **margin_table(self.eval_dataset)})

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_rewards(model, inputs, self.pad_token_id)
        keep = inputs["pair_mask"]
        if keep.any():
            margin = inputs["margin"][keep] if "margin" in inputs else None
            loss = reward_loss(
                chosen[keep], rejected[keep], margin, getattr(self.args, "center_rewards_coefficient", None)
            )
        else:
            # No real pair (the placeholder of an empty batch on one rank of several): a zero loss that still runs
            # backward through the same modules as the other ranks.
            loss = (chosen.sum() + rejected.sum()) * 0.0
        pairs = torch.stack([chosen[keep], rejected[keep]], dim=1).detach().float()
        # Ranks may hold different numbers of pairs (a dropped pair, an empty batch): pad to one shape with NaN
        # before the gather (a collective needs equal shapes), then score what is real.
        pairs = self.accelerator.gather(self.accelerator.pad_across_processes(pairs, dim=0, pad_index=float("nan")))
        pairs = pairs[~pairs.isnan().any(dim=1)]
        if len(pairs):
            metrics = reward_metrics(pairs[:, 0], pairs[:, 1])
            values = torch.stack(list(metrics.values())).tolist()  # one device sync for all of them
            for name, value in zip(metrics, values, strict=True):
                self._metrics["train" if model.training else "eval"][name].append(value)
        outputs = {"rewards_chosen": chosen[keep], "rewards_rejected": rejected[keep]}
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if inputs.get(EMPTY_BATCH_KEY):
            return None, None, None  # every pair of this batch dropped or skipped: nothing to evaluate
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

# The reward model: pairs in one row `[prompt | chosen | rejected]`, a score at the end of each answer, TRL's loss.
REWARD = Stage(
    name="reward",
    data="pairs",
    collator_class=RewardCollator,
    trainer_class=RewardTrainer,
    config_class=RewardConfig,
    load_model=load_reward_model,
)
ARGUMENT_GROUPS = REWARD.argument_groups  # (ModelArguments, DataArguments, LoraArguments, RewardConfig)


def make_parser() -> HfArgumentParser:
    return make_argument_parser(ARGUMENT_GROUPS)


def parse_args(argv: list[str] | None = None):
    """Flags, or one `.yaml` / `.json` config file, into `(ModelArguments, DataArguments, LoraArguments,
    RewardConfig)` (as `any2text.train` parses)."""
    return parse_argument_groups(ARGUMENT_GROUPS, argv)


def reward(
    model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments, training_args: RewardConfig
) -> RewardTrainer:
    """Train the reward model; save it (or its adapter and `score` head), the processor, state, card and metrics."""
    transformers.set_seed(training_args.seed)
    trainer = build_stage(REWARD, model_args, data_args, lora_args, training_args)
    card_section = (
        "\n## Reward model\n\nA `score` head at the last non-pad token (`AutoModelForSequenceClassification`), "
        f"trained with TRL's pairwise loss, `center_rewards_coefficient={training_args.center_rewards_coefficient}`.\n"
    )
    return run_stage(trainer, model_args, data_args, lora_args, training_args, card_section=card_section)


def main(argv: list[str] | None = None) -> int:
    """`python -m any2text.reward` / `any2text reward`: parse the arguments and train the reward model."""
    return stage_main(argv, parse_args, reward)


__all__ = [
    "REWARD",
    "RewardCollator",
    "RewardConfig",
    "RewardTrainer",
    "answer_end_columns",
    "load_reward_model",
    "main",
    "margin_table",
    "pair_rewards",
    "reward",
    "reward_loss",
    "reward_metrics",
]
