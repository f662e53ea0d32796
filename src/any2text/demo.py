"""`make demo` / `any2text demo`: the whole recipe on tiny models, offline, in minutes.

    any2text demo --output_dir demo_output [--use_peft] [--n_train N] [--stage2_epochs E]

1. synthetic data: image questions (colour, shape, side), audio questions (pitch, number of beeps), text facts,
   written as LLaVA-style JSON with media folders and as parquet with embedded media;
2. tiny "pretrained" parts saved locally (a Llama with the committed tokenizer, a full CLIPModel, a full
   ClapModel), then assembled by the same builder the real recipe uses;
3. stage 1 (projectors) on the JSON data and stage 2 (language model + projectors, or LoRA) on the parquet data,
   both through `any2text.train`;
4. held-out accuracy per question type for the trained model, the same model with the media withheld ("blind"),
   and chance; the model is reloaded with `AutoModelForImageTextToText` / `AutoProcessor` for this;
5. stage 3, DPO (`any2text.dpo`, LoRA) on a preference task stage 2 never taught, whose preferred answer depends on
   the image or clip: held-out preference accuracy before and after, blind, and greedy answers (see `demo_dpo`);
6. `results.json`, `results.md` and `loss_curves.png` in the output folder, and a few answers next to the truth.
"""

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    ClapConfig,
    ClapModel,
    ClapTextConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
)
from transformers.utils import logging

from any2text.builders import build_llama_vision_audio
from any2text.builders.presets import (
    cheap_audio_config,
    cheap_feature_extractor,
    tiny_text_config,
    tiny_tokenizer_path,
    tiny_vision_config,
)
from any2text.data.loading import DatasetSpec, load_spec
from any2text.data.media import resolve_path
from any2text.data.synthetic import DEFAULT_WEIGHTS, generate_demo_data
from any2text.data.templates import get_template
from any2text.evaluation.generation import generate_batch

logger = logging.get_logger(__name__)

IMAGE_SIZE = 32
SAMPLING_RATE = 16000
# Shape is the hardest question for a random frozen encoder (it needs the layout of many patches): ask it more.
DEMO_WEIGHTS = {**DEFAULT_WEIGHTS, "image_shape": 2.5}


