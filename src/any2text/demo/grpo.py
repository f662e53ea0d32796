"""The GRPO stage of `make demo`: on-policy alignment of the stage-2 model on a task with exact answers it was never
taught, rewarded by exact match.

The task asks for the *opposite* of what the medium shows: "What is the opposite of the shape's side?" about the
demo's shapes (`left` -> `right`) and "What is the opposite of the pitch?" about its beeps (`high` -> `low`). Stage 2
taught the words (side and pitch questions, and "What is the opposite of {x}?" about words) but not this question, and
the answer depends on the medium only, with both answers equally frequent: a model that does not look at the medium
scores half. The prompts are TRL prompt-only rows (JSON lines, media paths), like a user's data::

    {"id": "img-0", "prompt": "<image>\\nWhat is the opposite of the shape's side?", "images": ["images/0.png"],
     "answer": "right", "kind": "image_opposite_side"}

The stage runs `any2text grpo` (LoRA on the language model, `beta` 0, the reward function `exact_match` below) and
reports the held-out reward of greedy answers before and after, with the media and with them withheld ("blind").
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging

from ..data.loading import DatasetSpec
from ..data.prompts import PromptDataset
from ..inference import generate_batch
from .synthetic import COLOR_NAMES, SHAPES, make_audio, make_image

logger = logging.get_logger(__name__)

OPPOSITE = {"left": "right", "right": "left", "high": "low", "low": "high"}
SIDE_PROMPT = "What is the opposite of the shape's side?"
PITCH_PROMPT = "What is the opposite of the pitch?"


def exact_match(prompts, completions, answer, **kwargs) -> list[float]:
    """The demo's reward: 1.0 when the completion, stripped and lower-cased (a final full stop dropped), is the
    `answer` column, else 0.0 (TRL's reward-function signature; message completions read their text)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(text.strip().lower().rstrip(".") == a) for text, a in zip(texts, answer)]


def generate_opposite_prompts(
    folder: str | Path, n_train: int = 64, n_test: int = 64, seed: int = 0, image_size: int = 32,
    sampling_rate: int = 16000,
) -> dict[str, Path]:  # fmt: skip
    """Write `train.jsonl` / `test.jsonl` (image and audio rows alternating, answers balanced) and their media."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, counter = {}, 0
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            first = (i // 2) % 2 == 0  # balanced: the shown value alternates every two rows
            if i % 2 == 0:
                side = "left" if first else "right"
                colour = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
                image = make_image(colour, SHAPES[int(rng.integers(len(SHAPES)))], side, image_size, rng)
                name = f"images/{counter}.png"
                image.save(folder / name)
                rows.append({"id": f"img-{counter}", "prompt": f"<image>\n{SIDE_PROMPT}", "images": [name],
                             "answer": OPPOSITE[side], "kind": "image_opposite_side"})  # fmt: skip
            else:
                pitch = "high" if first else "low"
                name = f"audio/{counter}.wav"
                sf.write(
                    folder / name, make_audio(pitch, int(rng.integers(1, 4)), sampling_rate, 1.0, rng), sampling_rate
                )
                rows.append({"id": f"aud-{counter}", "prompt": f"<audio>\n{PITCH_PROMPT}", "audios": [name],
                             "answer": OPPOSITE[pitch], "kind": "audio_opposite_pitch"})  # fmt: skip
            counter += 1
        paths[split] = folder / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            for j in rng.permutation(len(rows)):
                f.write(json.dumps(rows[j]) + "\n")
    return paths


def _grpo_args(model: Path, output: Path, data: Path, epochs: float, lr: float, seed: int, generations: int,
               prompts_per_step: int) -> list[str]:  # fmt: skip
    return [
        "--model_name_or_path", str(model), "--output_dir", str(output),
        "--train_datasets", str(data), "--train_template", "TRL-Prompt",
        "--reward_funcs", "any2text.demo.grpo:exact_match",
        "--use_peft", "True", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0",
        "--freeze_language_model", "False", "--freeze_mm_proj", "False",
        "--num_generations", str(generations), "--per_device_train_batch_size", str(generations * prompts_per_step),
        "--max_completion_length", "4", "--temperature", "1.0", "--beta", "0.0", "--loss_type", "dapo",
        "--num_train_epochs", str(epochs), "--learning_rate", str(lr), "--lr_scheduler_type", "constant",
        "--logging_steps", "4", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True",
        "--dataloader_num_workers", "0", "--seed", str(seed), "--disable_tqdm", "False", "--log_level", "warning",
    ]  # fmt: skip


def _rewards(model, processor, prompts, answers, kinds) -> dict[str, float]:
    texts = generate_batch(model, processor, prompts, max_new_tokens=4, batch_size=32)
    rewards = exact_match(None, texts, answers)
    groups: dict[str, list[float]] = defaultdict(list)
    for kind, reward in zip(kinds, rewards):
        groups[kind].append(reward)
        groups["all"].append(reward)
    return {kind: sum(v) / len(v) for kind, v in sorted(groups.items())}


def run_grpo_stage(
    out: Path, model_dir: Path, n_train: int = 64, n_test: int = 64, epochs: float = 4.0, lr: float = 5e-3,
    seed: int = 0, image_size: int = 32, sampling_rate: int = 16000, generations: int = 8, prompts_per_step: int = 4,
) -> dict:  # fmt: skip
    """Write the prompts, score the stage-2 model's greedy answers, run `any2text grpo` (LoRA), merge, score again;
    returns the held-out rewards (per task and `all`, with and without the media) and a few answers."""
    from ..training.grpo import main as grpo_main
    from ..training.merge import merge_lora

    files = generate_opposite_prompts(out / "data/grpo", n_train, n_test, seed, image_size, sampling_rate)
    test = PromptDataset(DatasetSpec(path=str(files["test"]), template="TRL-Prompt"), sampling_rate=sampling_rate)
    items = [test[i]["messages"] for i in range(len(test))]
    prompts = [list(item) for item in items]
    blind = [[{**m, "content": [c for c in m["content"] if c["type"] == "text"]} for m in p] for p in prompts]
    answers = [item.columns["answer"] for item in items]
    kinds = [item.columns["kind"] for item in items]
    processor = AutoProcessor.from_pretrained(model_dir)

    before_model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    before = _rewards(before_model, processor, prompts, answers, kinds)
    before_blind = _rewards(before_model, processor, blind, answers, kinds)
    before_answers = generate_batch(before_model, processor, prompts[:6], max_new_tokens=4)
    del before_model

    if grpo_main(_grpo_args(model_dir, out / "grpo", files["train"], epochs, lr, seed, generations, prompts_per_step)):
        raise RuntimeError("`any2text grpo` failed")
    merge_lora(str(out / "grpo"), str(out / "grpo_merged"))
    after_model = AutoModelForImageTextToText.from_pretrained(out / "grpo_merged").eval()
    after = _rewards(after_model, processor, prompts, answers, kinds)
    after_blind = _rewards(after_model, processor, blind, answers, kinds)
    after_answers = generate_batch(after_model, processor, prompts[:6], max_new_tokens=4)
    return {
        "reward_before": before,
        "reward_after": after,
        "blind_reward_before": before_blind,
        "blind_reward_after": after_blind,
        "n_train": n_train,
        "n_test": n_test,
        "epochs": epochs,
        "learning_rate": lr,
        "num_generations": generations,
        "examples": [
            {"kind": k, "prompt": p[-1]["content"][-1]["text"], "answer": a, "before": b, "after": f}
            for k, p, a, b, f in zip(kinds, prompts, answers, before_answers, after_answers)
        ],
    }


def grpo_markdown(results: dict) -> str:
    kinds = [k for k in results["reward_after"] if k != "all"] + ["all"]
    lines = ["| GRPO stage, held-out exact-match reward | " + " | ".join(f"{k} before | {k} after" for k in kinds) + " |",
             "|---|" + "---:|" * (2 * len(kinds))]  # fmt: skip
    for label, key in (("with the media", "reward"), ("media withheld (blind)", "blind_reward")):
        cells = []
        for kind in kinds:
            cells += [f"{results[f'{key}_before'][kind]:.1%}", f"{results[f'{key}_after'][kind]:.1%}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["exact_match", "generate_opposite_prompts", "grpo_markdown", "run_grpo_stage"]
