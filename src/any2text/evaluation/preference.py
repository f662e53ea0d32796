"""The `preference` benchmark: held-out preference pairs, scored by log-probs instead of generation.

    any2text eval --benchmark preference --model out/dpo --ref_model out/stage2 \\
        --data pairs.jsonl --template TRL-Preference --media_root data/ --output_dir eval/

With `--ref_model`, a pair counts as right when the policy's implicit reward prefers the chosen answer,
`beta * (log pi(chosen) - log ref(chosen)) > beta * (log pi(rejected) - log ref(rejected))` (DPO's
`rewards/accuracies`, the sign does not depend on beta); without it, when `log pi(chosen) > log pi(rejected)` (the
plain log-prob accuracy). Writes `OUTPUT_DIR/preference/predictions.jsonl` (one object per pair: id, log-probs,
right or not), `scores.json` and `scores.md`, like the other benchmarks. Any preference template works (`AA_TI2T`,
`AA_TA2T`, `RLAIF-V`, `TRL-Preference`); media paths are relative to `--media_root` (default: the data file's
folder).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from ..data.loading import DatasetSpec
from ..data.preference import PreferenceCollator, PreferenceDataset, PreferenceMessages
from ..training.dpo import pair_logps

logger = logging.get_logger(__name__)

BENCHMARK_NAME = "preference"


@dataclass
class PreferenceEvalArguments:
    """Arguments of `any2text eval --benchmark preference`."""

    model: str = field(metadata={"help": "The policy: a checkpoint loadable with AutoModelForImageTextToText."})
    data: str = field(metadata={"help": "Held-out pairs: .json/.jsonl/.parquet file, dataset folder or Hub id."})
    output_dir: str = field(metadata={"help": "Results go to OUTPUT_DIR/preference/."})
    benchmark: str = field(default=BENCHMARK_NAME, metadata={"help": "`preference`."})
    ref_model: str | None = field(
        default=None, metadata={"help": "Reference checkpoint: score implicit-reward accuracy against it."}
    )
    template: str = field(default="TRL-Preference", metadata={"help": "Preference template of the rows."})
    split: str = field(default="train", metadata={"help": "Dataset split."})
    media_root: str | None = field(default=None, metadata={"help": "Folder relative media paths start from."})
    limit: int | None = field(default=None, metadata={"help": "Score only the first LIMIT pairs."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per forward."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16 or float16."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})


def score_pairs(
    model: Any, processor: Any, pairs: Sequence[PreferenceMessages], batch_size: int = 8
) -> list[tuple[float, float]]:
    """`(log p(chosen), log p(rejected))` of every pair under `model` (eval mode, one row per pair)."""
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


def run_preference_eval(args: PreferenceEvalArguments, model: Any = None, processor: Any = None) -> dict[str, Any]:
    """Score `args.data` and write predictions.jsonl, scores.json and scores.md; returns the scores.json dict."""
    from ..inference import load_inference_model

    if model is None:
        model, processor = load_inference_model(args.model, args.dtype, args.device)
    spec = DatasetSpec(path=args.data, template=args.template, split=args.split, media_root=args.media_root)
    dataset = PreferenceDataset(spec, sampling_rate=getattr(getattr(processor, "feature_extractor", None),
                                                            "sampling_rate", None))  # fmt: skip
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    pairs = [dataset[i]["messages"] for i in range(count)]
    policy = score_pairs(model, processor, pairs, args.batch_size)
    reference = None
    if args.ref_model is not None:
        ref, _ = load_inference_model(args.ref_model, args.dtype, args.device)
        reference = score_pairs(ref, processor, pairs, args.batch_size)
        del ref
    right = preference_accuracy(policy, reference)

    out = Path(args.output_dir) / BENCHMARK_NAME
    out.mkdir(parents=True, exist_ok=True)
    table = dataset.datasets[0]
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i in range(count):
            row = table[int(dataset._row_index[i])]
            record = {
                "id": str(row.get("id", i)),
                "chosen_logp": policy[i][0],
                "rejected_logp": policy[i][1],
                "correct": right[i],
            }
            if reference is not None:
                record["ref_chosen_logp"], record["ref_rejected_logp"] = reference[i]
            f.write(json.dumps(record) + "\n")
    key = "reward_accuracy" if reference is not None else "logp_accuracy"
    scores = {key: sum(right) / max(len(right), 1)}
    if reference is not None:
        scores["ref_logp_accuracy"] = sum(preference_accuracy(reference)) / max(len(right), 1)
        scores["logp_accuracy"] = sum(preference_accuracy(policy)) / max(len(right), 1)
    result = {
        "benchmark": BENCHMARK_NAME,
        "primary_score": key,
        "scores": scores,
        "num_items": count,
        "args": asdict(args),
    }
    (out / "scores.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    lines = [f"# preference ({count} pairs)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in scores.items()]
    (out / "scores.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    (args,) = HfArgumentParser(PreferenceEvalArguments).parse_args_into_dataclasses(
        args=argv if argv is not None else sys.argv[1:]
    )
    result = run_preference_eval(args)
    print((Path(args.output_dir) / BENCHMARK_NAME / "scores.md").read_text())
    return result


def eval_main(argv: list[str] | None = None) -> Any:
    """`any2text eval`: `--benchmark preference` is scored here, every other benchmark by `evaluate.main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("--benchmark=preference",) for arg in argv) or any(
        arg == "--benchmark" and value == BENCHMARK_NAME for arg, value in zip(argv, argv[1:])
    ):
        return main(argv)
    from .evaluate import main as generation_main

    return generation_main(argv)


__all__ = ["PreferenceEvalArguments", "eval_main", "preference_accuracy", "run_preference_eval", "score_pairs"]
