"""The GRPO stage of `make demo`: on-policy alignment of the stage-2 model to an instruction it was never taught,
rewarded by exact match.

The instruction is open: "Describe the picture in one word." about the demo's shapes and "Describe the audio." about
its beeps, and the reward defines what is wanted: the shape's colour and the beeps' pitch. Stage 2 knows both (it was
taught "What colour is the shape?" and "Is the sound high or low?") but, asked this way, it names whichever attribute
comes first to it (measured on a weak stage-2 model: a shape 55%, the side 25%, the colour 20% of the time; the pitch
or the number of beeps about half and half), so its reward starts low; GRPO has to learn which attribute the
instruction asks for, from the reward alone. The answer is read off the medium only: with the media withheld the
reward stays near chance (1/4 for colours, 1/2 for pitches). The prompts are TRL prompt-only rows (JSON lines, media
paths), like a user's data::

    {"id": "img-0", "prompt": "<image>\nDescribe the picture in one word.", "images": ["images/0.png"],
     "answer": "red", "kind": "image_colour"}

The stage runs `any2text grpo` (LoRA on the language model, projectors frozen, `beta` 0, the reward function
`exact_match` below) and reports the held-out reward of greedy answers before and after, with the media and with
them withheld ("blind").

The recipe's reasons, measured on the GRPO stage alone (same prompts) from nine stage-2 models of the demo and its
test. With 8 completions a prompt at temperature 1 and a constant learning rate of 3e-3 (the first recipe), two of
them ended at 0% and 50% held-out reward: where stage 2 never names the colour, 8 samples rarely do, every group's
rewards are equal and nothing is learned (the training reward stayed at 0 for half the run); where it did learn, the
constant rate later undid it (training reward 0.99, then 0.37 by the end). A linear decay alone fixed the late
collapse but left three of the nine at 50% (the colour never found), as did a constant 1e-3 for two of five; 16
completions with the decay reached 100% on eight of the nine, but the demo's own seed-0 run still never sampled a
colour (50%). Sampling at temperature 1.3 as well (the recipe now) reached 100% on that run and on the hard ones, and
87.5% on the weakest model, with the media withheld at most 25%.
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
from .synthetic import COLOR_NAMES, POSITIONS, SHAPES, make_audio, make_image

logger = logging.get_logger(__name__)

IMAGE_PROMPT = "Describe the picture in one word."
AUDIO_PROMPT = "Describe the audio."


def exact_match(prompts, completions, answer, **kwargs) -> list[float]:
    """The demo's reward: 1.0 when the completion, stripped and lower-cased (a final full stop dropped), is the
    `answer` column, else 0.0 (TRL's reward-function signature; message completions read their text)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(text.strip().lower().rstrip(".") == a) for text, a in zip(texts, answer)]


def generate_describe_prompts(
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
            if i % 2 == 0:
                colour = COLOR_NAMES[(i // 2) % len(COLOR_NAMES)]  # balanced
                shape, side = SHAPES[int(rng.integers(len(SHAPES)))], POSITIONS[int(rng.integers(len(POSITIONS)))]
                name = f"images/{counter}.png"
                make_image(colour, shape, side, image_size, rng).save(folder / name)
                rows.append({"id": f"img-{counter}", "prompt": f"<image>\n{IMAGE_PROMPT}", "images": [name],
                             "answer": colour, "kind": "image_colour"})  # fmt: skip
            else:
                pitch = "high" if (i // 2) % 2 == 0 else "low"
                name = f"audio/{counter}.wav"
                wave = make_audio(pitch, int(rng.integers(1, 4)), sampling_rate, 1.0, rng)
                sf.write(folder / name, wave, sampling_rate)
                rows.append({"id": f"aud-{counter}", "prompt": f"<audio>\n{AUDIO_PROMPT}", "audios": [name],
                             "answer": pitch, "kind": "audio_pitch"})  # fmt: skip
            counter += 1
        paths[split] = folder / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            for j in rng.permutation(len(rows)):
                f.write(json.dumps(rows[j]) + "\n")
    return paths


def _grpo_args(model: Path, output: Path, data: Path, epochs: float, lr: float, seed: int, generations: int,
               prompts_per_step: int, temperature: float, beta: float) -> list[str]:  # fmt: skip
    return [
        "--model_name_or_path", str(model), "--output_dir", str(output),
        "--train_datasets", str(data), "--train_template", "TRL-Prompt",
        "--reward_funcs", "any2text.demo.grpo:exact_match",
        "--use_peft", "True", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0",
        "--freeze_language_model", "False", "--freeze_mm_proj", "True",
        "--num_generations", str(generations), "--per_device_train_batch_size", str(generations * prompts_per_step),
        "--max_completion_length", "3", "--temperature", str(temperature), "--beta", str(beta), "--loss_type", "dapo",
        "--num_train_epochs", str(epochs), "--learning_rate", str(lr), "--lr_scheduler_type", "linear",
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
    out: Path, model_dir: Path, n_train: int = 64, n_test: int = 64, epochs: float = 4.0, lr: float = 3e-3,
    seed: int = 0, image_size: int = 32, sampling_rate: int = 16000, generations: int = 16, prompts_per_step: int = 4,
    temperature: float = 1.3, beta: float = 0.0,
) -> dict:  # fmt: skip
    """Write the prompts, score the stage-2 model's greedy answers, run `any2text grpo` (LoRA), merge, score again;
    returns the held-out rewards (per task and `all`, with and without the media) and a few answers."""
    from ..training.grpo import main as grpo_main
    from ..training.merge import merge_lora

    files = generate_describe_prompts(out / "data/grpo", n_train, n_test, seed, image_size, sampling_rate)
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

    args = _grpo_args(model_dir, out / "grpo", files["train"], epochs, lr, seed, generations, prompts_per_step,
                      temperature, beta)  # fmt: skip
    if grpo_main(args):
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
        "temperature": temperature,
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


__all__ = ["exact_match", "generate_describe_prompts", "grpo_markdown", "run_grpo_stage"]
