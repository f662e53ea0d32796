"""Scorers of the pair benchmarks: `preference` (log-probs of a policy) and `reward` (a reward model's scores).

    any2text eval --benchmark preference --model out/dpo --ref_model out/stage2 \\
        --data pairs.jsonl --template TRL-Preference --output_dir eval/
    any2text eval --benchmark reward --model out/rm --data pairs.jsonl --output_dir eval/

Both are `ScorePairs` records on the one runner (`any2text.evaluation.evaluate`): resume, `--skip_bad_items`,
`--overwrite`, `--media_root` / `--allow_media_outside_root` and the scores files work as for every benchmark. With
`--ref_model`, a preference pair counts as right when the policy's implicit reward prefers the chosen answer,
`beta * (log pi(chosen) - log ref(chosen)) > beta * (log pi(rejected) - log ref(rejected))` (DPO's
`rewards/accuracies`, the sign does not depend on beta); without it, when `log pi(chosen) > log pi(rejected)`. A
reward pair is right when `r(prompt, chosen) > r(prompt, rejected)`. Each score is also reported with the media
withheld (`blind_*`): near chance when the model uses the media.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..inference import load_inference_model
from .predictors import PairScorer


def score_pairs(model: Any, processor: Any, pairs: Sequence[Any], batch_size: int = 8) -> list[tuple[float, float]]:
    """`(log p(chosen), log p(rejected))` of every pair (`PreferenceMessages`) under `model` (eval mode, one row per
    pair: the prompt and its media once)."""
    from ..data.preference import PreferenceCollator
    from ..training.dpo import pair_logps

    collator = PreferenceCollator(processor)
    device = next(model.parameters()).device
    scores: list[tuple[float, float]] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = collator([{"messages": pair} for pair in pairs[start : start + batch_size]])
            batch = {key: value.to(device) for key, value in batch.items()}
            logps = pair_logps(model, batch)
            scores += list(zip(logps["chosen_logps"].tolist(), logps["rejected_logps"].tolist()))
    return scores


def preference_accuracy(
    policy: Sequence[tuple[float, float]], reference: Sequence[tuple[float, float]] | None = None
) -> list[bool]:
    """Per pair: does the implicit reward (or, without a reference, the log-prob) prefer the chosen answer?"""
    if reference is None:
        return [chosen > rejected for chosen, rejected in policy]
    return [(pc - rc) > (pr - rr) for (pc, pr), (rc, rr) in zip(policy, reference)]


def load_policy(checkpoint: str, args: Any) -> tuple[Any, Any]:
    """The `preference` benchmark's model: `AutoModelForImageTextToText` + `AutoProcessor`."""
    return load_inference_model(checkpoint, args.dtype, args.device)


def logp_scorer(model: Any, processor: Any, batch_size: int) -> PairScorer:
    """Scores pairs by the summed log-probs of their answers (see `score_pairs`)."""
    return lambda pairs: score_pairs(model, processor, pairs, batch_size)


def load_reward_model(checkpoint: str, args: Any) -> tuple[Any, Any]:
    """The `reward` benchmark's model: `AutoModelForSequenceClassification` (one label) + `AutoProcessor`."""
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=args.dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"`{checkpoint}` has `num_labels={model.config.num_labels}`; a reward model gives one score per sequence "
            "(`num_labels=1`). Point `--model` at a reward model."
        )
    return model.to(device).eval(), AutoProcessor.from_pretrained(checkpoint)


def reward_scorer(model: Any, processor: Any, batch_size: int) -> PairScorer:
    """Scores pairs by `model(**inputs).logits[:, 0]` of `prompt + chosen` and `prompt + rejected`.

    Any model called like `AutoModelForSequenceClassification` (input ids, attention mask, the processor's media
    tensors) works; the sequences are rendered and batched by the training collator (labels dropped).
    """
    from ..data.collator import MultimodalCollator

    collator = MultimodalCollator(processor)
    device = next(model.parameters()).device

    def score(sequences: list[list[dict[str, Any]]]) -> list[float]:
        rewards: list[float] = []
        for start in range(0, len(sequences), batch_size):
            batch = collator([{"messages": messages} for messages in sequences[start : start + batch_size]])
            inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
            with torch.no_grad():
                rewards += model(**inputs).logits[:, 0].float().tolist()
        return rewards

    def scorer(pairs: Sequence[Any]) -> list[tuple[float, float]]:
        chosen = score([list(pair) for pair in pairs])
        rejected = score([[*pair.prompt, *pair.rejected] for pair in pairs])
        return list(zip(chosen, rejected))

    return scorer


__all__ = [
    "load_policy",
    "load_reward_model",
    "logp_scorer",
    "preference_accuracy",
    "reward_scorer",
    "score_pairs",
]