def save_tiny_parts(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Random tiny stand-ins for the Hub ids, saved the way the Hub holds them (full CLIP and CLAP models)."""
    torch.manual_seed(seed)
    paths = {name: folder / name for name in ("language_model", "clip", "clap")}
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    text_config = tiny_text_config(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2)
    AutoModelForCausalLM.from_config(text_config).save_pretrained(paths["language_model"])
    tokenizer.save_pretrained(paths["language_model"])

    # Patch 4: 48 pixel values into 64 dimensions loses nothing at the patch embedding; shapes need it.
    vision = tiny_vision_config(image_size=IMAGE_SIZE, patch_size=4, hidden_size=64)
    small_text = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    clip_config = CLIPConfig(
        text_config=CLIPTextConfig(**small_text, num_attention_heads=4).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=32,
    )
    CLIPModel(clip_config).save_pretrained(paths["clip"])
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(paths["clip"])

    clap_config = ClapConfig(
        text_config=ClapTextConfig(**small_text, num_attention_heads=4).to_dict(),
        audio_config=cheap_audio_config().to_dict(),
        projection_dim=32,
    )
    ClapModel(clap_config).save_pretrained(paths["clap"])
    cheap_feature_extractor(SAMPLING_RATE).save_pretrained(paths["clap"])
    return paths


def _train(argv: list[str]) -> None:
    from any2text.training.train import main as train_main

    code = train_main(argv)
    if code:
        raise RuntimeError(f"`any2text train` failed with exit code {code}: {' '.join(argv)}")


def _stage_args(model: Path, output: Path, data: str, epochs: float, lr: float, batch: int) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--output_dir", str(output),
        "--train_datasets", data, "--train_template", "LLAVA", "--train_split", "train",
        "--per_device_train_batch_size", str(batch), "--num_train_epochs", str(epochs),
        "--learning_rate", str(lr), "--lr_scheduler_type", "cosine", "--warmup_steps", "5",
        "--logging_steps", "5", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True",
        "--dataloader_num_workers", "0", "--seed", "0", "--disable_tqdm", "False", "--log_level", "warning",
    ]  # fmt: skip


def _strip_media(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [item for item in m["content"] if item["type"] == "text"]} for m in messages]


def evaluate_questions(
    model, processor, rows: list[dict], batch_size: int = 32
) -> tuple[dict[str, dict[str, float]], list[tuple[str, str, str, str]]]:
    """Accuracy per question type with the media and without them ("blind"), and (type, question, answer, truth)
    for every row."""
    template = get_template("LLAVA")
    prompts, blind, truths, types = [], [], [], []
    for row in rows:
        messages = template(row)
        question = [m for m in messages if m["role"] != "assistant"]
        prompts.append(question)
        blind.append(_strip_media(question))
        truths.append(messages[-1]["content"][-1]["text"].strip().lower())
        types.append(row["question_type"])
    answers = generate_batch(model, processor, prompts, max_new_tokens=4, batch_size=batch_size)
    blind_answers = generate_batch(model, processor, blind, max_new_tokens=4, batch_size=batch_size)
    correct: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for kind, truth, answer, blind_answer in zip(types, truths, answers, blind_answers):
        correct[kind][0] += _first_word(answer) == truth
        correct[kind][1] += _first_word(blind_answer) == truth
        correct[kind][2] += 1
    return {
        kind: {"accuracy": c / n, "blind_accuracy": b / n, "n": n} for kind, (c, b, n) in sorted(correct.items())
    }, list(zip(types, [_question_text(p) for p in prompts], answers, truths))


def _first_word(text: str) -> str:
    words = text.strip().lower().replace(".", " ").split()
    return words[0] if words else ""


def _question_text(messages: list[dict]) -> str:
    return " ".join(i["text"] for m in messages for i in m["content"] if i["type"] == "text")


def plot_losses(stage_dirs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stage_dirs), figsize=(5 * len(stage_dirs), 3.5))
    for ax, (stage, folder) in zip(axes, stage_dirs.items()):
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        points = [(h["step"], h["loss"]) for h in history if "loss" in h]
        ax.plot([s for s, _ in points], [loss for _, loss in points], marker=".")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_markdown(results: dict) -> str:
    lines = [
        "| question type | trained | blind (media withheld) | chance | n |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, r in results["per_type"].items():
        lines.append(f"| {kind} | {r['accuracy']:.1%} | {r['blind_accuracy']:.1%} | {r['chance']:.1%} | {r['n']} |")
    for name, r in results["per_modality"].items():
        lines.append(
            f"| **all {name}** | **{r['accuracy']:.1%}** | {r['blind_accuracy']:.1%} | {r['chance']:.1%} | {r['n']} |"
        )
    if results.get("dpo"):
        from any2text.demo_dpo import dpo_markdown

        lines += ["", dpo_markdown(results["dpo"]).rstrip()]
    return "\n".join(lines) + "\n"


def run_demo(
    output_dir: str | Path = "demo_output",
    n_train: int = 2500,
    n_test: int = 300,
    stage1_epochs: float = 2.0,
    stage2_epochs: float = 10.0,
    use_peft: bool = False,
    seed: int = 0,
    dpo_pairs: int = 256,
    dpo_epochs: float = 3.0,
) -> dict:
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    timings = {}

    logger.warning("[1/7] writing synthetic data")
    meta = generate_demo_data(
        out / "data", n_train=n_train, n_test=n_test, seed=seed, image_size=IMAGE_SIZE, weights=DEMO_WEIGHTS
    )
    logger.warning("[2/7] saving tiny pretrained parts and building the model with the real builder")
    parts = save_tiny_parts(out / "parts", seed=seed)
    build_llama_vision_audio(
        parts["language_model"], parts["clip"], parts["clap"], save_path=out / "model", dtype="float32", seed=seed
    )
    timings["data_and_build_s"] = time.perf_counter() - start

    logger.warning("[3/7] stage 1: projectors only (LLaVA JSON data)")
    stage1, stage2 = out / "stage1", out / "stage2"
    _train(
        _stage_args(out / "model", stage1, str(out / "data/llava/train.json"), stage1_epochs, 1e-3, 16)
        + ["--freeze_mm_proj", "False", "--freeze_language_model", "True"]
    )
    timings["stage1_s"] = time.perf_counter() - start - sum(timings.values())

    logger.warning("[4/7] stage 2: language model + projectors (parquet data)")
    stage2_args = _stage_args(stage1, stage2, str(out / "data/parquet/train.parquet"), stage2_epochs, 1e-3, 16)
    stage2_args += ["--freeze_mm_proj", "False", "--freeze_language_model", "False"]
    if use_peft:
        stage2_args += ["--use_peft", "True", "--lora_r", "32", "--lora_alpha", "64"]
    _train(stage2_args)
    final = stage2
    if use_peft:
        from any2text.training.merge import merge_lora

        merge_lora(str(stage2), str(out / "stage2_merged"))
        final = out / "stage2_merged"
    timings["stage2_s"] = time.perf_counter() - start - sum(timings.values())

    logger.warning("[5/7] held-out evaluation: trained vs blind vs chance")
    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    rows = load_spec(DatasetSpec(path=str(out / "data/llava/test.json"), template="LLAVA"))
    media_root = out / "data/llava"
    rows = [
        {**row, **{key: resolve_path(row[key], media_root) for key in ("image", "audio") if row.get(key)}}
        for row in rows
    ]
    per_type, samples = evaluate_questions(model, processor, rows)
    chance = {kind: info["chance"] for kind, info in meta["question_types"].items()}
    for kind, r in per_type.items():
        r["chance"] = chance[kind]
    per_modality = {}
    for modality in ("image", "audio", "text"):
        kinds = [k for k in per_type if k.startswith(modality)]
        n = sum(per_type[k]["n"] for k in kinds)
        if n:
            per_modality[modality] = {
                key: sum(per_type[k][key] * per_type[k]["n"] for k in kinds) / n
                for key in ("accuracy", "blind_accuracy", "chance")
            } | {"n": n}
    timings["eval_s"] = time.perf_counter() - start - sum(timings.values())

    dpo_results = None
    if dpo_pairs:
        from any2text.demo_dpo import run_dpo_stage

        logger.warning("[6/7] stage 3: DPO (LoRA) on a preference task stage 2 never taught")
        dpo_results = run_dpo_stage(out, final, n_train=dpo_pairs, n_test=max(n_test // 3, 32), epochs=dpo_epochs,
                                    seed=seed, image_size=IMAGE_SIZE, sampling_rate=SAMPLING_RATE)  # fmt: skip
        timings["dpo_s"] = time.perf_counter() - start - sum(timings.values())
    timings["total_s"] = time.perf_counter() - start

    results = {
        "per_type": per_type,
        "per_modality": per_modality,
        "timings": timings,
        "settings": {"n_train": n_train, "n_test": n_test, "stage1_epochs": stage1_epochs,
                     "stage2_epochs": stage2_epochs, "use_peft": use_peft, "seed": seed},
        "examples": [
            {"question_type": k, "question": q, "prediction": p, "truth": t} for k, q, p, t in samples[:8]
        ],
        "dpo": dpo_results,
    }  # fmt: skip
    logger.warning("[7/7] writing results")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    stages = {"stage 1 (projectors)": stage1, "stage 2 (LM + projectors)": stage2}
    if dpo_results is not None:
        stages["stage 3 (DPO, LoRA)"] = out / "dpo"
    plot_losses(stages, out / "loss_curves.png")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="any2text demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--n_train", type=int, default=2500)
    parser.add_argument("--n_test", type=int, default=300)
    parser.add_argument("--stage1_epochs", type=float, default=2.0)
    parser.add_argument("--stage2_epochs", type=float, default=10.0)
    parser.add_argument("--use_peft", action="store_true", help="stage 2 with LoRA, then merge-lora")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpo_pairs", type=int, default=256, help="preference pairs for stage 3 (0: no DPO stage)")
    parser.add_argument("--dpo_epochs", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.set_verbosity_warning()
    results = run_demo(
        args.output_dir,
        args.n_train,
        args.n_test,
        args.stage1_epochs,
        args.stage2_epochs,
        args.use_peft,
        args.seed,
        args.dpo_pairs,
        args.dpo_epochs,
    )
    print("\n" + results_markdown(results))
    print("A few held-out answers:")
    for ex in results["examples"]:
        print(f"  [{ex['question_type']}] {ex['question']!r} -> {ex['prediction']!r} (truth: {ex['truth']!r})")
    if results["dpo"]:
        print("Preference task, greedy answers before -> after DPO:")
        for ex in results["dpo"]["examples"]:
            print(
                f"  [{ex['kind']}] {ex['prompt']!r}: {ex['before']!r} -> {ex['after']!r} (preferred: {ex['preferred']!r})"
            )
    print(
        f"\nTotal {results['timings']['total_s']:.0f} s. Results, loss curves and the models are in {args.output_dir}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
