"""On-policy alignment (GRPO) of image, audio, video and mixed any-to-text models on the stock `Trainer`.

From stage 2's output, LoRA on the language model, an exact-match reward function::

    python -m any2text.grpo --model_name_or_path out/stage2 --train_datasets data/prompts.json \\
        --train_template TRL-Prompt --reward_funcs my_rewards:exact_match --output_dir out/grpo \\
        --freeze_language_model False --use_peft True --num_generations 8 --max_completion_length 64

The same module runs under `deepspeed --module`, `torchrun -m`, `any2text grpo` and with one `.yaml` / `.json` config
file, exactly like `any2text.train`, whose model / data / LoRA argument groups and freezing flags it shares. The GRPO
arguments keep TRL `GRPOConfig`'s names, defaults and meanings (`num_generations`, `max_completion_length`,
`temperature`, `top_p`, `top_k`, `beta`, `epsilon`, `epsilon_high`, `delta`, `loss_type`, `scale_rewards`,
`num_iterations`, `steps_per_generation`, `generation_batch_size`, `reward_weights`, `mask_truncated_completions`;
`per_device_train_batch_size` counts completions, as TRL's), and so are the logged metrics (`reward`, `reward_std`,
`rewards/<name>/mean` and `/std`, `frac_reward_zero_std`, `kl`, `entropy`, `completions/mean_length` and the rest,
`clip_ratio/*`).

Rewards: `--reward_funcs module:function` (TRL's signature: `f(prompts, completions, completion_ids, **columns)`
returning one float per completion, `None` to abstain) and / or `--reward_model_name_or_path` (an any2text reward
model, `any2text reward`'s output), weighted by `--reward_weights` (the reward model first, as TRL's script orders
them).

What differs from TRL's `GRPOTrainer`, and why: TRL repeats each prompt `num_generations` times, so generation
prefills, and the loss forward re-encodes, each image G times (and it forwards no audio). Here a prompt's media are
encoded ONCE for all its completions, in both places:

- generation prefills each prompt once (media merged), repeats its KV cache G times (`Cache.batch_repeat_interleave`)
  and decodes the G completions with transformers' `generate` from that cache;
- the loss forward takes one row per prompt, `[prompt | completion 1 | ... | completion G]`, each completion seeing
  the prompt and itself only (a 4D mask, `preference.pair_attention_mask`; the DPO pair row is the case G = 2), logits
  only at completion positions (`group_rows`); the reference and the reward model read the same row.

Generation is seeded per generation step (`seed`, the step, the process), so a resumed run regenerates the very
completions an uninterrupted run drew. With LoRA the reference is the policy with its adapters disabled; without LoRA
and `beta > 0` a frozen copy (`ref_model_name_or_path`, default the starting checkpoint); `beta = 0` none.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import GenerationConfig, HfArgumentParser
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from ..data.collator import EMPTY_BATCH_KEY
from ..data.preference import pair_attention_mask
from ..data.prompts import PromptCollator
from ..modalities import MODALITIES
from .arguments import DataArguments, LoraArguments, ModelArguments, MultimodalTrainingArguments
from .dpo import _config_of, _prepare_deepspeed, disable_dropout, pair_forward
from .model import load_model_and_processor
from .nonfinite import ROW_IDS_KEY
from .parsing import make_argument_parser, parse_argument_groups
from .reward import load_reward_model
from .stage import Stage, build_stage, reference_description, run_stage, stage_main
from .trainer import MultimodalTrainer

logger = logging.get_logger(__name__)

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
# Batch keys of the prompts that are not model inputs.
_PROMPT_ONLY_KEYS = ("prompts", "reward_kwargs", "media_counts", "index")


@dataclass
class GRPOConfig(MultimodalTrainingArguments):
    """The GRPO stage's configuration, as TRL's `GRPOConfig`: the stock `TrainingArguments`, the knobs every stage
    shares (`max_length` bounds a prompt here, TRL's former `max_prompt_length`; `truncation`), and GRPO's own
    hyper-parameters under TRL's names and defaults, with the rewards (TRL's script arguments `reward_funcs` and
    `reward_model_name_or_path`)."""

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW (TRL's GRPO)."})
    disable_dropout: bool = field(default=False, metadata={"help": "Turn dropout off in the model (and reference)."})
    # Generation
    num_generations: int = field(
        default=8,
        metadata={"help": "Completions sampled per prompt; `per_device_train_batch_size` must be a multiple of it."},
    )
    max_completion_length: int = field(default=512, metadata={"help": "Longest completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (also divides the logits)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the top tokens of this mass."})
    top_k: int = field(default=0, metadata={"help": "Keep the k most likely tokens; 0 keeps all."})
    min_p: float | None = field(default=None, metadata={"help": "Minimum token probability, scaled by the top one's."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalise repeated tokens (1.0: none)."})
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Completions generated at once (all processes); default `per_device_train_batch_size * "
            "num_processes * steps_per_generation`. Set this or `steps_per_generation`, not both."
        },
    )
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "Steps served by one generation; default `gradient_accumulation_steps`."}
    )
    shuffle_dataset: bool = field(
        default=True, metadata={"help": "Shuffle the prompts (seeded); `--train_sampling_strategy sequential` too."}
    )
    # Loss
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; 0 loads and runs no reference model."})
    num_iterations: int = field(default=1, metadata={"help": "Updates per generated batch (mu)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping range of the probability ratio."})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clipping range; default `epsilon` (DAPO recommends 0.28)."}
    )
    delta: float | None = field(
        default=None, metadata={"help": "Two-sided GRPO: also clip the unclipped ratio at this value (INTELLECT-2)."}
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": "How token losses are aggregated: `grpo` (per completion, then averaged), `bnpo` (over the local "
            "batch's tokens), `dr_grpo` (by completions x `max_completion_length`), `dapo` (over the tokens of the "
            "whole accumulated generation batch).",
            "choices": list(LOSS_TYPES),
        },
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "Divide advantages by the reward std of the group (`group`, or True), of the batch (`batch`), or "
            "not (`none`, or False: Dr. GRPO).",
        },
    )
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions cut at `max_completion_length` out of the loss (DAPO)."}
    )
    # Rewards (TRL's script arguments)
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions as `module:function` (importable, or a `.py` file's path), TRL's signature `f(prompts, completions, "
            "completion_ids, **columns) -> list[float | None]`."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "An any2text reward model (`any2text reward`'s output) scoring completions."}
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per reward (the reward model first, then `--reward_funcs`); default 1 each."},
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference of a full fine-tune with `beta > 0`; default `--model_name_or_path`. With `--use_peft` "
            "the reference is the model with its adapters disabled and this must stay unset."
        },
    )

    def __post_init__(self):
        if isinstance(self.scale_rewards, bool) or str(self.scale_rewards).lower() in ("true", "false"):
            self.scale_rewards = "group" if str(self.scale_rewards).lower() == "true" else "none"
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"`--scale_rewards` must be one of {SCALE_REWARDS} (or True / False).")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown `--loss_type` `{self.loss_type}`; choose from {list(LOSS_TYPES)}.")
        if self.num_generations < 2:
            raise ValueError(
                f"GRPO needs `--num_generations` >= 2 to compare completions, got {self.num_generations}."
            )
        if self.padding_free or self.packing:
            raise ValueError(
                "GRPO lays out one row per prompt with its completions; drop `--padding_free`/`--packing`."
            )
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        super().__post_init__()
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"`--per_device_train_batch_size` ({self.per_device_train_batch_size}) counts completions and must be "
                f"a multiple of `--num_generations` ({self.num_generations}): a step holds whole prompt groups."
            )
        per_step = self.per_device_train_batch_size * self.world_size
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("Set `--generation_batch_size` or `--steps_per_generation`, not both.")
        if self.generation_batch_size is not None:
            if self.generation_batch_size % per_step:
                raise ValueError(
                    f"`--generation_batch_size` ({self.generation_batch_size}) must be a multiple of the global batch "
                    f"size ({per_step})."
                )
            self.steps_per_generation = self.generation_batch_size // per_step
        if self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
        self.generation_batch_size = per_step * self.steps_per_generation


# ---------------------------------------------------------------------------------------------------------------------
# Rewards and advantages (pure functions)


def nanstd(tensor: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (NaN for fewer than two values), as TRL's."""
    mean = torch.nanmean(tensor, dim=dim, keepdim=True)
    variance = torch.nanmean((tensor - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(tensor)).sum(dim=dim, keepdim=True)
    variance = variance * torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    std = variance.sqrt()
    return std.squeeze(dim) if dim is not None else std.reshape(())


def group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    batch_std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's advantages (`sum_then_normalize`): `(advantages, rewards, std_rewards)`, one per completion.

    `rewards_per_func` `(completions, funcs)`, completions grouped by prompt (`num_generations` each), NaN where a
    function abstained. The weighted nan-aware sum is each completion's reward (NaN when every function abstained: left
    out of its group's mean and std, advantage 0); advantage = reward - group mean, divided by the group's std (`group`)
    or `batch_std` (`batch`, default the std of these rewards) plus 1e-4, or not divided (`none`).
    """
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = float("nan")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = (nanstd(rewards) if batch_std is None else batch_std).expand_as(rewards)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), rewards, std


def load_reward_functions(specs: list[str] | None) -> list[Callable[..., list]]:
    """`module:function` strings (an importable module, or a `.py` file's path) as the functions they name."""
    functions = []
    for spec in specs or []:
        module_name, sep, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
        if not sep or not module_name or not name:
            raise ValueError(f"`--reward_funcs {spec}`: expected `module:function` (e.g. `my_rewards:exact_match`).")
        try:
            if module_name.endswith(".py"):
                loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
                if loader is None or not Path(module_name).is_file():
                    raise ImportError(f"no file `{module_name}`")
                module = importlib.util.module_from_spec(loader)
                loader.loader.exec_module(module)
            else:
                module = importlib.import_module(module_name)
            function = getattr(module, name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"`--reward_funcs {spec}`: cannot import `{name}` from `{module_name}` ({error}). Put the module on "
                "`PYTHONPATH` (or run from its folder), or give the path of its `.py` file."
            ) from error
        if not callable(function):
            raise ValueError(f"`--reward_funcs {spec}` names a `{type(function).__name__}`, not a function.")
        functions.append(function)
    return functions


# ---------------------------------------------------------------------------------------------------------------------
# The group row: [prompt | completion 1 | ... | completion G]


def completion_valid_mask(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """True on each completion's tokens up to and including its first end-of-sequence token (TRL's mask)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    length = completion_ids.shape[-1]
    first = torch.where(
        is_eos.any(-1), is_eos.int().argmax(-1), torch.full_like(is_eos[..., 0], length, dtype=torch.long)
    )
    return torch.arange(length, device=completion_ids.device) <= first.unsqueeze(-1)


def group_rows(prompts: Mapping[str, torch.Tensor], completion_ids: torch.Tensor, valid: torch.Tensor) -> dict:
    """The model inputs of one row per prompt, `[prompt | completion 1 | ... | completion G]`.

    `prompts`: a `PromptCollator` batch (left-padded `input_ids` / `attention_mask` `(B, P)`, `mm_token_type_ids`,
    media); `completion_ids` `(B, G, C)`, `valid` `(B, G, C)` (`completion_valid_mask`). Completion `g` fills columns
    `P + g*C ...`, its positions continue from its prompt's last, and it attends to the prompt and itself only (padding
    attends to itself). `logits_to_keep` `(G*C,)` lists, for each completion token, the column whose logits predict
    it: the prompt's last column for the first token, the previous token's otherwise, so the logits come back as
    `(B, G*C, V)`, i.e. `(B, G, C, V)`. Media are the prompts': each item once.
    """
    input_ids, mask = prompts["input_ids"], prompts["attention_mask"]
    batch, prompt_length = input_ids.shape
    groups, length = completion_ids.shape[1:]
    device = input_ids.device
    ids = torch.cat([input_ids, completion_ids.reshape(batch, groups * length)], dim=1)
    segment = torch.cat([
        (mask != 0).long(),
        torch.where(valid, torch.arange(2, groups + 2, device=device).view(1, groups, 1), 0).reshape(batch, -1),
    ], dim=1)  # fmt: skip
    prompt_positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    completion_positions = prompt_positions[:, -1:].unsqueeze(-1) + 1 + torch.arange(length, device=device)
    position_ids = torch.cat(
        [prompt_positions, completion_positions.expand(batch, groups, length).reshape(batch, -1)], 1
    )
    columns = prompt_length + torch.arange(groups * length, device=device).view(groups, length) - 1
    columns[:, 0] = prompt_length - 1
    inputs = {
        "input_ids": ids,
        "attention_mask": pair_attention_mask(segment),
        "position_ids": position_ids,
        "logits_to_keep": columns.flatten(),
    }
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in prompts:
            inputs[key] = torch.cat([prompts[key], torch.zeros_like(completion_ids).reshape(batch, -1)], dim=1)
    for key, value in group_model_inputs(prompts).items():
        inputs.setdefault(key, value)  # the media, each item once
    return inputs


def completion_logps(
    model: torch.nn.Module, rows: dict, completion_ids: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs `(B, G, C)` of the completions under `model` (logits divided by `temperature`, as TRL),
    and their entropies (no gradient), from one forward of the group rows."""
    outputs = pair_forward(model, rows, logits_to_keep=rows["logits_to_keep"])
    logits = outputs.logits.float().view(*completion_ids.shape, -1) / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - log_norm
    with torch.no_grad():
        entropy = log_norm - (logits.softmax(-1) * logits).sum(-1)
    return logps, entropy


def completion_end_columns(prompt_length: int, completion_ids: torch.Tensor, valid: torch.Tensor, pad_token_id):
    """Column of each completion's last non-pad token in its group row (the prompt's last column when it has none):
    where `AutoModelForSequenceClassification` reads `prompt + completion`."""
    length = completion_ids.shape[-1]
    real = valid if pad_token_id is None else valid & (completion_ids != pad_token_id)
    last = torch.where(real, torch.arange(length, device=real.device), -1).amax(-1)  # (B, G)
    offsets = prompt_length + torch.arange(completion_ids.shape[1], device=real.device).unsqueeze(0) * length
    return torch.where(last >= 0, offsets + last, prompt_length - 1)


def reward_model_scores(
    reward_model: torch.nn.Module, rows: dict, completion_ids: torch.Tensor, valid: torch.Tensor, pad_token_id=None
) -> torch.Tensor:
    """Scores `(B, G)` of every completion by a `LlamaVisionAudioForSequenceClassification`, from one forward of the
    group rows (the prompt's media encoded once), each read at its completion's end (`completion_end_columns`).
    `pad_token_id`: the reward model's (read from it when not given; a DeepSpeed engine hides it)."""
    pad = _config_of(reward_model).get_text_config().pad_token_id if pad_token_id is None else pad_token_id
    prompt_length = rows["input_ids"].shape[1] - completion_ids.shape[1] * completion_ids.shape[2]
    ends = completion_end_columns(prompt_length, completion_ids, valid, pad)
    keep, where = torch.unique(ends.flatten(), return_inverse=True)
    scores = pair_forward(reward_model, rows, logits_to_keep=keep).logits[..., 0]  # (B, len(keep))
    return scores.gather(1, where.view(ends.shape))


@torch.no_grad()
def generate_groups(
    model: torch.nn.Module,
    prompts: Mapping[str, Any],
    num_generations: int,
    generation_config: GenerationConfig,
    keep_mode: bool = False,
) -> torch.Tensor:
    """`num_generations` completions `(B, G, C)` for each prompt of a `PromptCollator` batch, by `model.generate`.

    Each prompt is prefilled ONCE (all but its last token; its media encoded once), the cache is repeated G times
    (`Cache.batch_repeat_interleave`), and `generate` decodes every completion from it, starting at the prompt's last
    token; TRL instead repeats each prompt G times and prefills (and encodes) all of them. The model runs in eval
    mode unless `keep_mode` (ZeRO-3: in training mode every tower runs on every rank, and `generate` keeps the ranks
    in step with `synced_gpus`, as TRL's path without gathering the weights).
    """
    input_ids, mask = prompts["input_ids"], prompts["attention_mask"]
    prefill = group_model_inputs(prompts)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in prefill:
            prefill[key] = prefill[key][:, :-1]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    was_training = model.training
    if not keep_mode:
        model.eval()
    try:
        outputs = model(
            input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1],
            use_cache=True, logits_to_keep=1, **prefill,
        )  # fmt: skip
        cache = outputs.cache if getattr(outputs, "cache", None) is not None else outputs.past_key_values
        cache.batch_repeat_interleave(num_generations)
        sequences = model.generate(
            input_ids=input_ids.repeat_interleave(num_generations, 0),
            attention_mask=mask.repeat_interleave(num_generations, 0),
            cache=cache,
            generation_config=generation_config,
        )
    finally:
        model.train(was_training)
    completions = sequences[:, input_ids.shape[1] :]
    if completions.shape[1] == 0:
        completions = torch.full((len(sequences), 1), generation_config.pad_token_id, device=sequences.device)
    return completions.reshape(len(input_ids), num_generations, -1)


# ---------------------------------------------------------------------------------------------------------------------
# The loss (a pure function)


def grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    beta: float = 0.0,
    ref_per_token_logps: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    normalizer: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL `GRPOTrainer`'s loss on completions `(N, C)`; returns the loss and the per-token terms for the metrics.

    Per token, with `r = exp(logp - old_logp)` and the completion's advantage `A`: `-min(r A, clip(r, 1 - eps_low,
    1 + eps_high) A)` (`r` first capped at `delta` when given), plus `beta * (exp(ref - logp) - (ref - logp) - 1)`.
    Aggregated over `mask` by `loss_type`: `grpo` the mean over completions of each one's token mean; `bnpo` the token
    mean; `dr_grpo` the sum over `N * max_completion_length`; `dapo` the sum over `normalizer` (the accumulated
    generation batch's tokens per step). `grpo`, `bnpo` and `dr_grpo` are then divided by `normalizer` (the
    accumulation steps), so the loss comes out scaled for gradient accumulation as TRL's.
    """
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    capped = torch.clamp(coef_1, max=delta) if delta is not None else coef_1
    advantages = advantages.unsqueeze(-1)
    per_token_loss = -torch.min(capped * advantages, coef_2 * advantages)
    terms = {"coef_1": coef_1.detach()}
    if beta != 0.0:
        difference = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(difference) - difference - 1
        per_token_loss = per_token_loss + beta * per_token_kl
        terms["kl"] = per_token_kl.detach()
    mask = mask.to(per_token_loss.dtype)
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / normalizer
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / normalizer
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.shape[0] * max_completion_length) / normalizer
    elif loss_type == "dapo":
        loss = (per_token_loss * mask).sum() / normalizer
    else:
        raise ValueError(f"Unknown `loss_type` `{loss_type}`; choose from {list(LOSS_TYPES)}.")
    return loss, terms


# ---------------------------------------------------------------------------------------------------------------------
# The trainer


class GroupRepeatSampler(torch.utils.data.Sampler):
    """Prompt indices in generation batches of `batch_size` (all processes), each batch yielded `repeat_count` times
    in a row (TRL's `RepeatSampler` without the per-completion repeat: a prompt is one item, its G completions one
    row). Shuffled with `seed` when asked; the order is the same on every process and in a resumed run."""

    def __init__(self, num_items: int, batch_size: int, repeat_count: int, shuffle: bool = True, seed: int = 0):
        self.num_items, self.batch_size, self.repeat_count = num_items, batch_size, repeat_count
        self.shuffle, self.seed = shuffle, seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.num_items, generator=generator) if self.shuffle else torch.arange(self.num_items)
        for start in range(0, self.num_items - self.batch_size + 1, self.batch_size):
            chunk = order[start : start + self.batch_size].tolist()
            for _ in range(self.repeat_count):
                yield from chunk

    def __len__(self) -> int:
        return (self.num_items // self.batch_size) * self.batch_size * self.repeat_count


class GRPOTrainer(MultimodalTrainer):
    """`Trainer` whose steps generate completions for a batch of prompts, score them and take TRL's GRPO loss.

    Args:
        reward_funcs: the reward functions (TRL's signature).
        reward_model: an any2text reward model (scored first; see `reward_model_scores`), or `None`.
        ref_model: the frozen reference of a full fine-tune with `beta > 0`; `None` with LoRA (adapters disabled) and
            with `beta = 0`.
    """

    loss_is_scaled_for_ga = True  # `compute_loss` scales for gradient accumulation itself, as TRL's

    def __init__(self, *args, reward_funcs=(), reward_model=None, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.reward_funcs = list(reward_funcs)
        names = [getattr(f, "__name__", type(f).__name__) for f in self.reward_funcs]
        if reward_model is not None:
            names.insert(0, str(_config_of(reward_model)._name_or_path).rstrip("/").split("/")[-1] or "reward_model")
        if not names:
            raise ValueError("GRPO needs a reward: pass `--reward_funcs module:function` and/or "
                             "`--reward_model_name_or_path`.")  # fmt: skip
        self.reward_names = names
        weights = self.args.reward_weights or [1.0] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"`--reward_weights` has {len(weights)} values for {len(names)} rewards ({names}).")
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        self._is_peft = hasattr(self.model, "disable_adapter")
        # Read now: once DeepSpeed wraps the reward model, its `config` is DeepSpeed's own.
        self.reward_pad_token_id = (
            None if reward_model is None else _config_of(reward_model).get_text_config().pad_token_id
        )
        self.reward_model = self._prepare_frozen(reward_model)
        self.ref_model = self._prepare_frozen(ref_model)
        if self.args.disable_dropout:
            disable_dropout(self.model)
        tokenizer = self.processing_class.tokenizer if hasattr(self.processing_class, "tokenizer") else None
        self.tokenizer = tokenizer or self.processing_class
        config = _config_of(self.model)
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.eos_token_ids = eos if self.tokenizer.eos_token_id in eos else [self.tokenizer.eos_token_id, *eos]
        media_tokens = [getattr(config, key, None) for key in ("image_token_id", "audio_token_id", "video_token_id")]
        args = self.args
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, do_sample=True, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id, bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.eos_token_ids, disable_compile=True,
            # A sampled media placeholder would mismatch the media features of the loss forward.
            suppress_tokens=[token for token in media_tokens if token is not None] or None,
        )  # fmt: skip
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._step = 0
        self._buffered_inputs: list[dict] | None = None
        self.num_encoded_media = 0  # media items encoded by generation and loss forwards (the tests count)

    def _prepare_frozen(self, model: torch.nn.Module | None):
        if model is None:
            return None
        model.requires_grad_(False).eval()
        if self.args.disable_dropout:
            disable_dropout(model)
        if self.is_deepspeed_enabled:
            return _prepare_deepspeed(model, self.accelerator, self.args)
        return model.to(self.args.device)

    # -- data: generation batches of prompts --------------------------------------------------------------------------

    @property
    def prompts_per_step(self) -> int:
        return self.args.per_device_train_batch_size // self.args.num_generations

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.prompts_per_step * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def get_eval_dataloader(self, eval_dataset=None):
        """Prompts in order, `per_device_eval_batch_size // num_generations` a batch (the batch counts completions)."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        batch_size = max(1, self.args.per_device_eval_batch_size // self.args.num_generations)
        return self._get_dataloader(dataset=dataset, description="Evaluation", batch_size=batch_size,
                                    sampler_fn=self._get_eval_sampler)  # fmt: skip

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return GroupRepeatSampler(
            len(dataset),
            batch_size=self.args.generation_batch_size // self.args.num_generations,
            repeat_count=self.args.num_iterations * self.args.steps_per_generation,
            shuffle=self.args.shuffle_dataset and self.args.train_sampling_strategy != "sequential",
            seed=self.args.seed,
        )

    # -- a step: generate, score, buffer, slice -----------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._step += 1

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if "advantages" in inputs:
            return inputs  # already a scored slice (the empty-batch path prepares twice)
        if not self.model.training:
            return self._generate_and_score(inputs)
        generate_every = self.args.steps_per_generation * self.args.num_iterations
        if self._buffered_inputs is None:
            # A fresh (or resumed) run: the step counter continues from the optimizer steps done.
            self._step = self.state.global_step * self.args.gradient_accumulation_steps
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            scored = self._generate_and_score(inputs)
            self._buffered_inputs = split_by_prompt(scored, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _generate_and_score(self, batch: dict[str, Any]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        batch = super()._prepare_inputs(batch)
        G = self.args.num_generations
        generation_index = self._step // (self.args.steps_per_generation * self.args.num_iterations)
        seed = self.args.seed + 1_000_003 * (generation_index + 1) + 7919 * self.accelerator.process_index
        completion_ids = self.generate_completions(self.model_wrapped, batch, seed)  # (B, G, C)
        valid = completion_valid_mask(completion_ids, self.eos_token_ids)
        completion_ids = completion_ids.masked_fill(~valid, self.tokenizer.pad_token_id)
        ended = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=valid.device))
        truncated = ~(valid & ended).any(-1)  # cut at `max_completion_length` before an end token
        loss_mask = valid & ~truncated.unsqueeze(-1) if self.args.mask_truncated_completions else valid
        rows = group_rows(batch, completion_ids, valid)
        out = {**{k: v for k, v in batch.items() if k not in ("prompts", "reward_kwargs")},
               "completion_ids": completion_ids, "completion_valid": valid, "completion_mask": loss_mask}  # fmt: skip
        temperature = self.args.temperature
        with torch.no_grad():
            # The policy that sampled, when the steps this generation serves may update it first (TRL's rule).
            if self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.args.num_iterations):
                out["old_per_token_logps"] = completion_logps(self.model, rows, completion_ids, temperature)[0]
            if self.args.beta != 0.0:
                reference, context = self._reference_model()
                with context:
                    out["ref_per_token_logps"] = completion_logps(reference, rows, completion_ids, temperature)[0]
        rewards_per_func = self._rewards(batch, rows, completion_ids, valid)  # (B*G, funcs)
        gathered = self._gather_rows(rewards_per_func)
        batch_std = None
        if self.args.scale_rewards == "batch":
            batch_std = nanstd((gathered * self.reward_weights.to(gathered.device)).nansum(1))
        advantages, _, std = group_advantages(
            rewards_per_func, self.reward_weights, G, self.args.scale_rewards, batch_std
        )
        out["advantages"] = advantages.view(-1, G)
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum().reshape(1)).sum()
        self._log_rollout(mode, gathered, std, valid, truncated)
        return out

    def generate_completions(self, model: torch.nn.Module, batch: dict[str, Any], seed: int) -> torch.Tensor:
        """`num_generations` completions `(B, G, C)` per prompt of a prompt batch (`generate_groups`)."""
        unwrapped = self.accelerator.unwrap_model(model)
        self.num_encoded_media += _count_media(batch)
        # transformers 5 names it `is_activation_checkpointing` (the old name warns).
        checkpointing = getattr(unwrapped, "is_activation_checkpointing", None)
        if checkpointing is None:
            checkpointing = getattr(unwrapped, "is_gradient_checkpointing", False)
        if checkpointing:
            unwrapped.gradient_checkpointing_disable()
        devices = [self.args.device] if self.args.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                return generate_groups(
                    unwrapped, batch, self.args.num_generations, self.generation_config,
                    keep_mode=is_deepspeed_zero3_enabled(),
                )  # fmt: skip
        finally:
            if checkpointing:
                unwrapped.gradient_checkpointing_enable(self.args.gradient_checkpointing_kwargs)

    def _reference_model(self):
        if self._is_peft and self.ref_model is None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            return unwrapped, unwrapped.disable_adapter()
        if self.ref_model is None:
            raise ValueError("`beta > 0` on a full fine-tune needs a reference model.")
        self.ref_model.train(self.model.training)  # ZeRO-3 lock-step: the same towers as the policy
        return self.ref_model, nullcontext()

    def _rewards(self, batch, rows, completion_ids, valid) -> torch.Tensor:
        """`(B*G, rewards)`: the reward model's scores, then each function's (NaN where it returned None)."""
        G = self.args.num_generations
        device = completion_ids.device
        columns = []
        if self.reward_model is not None:
            with torch.no_grad():
                self.num_encoded_media += _count_media(rows)
                scores = reward_model_scores(self.reward_model, rows, completion_ids, valid, self.reward_pad_token_id)
                columns.append(scores.float().flatten())
        if self.reward_funcs:
            ids = [row[mask].tolist() for row, mask in zip(completion_ids.flatten(0, 1), valid.flatten(0, 1))]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            prompts = [prompt for prompt in batch["prompts"] for _ in range(G)]
            completions = [
                [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
                for prompt, text in zip(prompts, texts)
            ]
            kwargs: dict[str, list] = defaultdict(lambda: [None] * len(prompts))
            for i, row in enumerate(batch["reward_kwargs"]):
                for key, value in row.items():
                    kwargs[key][i * G : (i + 1) * G] = [value] * G
            for function, name in zip(self.reward_funcs, self.reward_names[-len(self.reward_funcs) :]):
                values = function(
                    prompts=prompts, completions=completions, completion_ids=ids, trainer_state=self.state, **kwargs
                )
                if len(values) != len(prompts):
                    raise ValueError(
                        f"The reward function `{name}` returned {len(values)} rewards for {len(prompts)} completions; "
                        "return exactly one per completion (`None` to abstain)."
                    )
                columns.append(torch.tensor([math.nan if v is None else float(v) for v in values], device=device))
        return torch.stack(columns, dim=1)

    def _gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rows of every process (padded with NaN: processes may hold different numbers of prompts)."""
        return self.accelerator.gather(self.accelerator.pad_across_processes(tensor, dim=0, pad_index=float("nan")))

    def _log_rollout(self, mode, rewards_per_func, std, valid, truncated) -> None:
        """TRL's rollout metrics over every process: rewards, completion lengths, clipped ratio."""
        metrics = self._metrics[mode]
        weighted = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(1)
        weighted[torch.isnan(rewards_per_func).all(1)] = float("nan")
        for i, name in enumerate(self.reward_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(torch.nanmean(weighted).item())
        metrics["reward_std"].append(nanstd(weighted).item())
        zero_std = self._gather_rows(torch.isclose(std, torch.zeros_like(std)).float().unsqueeze(1))
        metrics["frac_reward_zero_std"].append(torch.nanmean(zero_std).item())
        lengths = self._gather_rows(valid.sum(-1).flatten().float().unsqueeze(1))[:, 0]
        clipped = self._gather_rows(truncated.flatten().float().unsqueeze(1))[:, 0]
        lengths, clipped = lengths[~lengths.isnan()], clipped[~clipped.isnan()].bool()
        metrics["completions/mean_length"].append(lengths.mean().item())
        metrics["completions/min_length"].append(lengths.min().item())
        metrics["completions/max_length"].append(lengths.max().item())
        metrics["completions/clipped_ratio"].append(clipped.float().mean().item())
        terminated = lengths[~clipped]
        for stat in ("mean", "min", "max"):
            value = getattr(terminated, stat)().item() if len(terminated) else 0.0
            metrics[f"completions/{stat}_terminated_length"].append(value)

    # -- loss and metrics ---------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        args = self.args
        completion_ids, valid = inputs["completion_ids"], inputs["completion_valid"]
        rows = group_rows(inputs, completion_ids, valid)
        self.num_encoded_media += _count_media(rows)
        logps, entropy = completion_logps(model, rows, completion_ids, args.temperature)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        mask = inputs["completion_mask"]
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if args.loss_type == "dapo":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * accumulation / args.steps_per_generation
        else:
            normalizer = accumulation
        flat = lambda tensor: tensor.flatten(0, 1)  # noqa: E731 - (B, G, C) -> (B*G, C)
        ref = inputs.get("ref_per_token_logps")
        loss, terms = grpo_loss(
            flat(logps), flat(old), inputs["advantages"].flatten(), flat(mask),
            loss_type=args.loss_type, epsilon_low=args.epsilon, epsilon_high=args.epsilon_high, delta=args.delta,
            beta=args.beta, ref_per_token_logps=None if ref is None else flat(ref),
            max_completion_length=args.max_completion_length, normalizer=normalizer,
        )  # fmt: skip
        self._log_loss_terms(mode, terms, flat(entropy), inputs["advantages"].flatten(), flat(mask).float())
        return (loss, {"per_token_logps": logps}) if return_outputs else loss

    def _log_loss_terms(self, mode, terms, entropy, advantages, mask) -> None:
        """TRL's `kl`, `entropy` and `clip_ratio/*`, token means over every process."""
        metrics = self._metrics[mode]
        coef, advantages = terms["coef_1"], advantages.unsqueeze(-1)
        low = ((coef < 1 - self.args.epsilon) & (advantages < 0)).float()
        high = ((coef > 1 + self.args.epsilon_high) & (advantages > 0)).float()
        per_token = {"entropy": entropy, "clip_ratio/low_mean": low, "clip_ratio/high_mean": high,
                     "clip_ratio/region_mean": torch.maximum(low, high)}  # fmt: skip
        if "kl" in terms:
            per_token["kl"] = terms["kl"]
        sums = torch.stack([(value * mask).sum() for value in per_token.values()] + [mask.sum()])
        sums = self.accelerator.reduce(sums, reduction="sum")
        for name, value in zip(per_token, (sums[:-1] / sums[-1].clamp(min=1.0)).tolist()):
            metrics[name].append(value)
        per_sequence = torch.stack([(low * mask).sum(-1), (high * mask).sum(-1)], 1) / mask.sum(-1, True).clamp(min=1)
        gathered = self._gather_rows(per_sequence)
        metrics["clip_ratio/low_min"].append(torch.nan_to_num(gathered[:, 0], nan=math.inf).min().item())
        metrics["clip_ratio/high_max"].append(torch.nan_to_num(gathered[:, 1], nan=-math.inf).max().item())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if inputs.get(EMPTY_BATCH_KEY):
            return None, None, None
        inputs = self._prepare_inputs({k: v for k, v in inputs.items() if k != ROW_IDS_KEY})
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged GRPO metrics since the last log (TRL's names; `eval_` prefixed in evaluation)."""
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        self._metrics[mode].clear()
        logs.update(metrics)
        super().log(logs, start_time)


def group_model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a prompt batch the model reads besides the tokens: media and per-token type ids."""
    skip = ("input_ids", "attention_mask", "completion_ids", "completion_valid", "completion_mask", "advantages",
            "num_items_in_batch", "old_per_token_logps", "ref_per_token_logps", *_PROMPT_ONLY_KEYS)  # fmt: skip
    return {key: value for key, value in batch.items() if key not in skip and torch.is_tensor(value)}


def _count_media(inputs: Mapping[str, Any]) -> int:
    """Media items the inputs hold (each modality's first output key, items along dim 0)."""
    keys = {modality.output_keys[0] for modality in MODALITIES.values()}
    return sum(len(inputs[key]) for key in keys if torch.is_tensor(inputs.get(key)))


def split_by_prompt(scored: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """A scored generation batch as `parts` slices of whole prompts (their media, completions and advantages)."""
    if parts == 1:
        return [scored]
    num_prompts = len(scored["input_ids"])
    size = num_prompts // parts
    counts = scored.get("media_counts", {})
    slices = []
    for part in range(parts):
        start, stop = part * size, (part + 1) * size
        piece = {}
        for key, value in scored.items():
            if key in counts:
                offsets = [0, *torch.tensor(counts[key]).cumsum(0).tolist()]
                piece[key] = value[offsets[start] : offsets[stop]]
            elif key == "media_counts":
                piece[key] = {name: values[start:stop] for name, values in value.items()}
            elif torch.is_tensor(value) and value.dim() > 0 and len(value) == num_prompts:
                piece[key] = value[start:stop]
            else:
                piece[key] = value
        slices.append(piece)
    return slices


# ---------------------------------------------------------------------------------------------------------------------
# Entry point

# On-policy alignment: prompts in, G completions each generated, one row [prompt | completions] per prompt.
GRPO = Stage(name="grpo", data="prompts", collator_class=PromptCollator, trainer_class=GRPOTrainer,
             config_class=GRPOConfig, label_names=())  # fmt: skip
ARGUMENT_GROUPS = GRPO.argument_groups  # (ModelArguments, DataArguments, LoraArguments, GRPOConfig)


def make_parser() -> HfArgumentParser:
    return make_argument_parser(ARGUMENT_GROUPS)


def parse_args(argv: list[str] | None = None):
    """Flags, or one `.yaml` / `.json` config file, into `(ModelArguments, DataArguments, LoraArguments, GRPOConfig)`
    (as `any2text.train` parses)."""
    return parse_argument_groups(ARGUMENT_GROUPS, argv)


def build_grpo_trainer(
    model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments, training_args: GRPOConfig
) -> GRPOTrainer:
    """The GRPO stage on the shared set-up (`stage.build_stage`), with its rewards and reference model."""
    if lora_args.use_peft and training_args.ref_model_name_or_path:
        raise ValueError(
            "With `--use_peft` the reference is the model with its adapters disabled; leave "
            "`--ref_model_name_or_path` unset (or train without LoRA)."
        )
    reward_funcs = load_reward_functions(training_args.reward_funcs)
    reward_model = None
    if training_args.reward_model_name_or_path:
        reward_model = load_reward_model(training_args.reward_model_name_or_path, dtype=model_args.dtype)
    ref_model = None
    if training_args.beta != 0.0 and not lora_args.use_peft:
        ref_args = copy.copy(model_args)
        ref_args.model_name_or_path = training_args.ref_model_name_or_path or model_args.model_name_or_path
        ref_model, _ = load_model_and_processor(ref_args)
    return build_stage(
        GRPO, model_args, data_args, lora_args, training_args,
        reward_funcs=reward_funcs, reward_model=reward_model, ref_model=ref_model,
    )  # fmt: skip


def grpo(
    model_args: ModelArguments, data_args: DataArguments, lora_args: LoraArguments, training_args: GRPOConfig
) -> GRPOTrainer:
    """Run the GRPO stage: train, save the model (or adapter) and processor to `output_dir`, state, card, metrics."""
    transformers.set_seed(training_args.seed)
    trainer = build_grpo_trainer(model_args, data_args, lora_args, training_args)
    args = training_args
    reference = "none (`beta=0`)" if args.beta == 0.0 else reference_description(model_args, lora_args, args)
    card_section = (
        f"\n## On-policy alignment (GRPO)\n\n`loss_type={args.loss_type}`, `num_generations={args.num_generations}`, "
        f"`beta={args.beta}`, `epsilon={args.epsilon}`, `scale_rewards={args.scale_rewards}`, rewards: "
        f"{', '.join(f'`{name}`' for name in trainer.reward_names)}, reference: {reference}.\n"
    )
    return run_stage(trainer, model_args, data_args, lora_args, training_args, card_section=card_section)


def main(argv: list[str] | None = None) -> int:
    """`python -m any2text.grpo` / `any2text grpo`: parse the arguments and run the GRPO stage."""
    return stage_main(argv, parse_args, grpo)


__all__ = [
    "GRPO",
    "GRPOConfig",
    "GRPOTrainer",
    "GroupRepeatSampler",
    "build_grpo_trainer",
    "completion_end_columns",
    "completion_logps",
    "completion_valid_mask",
    "generate_groups",
    "group_advantages",
    "group_rows",
    "grpo",
    "grpo_loss",
    "load_reward_functions",
    "main",
    "nanstd",
    "reward_model_scores",
    "split_by_prompt",
]
