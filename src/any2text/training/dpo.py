"""Stage 3: preference alignment (DPO) of image, audio and mixed any-to-text models on the stock `Trainer`.

From stage 2's output, LoRA on the language model (the reference is the same model with its adapters disabled)::

    deepspeed --module any2text.dpo --model_name_or_path out/stage2 --deepspeed examples/ds_z3_config.json \\
        --train_datasets openbmb/RLAIF-V-Dataset, --train_template RLAIF-V, --output_dir out/dpo --bf16 True \\
        --freeze_language_model False --use_peft True --beta 0.1 --loss_type sigmoid

The same module runs under `python -m any2text.dpo`, `torchrun -m any2text.dpo`, `any2text dpo` and with a single
`.yaml` / `.json` config file, exactly like `any2text.train`, whose model / data / LoRA argument groups and freezing
flags it shares; the DPO arguments keep TRL's names (`beta`, `loss_type`, `label_smoothing`,
`precompute_ref_log_probs`, `rpo_alpha`) and `ref_model_name_or_path` names the reference of a full fine-tune (default: the
starting checkpoint). Logged metrics are TRL's: `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
`rewards/margins`, `logps/chosen`, `logps/rejected`.

Why a `Trainer` with a DPO `compute_loss` rather than a subclass of TRL's `DPOTrainer`: TRL's trainer tokenizes its
own way (prompt / completion ids, image-only processors), forwards `[chosen; rejected]` as two sequences with the
media duplicated, computes full logits, and has no audio inputs; overriding that leaves only its loss formulas, which
are a few lines (`dpo_loss` below). Here one row per pair holds `[prompt | chosen | rejected]` (see
`any2text.data.preference.PreferenceCollator`), so the model's own forward encodes each image and clip once, runs the
prompt through the language model once, and computes logits only at answer positions (`logits_to_keep`); it also
keeps the model's zero-contribution tower dummies, so mixed-modality batches do not hang under ZeRO-3.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

from ..data.collator import EMPTY_BATCH_KEY
from ..data.preference import PreferenceCollator
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .model import load_model_and_processor
from .nonfinite import ROW_IDS_KEY
from .parsing import make_argument_parser, parse_argument_groups
from .stage import Stage, build_stage, reference_description, run_stage, stage_main
from .trainer import MultimodalTrainer

logger = logging.get_logger(__name__)

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
# Batch keys only the loss (or the trainer) reads; everything else a pair batch holds is the model's input (TRL's
# deny-list): the tokens, positions, token types and every medium's processor outputs, whatever the modalities.
# `attention_mask`, `logits_to_keep` and `use_cache` go to the model too, as `pair_forward` gives them.
LOSS_KEYS = (
    "attention_mask",
    "logits_to_keep",
    "answer_labels",
    "answer_slots",
    "pair_mask",
    "pair_rows",
    "answer_ends",
    "index",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "margin",
    "sources",
    ROW_IDS_KEY,
    "use_cache",
    EMPTY_BATCH_KEY,
)


@dataclass
class DPOConfig(MultimodalTrainingArguments):
    """The DPO stage's configuration, as TRL's `DPOConfig`: the stock `TrainingArguments`, the knobs every stage shares
    (`max_length`, `truncation`, `padding_free`, `packing`...; see `MultimodalTrainingArguments`), and DPO's own
    hyper-parameters under TRL's names, with the reference model."""

    beta: float = field(
        default=0.1,
        metadata={"help": "Deviation from the reference: higher beta, less deviation (IPO: the regulariser tau)."},
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": f"DPO loss(es), one or more of {', '.join(LOSS_TYPES)}; several are combined with "
            "`--loss_weights`."
        },
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per `--loss_type` (default: 1 each)."}
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a preference label is flipped, in [0, 0.5): robust DPO's epsilon, and "
            "conservative DPO for `sigmoid`."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Compute the reference log-probs of every pair once, before the first step, so no reference "
            "model is kept (or run) during training."
        },
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of that pass; default: `per_device_train_batch_size`."}
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference model of a full fine-tune; default: `--model_name_or_path` (the starting checkpoint). "
            "With `--use_peft` the reference is the model with its adapters disabled and this must stay unset."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Turn dropout off in the policy and the reference (TRL's default)."}
    )
    rpo_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the NLL loss on the chosen answers added to the DPO loss (RPO, TRL's name; the paper "
            "uses 1.0). DPO alone only orders the two answers and may lower both; this also makes the chosen one "
            "likely, so generation follows it. Default: None (plain DPO)."
        },
    )

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        unknown = [name for name in self.loss_type if name not in LOSS_TYPES]
        if unknown:
            raise ValueError(f"Unknown `--loss_type` {unknown}; choose from {list(LOSS_TYPES)}.")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"`--loss_weights` has {len(self.loss_weights)} values for {len(self.loss_type)} loss types."
            )
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"`--label_smoothing` must lie in [0, 0.5), got {self.label_smoothing}.")
        if self.beta <= 0:
            raise ValueError(f"`--beta` must be positive, got {self.beta}.")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ValueError(f"`--rpo_alpha` must be >= 0 (or unset), got {self.rpo_alpha}.")
        super().__post_init__()


