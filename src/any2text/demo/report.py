"""Scoring and reporting for `make demo`: held-out accuracy with and without the media, tables and loss curves."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..data.templates import get_template
from ..inference import generate_batch
from ..modalities import MODALITIES as MEDIA_MODALITIES

# Question types are named `<modality>_<what>`; text ones answer from the prompt alone.
MODALITIES = (*MEDIA_MODALITIES, "text")


def _strip_media(messages: list[dict]) -> list[dict]:
    return [{**m, "content": [item for item in m["content"] if item["type"] == "text"]} for m in messages]


def _has_media(messages: list[dict]) -> bool:
    return any(item["type"] != "text" for m in messages for item in m["content"])


def _first_word(text: str) -> str:
    words = text.strip().lower().replace(".", " ").split()
    return words[0] if words else ""


def _question_text(messages: list[dict]) -> str:
    return " ".join(i["text"] for m in messages for i in m["content"] if i["type"] == "text")


def evaluate_questions(
    model, processor, rows: list[dict], batch_size: int = 64
) -> tuple[dict[str, dict[str, float]], list[tuple[str, str, str, str]]]:
    """Accuracy per question type with the media and without them ("blind"), and (type, question, answer, truth)
    for every row.

    A text-only question is its own blind version, so it is generated once.
    """
    template = get_template("LLAVA")
    prompts, truths, types = [], [], []
    for row in rows:
        messages = template(row)
        prompts.append([m for m in messages if m["role"] != "assistant"])
        truths.append(messages[-1]["content"][-1]["text"].strip().lower())
        types.append(row["question_type"])
    answers = generate_batch(model, processor, prompts, max_new_tokens=4, batch_size=batch_size)
    with_media = [i for i, prompt in enumerate(prompts) if _has_media(prompt)]
    blind_only = generate_batch(
        model, processor, [_strip_media(prompts[i]) for i in with_media], max_new_tokens=4, batch_size=batch_size
    )
    blind_answers = list(answers)
    for i, answer in zip(with_media, blind_only):
        blind_answers[i] = answer

    correct: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for kind, truth, answer, blind_answer in zip(types, truths, answers, blind_answers):
        correct[kind][0] += _first_word(answer) == truth
        correct[kind][1] += _first_word(blind_answer) == truth
        correct[kind][2] += 1
    per_type = {
        kind: {"accuracy": c / n, "blind_accuracy": b / n, "n": n} for kind, (c, b, n) in sorted(correct.items())
    }
    return per_type, list(zip(types, [_question_text(p) for p in prompts], answers, truths))


def per_modality(per_type: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Row-weighted averages of `accuracy`, `blind_accuracy` and `chance` over the question types of each modality."""
    results = {}
    for modality in MODALITIES:
        kinds = [k for k in per_type if k.startswith(modality)]
        n = sum(per_type[k]["n"] for k in kinds)
        if n:
            results[modality] = {
                key: sum(per_type[k][key] * per_type[k]["n"] for k in kinds) / n
                for key in ("accuracy", "blind_accuracy", "chance")
            } | {"n": n}
    return results


def plot_losses(stage_dirs: dict[str, Path], path: Path) -> None:
    """One training-loss curve per stage, read from each stage's `trainer_state.json`."""
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


def results_markdown(results: dict, curves: str | None = None, stage_curves: dict[str, str] | None = None) -> str:
    """The held-out table, the wall times, the DPO, reward-model and GRPO tables; `curves` (a path relative to the file)
    embeds the loss curves image, `stage_curves` (stage name -> path) a stage's own `training_curves.png`."""
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
    timings = results.get("timings", {})
    if timings:
        lines += ["", "Wall time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timings.items()) + "."]
    if results.get("dpo"):
        from .dpo import dpo_markdown

        lines += ["", dpo_markdown(results["dpo"]).rstrip()]
    if results.get("reward"):
        from .reward import reward_markdown

        lines += ["", reward_markdown(results["reward"]).rstrip()]
    if results.get("grpo"):
        from .grpo import grpo_markdown

        lines += ["", grpo_markdown(results["grpo"]).rstrip()]
    if curves:
        lines += ["", f"![training loss per stage]({curves})"]
    for stage, path in (stage_curves or {}).items():
        lines += ["", f"![{stage}: training curves]({path})"]
    return "\n".join(lines) + "\n"


__all__ = ["evaluate_questions", "per_modality", "plot_losses", "results_markdown"]
