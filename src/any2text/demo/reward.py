"""The reward-model stage of `make demo`: a `score` head on the stage-2 model, trained on the DPO stage's pairs.

The pairs are `demo.synthetic_preference`'s ("Is this colour warm or cool?" about the demo's shapes, "Would a bird or
a lion make this sound?" about its beeps), written as JSON lines with media paths: the preferred answer is decided by
the medium alone and both answers are equally frequent. The stage runs the two commands a user would:

    any2text reward --model_name_or_path stage2 --train_datasets pairs/train.jsonl --train_template TRL-Preference \\
        --freeze_language_model False --num_train_epochs 8 --learning_rate 2e-4 --output_dir reward
    any2text eval --benchmark reward --model reward --data pairs/test.jsonl --output_dir eval_reward

and reports the held-out pairwise accuracy (`r(chosen) > r(rejected)`) with the media and with them withheld
("blind": near 50%, since only the medium decides). The language model trains too: with it frozen (only the `score`
head and the projectors) the reward model stayed near chance on these pairs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from transformers.utils import logging

from ..cli import main as cli_main

logger = logging.get_logger(__name__)


def _reward_args(
    model: Path, output: Path, data: Path, epochs: float, lr: float, seed: int, batch_size: int
) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--output_dir", str(output),
        "--train_datasets", str(data), "--train_template", "TRL-Preference",
        "--freeze_language_model", "False", "--freeze_mm_proj", "False",
        "--per_device_train_batch_size", str(batch_size), "--num_train_epochs", str(epochs), "--learning_rate", str(lr),
        "--lr_scheduler_type", "cosine", "--warmup_steps", "3", "--logging_steps", "4", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "True", "--dataloader_num_workers", "0", "--seed", str(seed),
        "--disable_tqdm", "False", "--log_level", "warning",
    ]  # fmt: skip


def _by_kind(kinds: dict[str, str], records: list[dict], key: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        right = record[f"{key}chosen_reward"] > record[f"{key}rejected_reward"]
        groups[kinds[record["id"]]].append(right)
        groups["all"].append(right)
    return {kind: sum(v) / len(v) for kind, v in sorted(groups.items())}


def run_reward_stage(
    out: Path, model_dir: Path, pairs: dict[str, Path], epochs: float = 8.0, lr: float = 2e-4, seed: int = 0,
    batch_size: int = 8,
) -> dict:  # fmt: skip
    """Train the reward model on `pairs["train"]` from `model_dir` with `any2text reward`, score `pairs["test"]` with
    `any2text eval --benchmark reward`; returns the held-out accuracies (per task and `all`, with and without media).
    """
    if cli_main(["reward", *_reward_args(model_dir, out / "reward", pairs["train"], epochs, lr, seed, batch_size)]):
        raise RuntimeError("`any2text reward` failed")
    eval_dir = out / "eval_reward"
    argv = ["eval", "--benchmark", "reward", "--model", str(out / "reward"), "--data", str(pairs["test"]),
            "--output_dir", str(eval_dir), "--batch_size", "32", "--device", "cpu", "--overwrite", "True"]  # fmt: skip
    if cli_main(argv):
        raise RuntimeError("`any2text eval --benchmark reward` failed")
    scores = json.loads((eval_dir / "reward/scores.json").read_text())
    rows = [json.loads(line) for line in pairs["test"].read_text().splitlines()]
    kinds = {row["id"]: row["kind"] for row in rows}
    records = [json.loads(line) for line in (eval_dir / "reward/predictions.jsonl").read_text().splitlines()]
    return {
        "accuracy": _by_kind(kinds, records, ""),
        "blind_accuracy": _by_kind(kinds, records, "blind_"),
        "benchmark_scores": scores["scores"],
        "n_train": sum(1 for _ in pairs["train"].read_text().splitlines()),
        "n_test": scores["num_items"],
        "epochs": epochs,
        "learning_rate": lr,
    }


def reward_markdown(results: dict) -> str:
    kinds = [k for k in results["accuracy"] if k != "all"] + ["all"]
    lines = ["| reward model, held-out pairs | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for label, key in (("pairwise accuracy, r(chosen) > r(rejected)", "accuracy"),
                       ("the same, media withheld", "blind_accuracy")):  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(f"{results[key][k]:.1%}" for k in kinds) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["reward_markdown", "run_reward_stage"]