# The name of the DPO argument group before it joined `TrainingArguments` (TRL's `DPOConfig` shape).
DPOArguments = DPOConfig


# ---------------------------------------------------------------------------------------------------------------------
# The loss


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO loss from summed answer log-probs, as TRL's `DPOTrainer` computes it.

    With `delta = (chosen - ref_chosen) - (rejected - ref_rejected)`:

    - `sigmoid`: `-(1 - ls) * logsigmoid(beta * delta) - ls * logsigmoid(-beta * delta)` (DPO; conservative DPO when
      `label_smoothing = ls > 0`);
    - `robust`: `(-(1 - ls) * logsigmoid(beta * delta) + ls * logsigmoid(-beta * delta)) / (1 - 2 ls)`;
    - `hinge`: `relu(1 - beta * delta)`;
    - `ipo`: `(delta' - 1 / (2 beta)) ** 2`, with `delta'` from log-ratios averaged over each answer's tokens
      (`chosen_lengths` / `rejected_lengths`), TRL's length normalisation.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    if loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("The `ipo` loss needs `chosen_lengths` and `rejected_lengths`.")
        ipo_delta = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        return (ipo_delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"Unknown `loss_type` `{loss_type}`; choose from {list(LOSS_TYPES)}.")


def rpo_nll(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """RPO's NLL term, as TRL's `nll_loss`: cross-entropy of the chosen answers, averaged over all their tokens in the
    batch (not per pair), from the summed log-probs and token counts `pair_logps` returns."""
    return -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of `labels` under `logits` `(n, K, V)`, over positions whose label is not -100, and counts."""
    mask = labels != -100
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1), mask.sum(-1)


def pair_forward(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], logits_to_keep: torch.Tensor) -> Any:
    """The one forward of a `PreferenceCollator` batch (DPO's log-probs, the reward model's scores): the model's
    inputs, the pair layout's 4D mask in the kernel's form, outputs only at the `logits_to_keep` columns."""
    inputs = {key: value for key, value in batch.items() if key not in LOSS_KEYS}
    return model(
        **inputs,
        attention_mask=_attention_mask(model, batch["attention_mask"]),
        logits_to_keep=logits_to_keep,
        use_cache=False,
    )


def pair_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One forward of a `PreferenceCollator` batch: summed log-probs and token counts of every pair's answers.

    Returns `chosen_logps`, `rejected_logps`, `chosen_lengths`, `rejected_lengths`, one value per pair. The model
    encodes the media once (one prompt per pair) and computes logits only at `logits_to_keep`; each kept column's
    log-prob of its `answer_labels` target is summed into its `answer_slots` slot (`2 * pair + side`). One code
    path for every layout: one pair per row is the packed layout with one pair in each row.
    """
    outputs = pair_forward(model, batch, logits_to_keep=batch["logits_to_keep"])
    labels, slots = batch["answer_labels"], batch["answer_slots"]
    mask = slots >= 0
    logps = torch.log_softmax(outputs.logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    num_slots = 2 * batch["pair_mask"].shape[0]
    sums = torch.zeros(num_slots, dtype=logps.dtype, device=logps.device).index_add(0, slots[mask], logps[mask])
    counts = torch.zeros(num_slots, dtype=torch.long, device=logps.device).index_add(
        0, slots[mask], torch.ones_like(slots[mask])
    )
    return {
        "chosen_logps": sums[0::2],
        "rejected_logps": sums[1::2],
        "chosen_lengths": counts[0::2],
        "rejected_lengths": counts[1::2],
    }


def _config_of(model: torch.nn.Module):
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def _attention_mask(model: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """The pair layout's 4D mask in the form the attention kernel takes: bool for sdpa / flex, additive for eager."""
    config = _config_of(model)
    implementation = getattr(getattr(config, "text_config", config), "_attn_implementation", None) or "sdpa"
    if "flash" in implementation:
        raise ValueError(
            f"DPO puts the chosen and rejected answers of a pair in one row with a 4D attention mask, which "
            f"`{implementation}` cannot take. Use `--attn_implementation sdpa` (or `eager`)."
        )
    if implementation == "eager":
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# ---------------------------------------------------------------------------------------------------------------------
# The trainer


class DPOTrainer(MultimodalTrainer):
    """`Trainer` whose loss is DPO on `PreferenceCollator` batches.

    Args:
        dpo_args: the DPO hyper-parameters; default: `args` (a `DPOConfig`).
        ref_model: the frozen reference of a full fine-tune; `None` with LoRA (adapters disabled) and with
            `precompute_ref_log_probs` (computed before the first step, see `ref_model_loader`).
        ref_model_loader: loads the reference when one is needed but not kept in memory: precomputing after a
            resume (the policy then is no longer the reference) or for an evaluation set after training started.
    """

    def __init__(self, *args, dpo_args: DPOConfig | None = None, ref_model=None, ref_model_loader=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo_args = dpo_args if dpo_args is not None else self.args
        self.ref_model = ref_model
        self.ref_model_loader = ref_model_loader
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._ref_tables: dict[str, dict[int, tuple[float, float]]] = {}
        # The loss is a mean over pairs: the Trainer divides it by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self._is_peft = hasattr(self.model, "disable_adapter")
        if self.dpo_args.disable_dropout:
            disable_dropout(self.model)
            if ref_model is not None:
                disable_dropout(ref_model)
        if ref_model is not None:
            ref_model.requires_grad_(False)
            if self.is_deepspeed_enabled:
                self.ref_model = _prepare_deepspeed(ref_model, self.accelerator, self.args)
            else:
                self.ref_model = ref_model.to(self.args.device)

    # -- reference log-probs ------------------------------------------------------------------------------------------

    def _reference_model(self, model: torch.nn.Module):
        """The module computing reference log-probs, and a context manager to run it in."""
        from contextlib import nullcontext

        if self._is_peft and self.ref_model is None:
            unwrapped = self.accelerator.unwrap_model(model)
            return unwrapped, unwrapped.disable_adapter()
        if self.ref_model is not None:
            # The reference runs in the policy's mode: in training mode LlamaVisionAudio runs every tower on every
            # rank (zero-contribution dummies), which ZeRO-3 needs; dropout is off, so the mode changes nothing else.
            self.ref_model.train(model.training)
            return self.ref_model, nullcontext()
        return model, nullcontext()

    def reference_logps(self, model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        if self.dpo_args.precompute_ref_log_probs:
            mode = "train" if model.training else "eval"
            table = self._ref_tables.get(mode)
            if table is None:
                table = self._ref_tables[mode] = self._precompute(model, mode)
            # A padding row (`pair_mask` False, see `ensure_image`) has no pair and no entry.
            pairs = [
                table[int(i)] if keep else (0.0, 0.0)
                for i, keep in zip(inputs["index"].tolist(), inputs["pair_mask"].tolist())
            ]
            device = inputs["input_ids"].device
            return (
                torch.tensor([c for c, _ in pairs], device=device),
                torch.tensor([r for _, r in pairs], device=device),
            )
        if not self._is_peft and self.ref_model is None:
            raise ValueError("A full fine-tune needs a reference model (or `precompute_ref_log_probs`).")
        reference, context = self._reference_model(model)
        with torch.no_grad(), context:
            logps = pair_logps(reference, inputs)
        return logps["chosen_logps"], logps["rejected_logps"]

    def _precompute(self, model: torch.nn.Module, mode: str) -> dict[int, tuple[float, float]]:
        """Reference log-probs of every pair of the train (or eval) set, by dataset index.

        Every rank runs the whole set in the same order (ZeRO-3 needs the ranks' forwards to match). A full fine-tune
        without a reference model uses the policy itself, which is the reference only before the first update; later
        (a resumed run, an evaluation set after training) the reference is loaded for the pass and freed after it.
        """
        dataset = self.train_dataset if mode == "train" else self.eval_dataset
        loaded = None
        if not self._is_peft and self.ref_model is None and self.state.global_step > 0:
            if self.ref_model_loader is None:
                raise ValueError(
                    "Reference log-probs are needed after training started but no reference can be loaded; pass "
                    "`ref_model_loader`, or `precompute_ref_log_probs=False` with a `ref_model`."
                )
            loaded = self.ref_model_loader()
            if self.dpo_args.disable_dropout:
                disable_dropout(loaded)
            self.ref_model = (
                _prepare_deepspeed(loaded, self.accelerator, self.args)
                if self.is_deepspeed_enabled
                else loaded.to(self.args.device)
            )
        batch_size = self.dpo_args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,  # media decoded off the main process, as in training
        )  # fmt: skip
        table: dict[int, tuple[float, float]] = {}
        reference, context = self._reference_model(model)
        with torch.no_grad(), context:
            for batch in loader:
                if batch.get(EMPTY_BATCH_KEY):
                    continue  # every pair of it dropped or skipped: nothing to look up later either
                batch = self._prepare_inputs(batch)
                logps = pair_logps(reference, batch)
                for row, index in enumerate(batch["index"].tolist()):
                    if bool(batch["pair_mask"][row]):
                        table[index] = (float(logps["chosen_logps"][row]), float(logps["rejected_logps"][row]))
        if loaded is not None:
            self.ref_model = None
        logger.info(f"Precomputed reference log-probs of {len(table)} {mode} pairs.")
        return table

    # -- loss and metrics ---------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        policy = pair_logps(model, inputs)
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        keep = inputs["pair_mask"]
        args = self.dpo_args
        weights = args.loss_weights or [1.0] * len(args.loss_type)
        per_pair = 0.0
        for loss_type, weight in zip(args.loss_type, weights):
            per_pair = per_pair + weight * dpo_loss(
                policy["chosen_logps"], policy["rejected_logps"], ref_chosen, ref_rejected,
                beta=args.beta, loss_type=loss_type, label_smoothing=args.label_smoothing,
                chosen_lengths=policy["chosen_lengths"], rejected_lengths=policy["rejected_lengths"],
            )  # fmt: skip
        # A batch without a real pair (the placeholder of an empty batch on one rank of several): a zero loss that
        # still runs backward through the same modules as the other ranks.
        loss = per_pair[keep].mean() if keep.any() else per_pair.sum() * 0.0
        if args.rpo_alpha is not None:
            nll = rpo_nll(policy["chosen_logps"][keep], policy["chosen_lengths"][keep])
            loss = loss + args.rpo_alpha * nll

        chosen_rewards = (args.beta * (policy["chosen_logps"] - ref_chosen)).detach()[keep]
        rejected_rewards = (args.beta * (policy["rejected_logps"] - ref_rejected)).detach()[keep]
        # One gather and one device sync a step for all of TRL's metrics (a column each, a row per pair).
        per_pair_metrics = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": policy["chosen_logps"].detach()[keep],
            "logps/rejected": policy["rejected_logps"].detach()[keep],
        }
        columns = torch.stack([value.float() for value in per_pair_metrics.values()], dim=1)
        # Ranks may hold different numbers of pairs (a dropped pair, an empty batch): pad to one shape with NaN
        # before the gather (a collective needs equal shapes), then average what is real.
        columns = self.accelerator.pad_across_processes(columns, dim=0, pad_index=float("nan"))
        means = torch.nanmean(self.accelerator.gather(columns), dim=0).tolist()
        metrics = self._metrics[mode]
        for name, value in zip(per_pair_metrics, means, strict=True):
            metrics[name].append(value)
        if args.rpo_alpha is not None:
            metrics["nll_loss"].append(self.accelerator.gather(nll.detach()).mean().item())
        return (loss, policy) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged DPO metrics since the last log (TRL's names; `eval_` prefixed in evaluation)."""
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs = {**logs, **metrics}
        self._metrics[mode].clear()
        super().log(logs, start_time)


def _prepare_deepspeed(model: torch.nn.Module, accelerator, args: TrainingArguments):
    """Wrap the reference in a DeepSpeed inference engine: sharded under ZeRO-3, replicated (stage 0) otherwise.

    As TRL's `prepare_deepspeed`; "auto" values of the training config are resolved here, since the reference may be
    prepared before the Trainer resolved them for the policy.
    """
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = config.setdefault("zero_optimization", {})
    stage = zero.get("stage", 0)
    text_config = getattr(model.config, "text_config", model.config)
    hidden = getattr(text_config, "hidden_size", 1024)
    if stage == 3:
        zero["reduce_bucket_size"] = hidden * hidden
        zero["stage3_param_persistence_threshold"] = 10 * hidden
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden * hidden)
    else:
        zero["stage"] = 0
    config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    config.pop("train_batch_size", None)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    config.pop("gradient_clipping", None)
    for precision in ("bf16", "fp16"):
        if isinstance(config.get(precision), dict) and config[precision].get("enabled") == "auto":
            config[precision]["enabled"] = bool(getattr(args, precision))
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine


# ---------------------------------------------------------------------------------------------------------------------
# Entry point

# Preference alignment: pairs in one row `[prompt | chosen | rejected]`, the DPO loss on the answers' log-probs.
DPO = Stage(
    name="dpo",
    data="pairs",
    collator_class=PreferenceCollator,
    trainer_class=DPOTrainer,
    config_class=DPOConfig,
    label_names=("answer_labels",),
)
ARGUMENT_GROUPS = DPO.argument_groups  # (ModelArguments, DataArguments, LoraArguments, DPOConfig)


def make_parser() -> HfArgumentParser:
    return make_argument_parser(ARGUMENT_GROUPS)


def parse_args(argv: list[str] | None = None):
    """Flags, or one `.yaml` / `.json` config file, into `(ModelArguments, DataArguments, LoraArguments, DPOConfig)`
    (as `any2text.train` parses)."""
    return parse_argument_groups(ARGUMENT_GROUPS, argv)


def _load_reference(model_args: ModelArguments, dpo_args: DPOConfig):
    path = dpo_args.ref_model_name_or_path or model_args.model_name_or_path
    ref_args = copy.copy(model_args)
    ref_args.model_name_or_path = path
    model, _ = load_model_and_processor(ref_args)  # under ZeRO-3 with its towers as leaves, as the policy's
    return model.eval().requires_grad_(False)


def build_dpo_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: DPOConfig,
) -> DPOTrainer:
    """The DPO stage on the shared set-up (`stage.build_stage`), with its reference model."""
    dpo_args = training_args
    if lora_args.use_peft and dpo_args.ref_model_name_or_path:
        raise ValueError(
            "With `--use_peft` the reference is the model with its adapters disabled; leave "
            "`--ref_model_name_or_path` unset (or train without LoRA)."
        )
    ref_model = None
    if not lora_args.use_peft and not dpo_args.precompute_ref_log_probs and data_args.train_datasets:
        ref_model = _load_reference(model_args, dpo_args)
    return build_stage(
        DPO, model_args, data_args, lora_args, training_args,
        ref_model=ref_model,
        ref_model_loader=None if lora_args.use_peft else (lambda: _load_reference(model_args, dpo_args)),
    )  # fmt: skip


def dpo(
    model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments, training_args: DPOConfig
) -> DPOTrainer:
    """Run stage 3: align, save the model (or adapter) and processor to `output_dir`, `trainer_state.json`, card."""
    transformers.set_seed(training_args.seed)
    trainer = build_dpo_trainer(model_args, data_args, lora_args, training_args)
    dpo_args = training_args
    reference = reference_description(model_args, lora_args, dpo_args)
    card_section = (
        f"\n## Preference alignment (DPO)\n\n`loss_type={dpo_args.loss_type}`, `beta={dpo_args.beta}`, "
        f"`label_smoothing={dpo_args.label_smoothing}`, `rpo_alpha={dpo_args.rpo_alpha}`, reference: {reference}.\n"
    )
    return run_stage(trainer, model_args, data_args, lora_args, training_args, card_section=card_section)


def main(argv: list[str] | None = None) -> int:
    """`python -m any2text.dpo` / `any2text dpo`: parse the arguments and run the alignment stage."""
    return stage_main(argv, parse_args, dpo)


__all__ = [
    "DPO",
    "DPOArguments",
    "DPOConfig",
    "DPOTrainer",
    "answer_logps",
    "build_dpo_trainer",
    "dpo",
    "dpo_loss",
    "main",
    "pair_forward",
    "pair_logps",
    "rpo_nll",
]
