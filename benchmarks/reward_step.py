"""Reward-model training step: one row per pair, media encoded once, vs two sequences per pair, media encoded twice.

    python benchmarks/reward_step.py [--batch 4] [--steps 3] [--repeats 3]
    python benchmarks/reward_step.py --smoke        # tiny LM, one round, seconds: checks the script runs

Checkpoint and images come from `stage2_throughput.prepare` (its set-up flags: `--lm_layers` / `--lm_hidden` /
`--lm_ffn` / `--samples` / `--workdir`; by default the same random 8-layer, hidden-512 Llama with vocabulary 32,000 and
2-layer CLIP ViT at 224 px, 256 image tokens). Next to them this writes a tiny CLAP audio tower (`tiny_audio_config`:
64 tokens a clip, as laion/clap-htsat-fused), a LlamaVisionAudio checkpoint of the three (`build_llama_vision_audio`)
and, from it, one reward model (`load_reward_model`: the `score` head initialised once, with `--seed`), saved, so
every process loads the very same weights. The pairs (`TRL-Preference` rows, built in memory): one of `prepare`'s
images, a `--audio_seconds` clip at 48 kHz (a seeded tone in noise), the question "Describe the picture and the
sound.", and two answers of long-tailed length (`prepare`'s answers, median ≈ 60 tokens, at most
`--max_answer_words` words: the pair's own one chosen, another pair's rejected).

Variants, each run in its own process, interleaved over `--repeats` rounds (the order alternates between rounds;
the figures are medians of rounds):
- `pair_row` (any2text's `RewardTrainer`): `RewardCollator` batches, ONE row per pair `[prompt | chosen | rejected]`
  with the pair attention mask, rewards from one forward (`pair_rewards`); the prompt and its media run once;
- `two_sequences` (TRL's `RewardTrainer` layout, or a plain `AutoModelForSequenceClassification`): `prompt + chosen`
  and `prompt + rejected` as two right-padded rows each carrying the media (`MultimodalCollator`, all chosen rows then
  all rejected rows, one forward as TRL's collator does), the reward of each row at its last non-pad token.

Both: the same model (vision and audio towers frozen, projectors, language model and `score` train, dropout off as
`RewardTrainer` sets it), the same `--batch` pairs every step, TRL's loss (`reward_loss`: `-logsigmoid(r_chosen -
r_rejected)`). A step is forward + loss + backward (no optimizer update: it is the same for both), on a batch collated
once before the steps (its collation time, median of `--steps + 1` collations, is reported apart). `--steps` timed
steps after one warm-up step, `--threads` torch threads.

Before any timing a `check` process runs both layouts on the same model and batch and asserts that they compute the
same thing: equal rewards (chosen and rejected, every pair), equal loss and equal gradients of every trained parameter
(within float32 tolerance), and the expected encoder work (pair row: each image and clip once; two sequences: twice).
Each timed worker also reports its warm-up rewards; the parent asserts they agree across variants.

Reported per variant: median step wall time and process CPU time (all threads; on a machine shared with other jobs the
wall time grows with their load, the CPU time much less), rows and tokens processed a step (rows x length, padding
included, and real tokens), images and clips encoded a step and encoder calls (forward hooks on the towers), peak RSS
of the process and the RSS the warm-up step adds over the loaded model and batch (activations and gradients), the
1-minute load average around each run; pair_row / two_sequences ratios per round, their median and spread. Writes
benchmarks/results/reward_step.json (`--smoke`: build/reward_step_smoke.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

# The benchmark's folder is first on `sys.path` when it runs as a script.
from stage2_throughput import RESULT, add_setup_arguments, prepare, run_worker, workdir_of

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("pair_row", "two_sequences")
QUESTION = "Describe the picture and the sound."
SAMPLING_RATE = 48000  # ClapFeatureExtractor's
REWARD_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
GRADIENT_TOLERANCE = 1e-3  # largest ||g_pair_row - g_two_sequences|| / ||g_two_sequences|| over the parameters


# ---------------------------------------------------------------------------------------------------------------------
# Set-up (parent process): the reward model next to `prepare`'s checkpoints


def prepare_reward_model(workdir: Path, seed: int) -> Path:
    """A CLAP audio tower, a LlamaVisionAudio checkpoint of `prepare`'s LM + CLIP + it, and the reward model (its
    `score` head initialised once), written into `workdir` (once). Returns the reward model's folder."""
    import torch
    from transformers import ClapAudioModel, ClapFeatureExtractor

    from any2text.builders.llama_vision_audio import build_llama_vision_audio
    from any2text.builders.presets import tiny_audio_config
    from any2text.training.reward import load_reward_model

    path = workdir / "reward_model"
    if (path / "done.json").is_file():
        return path
    torch.manual_seed(seed)
    ClapAudioModel(tiny_audio_config()).save_pretrained(workdir / "clap")
    ClapFeatureExtractor().save_pretrained(workdir / "clap")
    build_llama_vision_audio(
        workdir / "lm", workdir / "clip", workdir / "clap", workdir / "ours_av", dtype="float32", seed=seed
    )
    torch.manual_seed(seed)
    model = load_reward_model(str(workdir / "ours_av"), dtype="float32")
    model.save_pretrained(path)
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(workdir / "ours_av").save_pretrained(path)
    (path / "done.json").write_text(json.dumps({"seed": seed}))
    return path


def make_pairs(workdir: Path, count: int, max_answer_words: int, audio_seconds: float, seed: int) -> list:
    """`count` `TRL-Preference` pairs, each with one image, one audio clip, the question and two answers."""
    from PIL import Image

    from any2text.data.templates import get_template

    rows = json.loads((workdir / "data.json").read_text())
    if count > len(rows):
        raise SystemExit(f"{count} pairs need as many images; `prepare` wrote {len(rows)}: raise `--samples`.")
    answers = [" ".join(row["conversations"][1]["value"].split()[:max_answer_words]) for row in rows]
    rng = np.random.default_rng(seed)
    template = get_template("TRL-Preference")
    t = np.arange(int(audio_seconds * SAMPLING_RATE)) / SAMPLING_RATE
    pairs = []
    for i in range(count):
        other = (i + int(rng.integers(1, len(rows)))) % len(rows)  # any other row's answer
        clip = 0.3 * np.sin(2 * np.pi * float(rng.uniform(200, 4000)) * t) + 0.05 * rng.standard_normal(len(t))
        pairs.append(template({
            "prompt": QUESTION, "chosen": answers[i], "rejected": answers[other],
            "images": [Image.open(workdir / rows[i]["image"]).convert("RGB")],
            "audios": [{"array": clip.astype(np.float32), "sampling_rate": SAMPLING_RATE}],
        }))  # fmt: skip
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# The two layouts


def collate(variant: str, processor, pairs: list) -> dict:
    from any2text.data.collator import MultimodalCollator
    from any2text.training.reward import RewardCollator

    if variant == "pair_row":
        return RewardCollator(processor)([{"messages": pair, "index": i} for i, pair in enumerate(pairs)])
    conversations = [list(pair) for pair in pairs] + [[*pair.prompt, *pair.rejected] for pair in pairs]
    batch = MultimodalCollator(processor)([{"messages": conversation} for conversation in conversations])
    batch.pop("labels")  # a reward model scores the sequence; the answer tokens are no targets
    return batch


def rewards(variant: str, model, batch: dict, pad_token_id: int):
    """`(chosen, rejected)`, one reward per pair."""
    from any2text.training.reward import pair_rewards

    if variant == "pair_row":
        return pair_rewards(model, batch, pad_token_id)
    scores = model(**batch, use_cache=False).logits[:, 0]  # the last non-pad token of each row
    return scores.chunk(2)


def real_tokens(variant: str, batch: dict, pad_token_id: int) -> int:
    if variant == "pair_row":  # the 4D mask: a pad column attends to nothing but may attend itself; count tokens
        return int((batch["input_ids"] != pad_token_id).sum())
    return int(batch["attention_mask"].sum())


class EncoderCounter:
    """Forward pre-hooks on the vision and audio towers: calls, and items (images / clips) encoded."""

    def __init__(self, model):
        self.counts = {"vision_calls": 0, "images": 0, "audio_calls": 0, "clips": 0}
        for name, items, tower in (("vision_calls", "images", model.model.vision_tower),
                                   ("audio_calls", "clips", model.model.audio_tower)):  # fmt: skip
            tower.register_forward_pre_hook(self._hook(name, items), with_kwargs=True)

    def _hook(self, calls: str, items: str):
        def hook(module, args, kwargs):
            first = args[0] if args else next(v for k, v in kwargs.items() if k in ("pixel_values", "input_features"))
            self.counts[calls] += 1
            self.counts[items] += int(first.shape[0])

        return hook

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)


def load_model(path: Path):
    from transformers import AutoProcessor

    from any2text.training.dpo import disable_dropout
    from any2text.training.reward import load_reward_model

    model = load_reward_model(str(path), dtype="float32")
    model.model.vision_tower.requires_grad_(False)  # the reward stage's default freezing: towers frozen
    model.model.audio_tower.requires_grad_(False)
    disable_dropout(model)  # RewardTrainer's `disable_dropout=True`
    return model.train(), AutoProcessor.from_pretrained(path)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (`VmHWM`) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------------
# Workers (child processes)


def run_check(model_path: Path, pairs: list, threads: int) -> dict:
    """Both layouts on one model and batch: rewards, loss and every trained parameter's gradient must agree."""
    import torch

    from any2text.training.reward import reward_loss

    torch.set_num_threads(threads)
    model, processor = load_model(model_path)
    counter = EncoderCounter(model)
    pad_token_id = model.config.get_text_config().pad_token_id
    out = {}
    for variant in VARIANTS:
        batch = collate(variant, processor, pairs)
        counter.reset()
        chosen, rejected = rewards(variant, model, batch, pad_token_id)
        loss = reward_loss(chosen, rejected)
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        out[variant] = {"chosen": chosen.detach(), "rejected": rejected.detach(), "loss": loss.detach(),
                        "grads": grads, "encoded": dict(counter.counts)}  # fmt: skip
    ours, theirs = out["pair_row"], out["two_sequences"]
    torch.testing.assert_close(ours["chosen"], theirs["chosen"], **REWARD_TOLERANCE)
    torch.testing.assert_close(ours["rejected"], theirs["rejected"], **REWARD_TOLERANCE)
    torch.testing.assert_close(ours["loss"], theirs["loss"], **REWARD_TOLERANCE)
    assert not torch.equal(ours["chosen"], ours["rejected"]), "chosen and rejected rewards are equal: a broken check"
    assert ours["grads"].keys() == theirs["grads"].keys() and ours["grads"], "different (or no) parameters trained"
    relative = {name: float((ours["grads"][name] - g).norm() / g.norm().clamp_min(1e-30))
                for name, g in theirs["grads"].items()}  # fmt: skip
    worst = max(relative, key=relative.get)
    assert relative[worst] < GRADIENT_TOLERANCE, f"gradients differ: {worst} by {relative[worst]:.2e} (relative)"
    n = len(pairs)
    # In training LlamaVisionAudio appends silent "longer" clip(s) so CLAP's fusion branch always runs (ZeRO-3): the
    # same number in both layouts, on top of the batch's clips.
    extra = out["pair_row"]["encoded"]["clips"] - n
    expected = {"pair_row": {"vision_calls": 1, "images": n, "audio_calls": 1, "clips": n + extra},
                "two_sequences": {"vision_calls": 1, "images": 2 * n, "audio_calls": 1, "clips": 2 * n + extra}}  # fmt: skip
    assert 0 <= extra <= 2, f"{extra} clips encoded beyond the batch's {n}"
    for variant in VARIANTS:
        assert out[variant]["encoded"] == expected[variant], (variant, out[variant]["encoded"], expected[variant])
    return {
        "pairs": n,
        "rewards_chosen": ours["chosen"].tolist(),
        "rewards_rejected": ours["rejected"].tolist(),
        "max_abs_reward_difference": float(
            torch.cat([ours["chosen"] - theirs["chosen"], ours["rejected"] - theirs["rejected"]]).abs().max()
        ),
        "loss": [float(ours["loss"]), float(theirs["loss"])],
        "trained_parameters": len(relative),
        "max_relative_gradient_difference": relative[worst],
        "worst_parameter": worst,
        "encoded": {variant: out[variant]["encoded"] for variant in VARIANTS},
        "silent_fusion_clips": extra,
    }


def run_variant(variant: str, model_path: Path, pairs: list, steps: int, threads: int) -> dict:
    import torch

    from any2text.training.reward import reward_loss

    torch.set_num_threads(threads)
    rss_start = _status_mb("VmRSS")
    model, processor = load_model(model_path)
    counter = EncoderCounter(model)
    pad_token_id = model.config.get_text_config().pad_token_id
    collate_times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        batch = collate(variant, processor, pairs)
        collate_times.append(time.perf_counter() - start)

    def step():
        chosen, rejected = rewards(variant, model, batch, pad_token_id)
        loss = reward_loss(chosen, rejected)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return chosen.detach(), rejected.detach(), loss.detach()

    load_before = os.getloadavg()[0]
    rss_loaded = _status_mb("VmRSS")  # imports, model, batch
    peak_reset = _reset_peak_rss()
    chosen, rejected, loss = step()  # warm-up; its peak is the step's memory (later steps reuse freed memory)
    warmup_peak = _status_mb("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counter.reset()
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "step_s": statistics.median(wall),
        "step_s_per_step": wall,
        "step_cpu_s": statistics.median(cpu),
        "collate_s": statistics.median(collate_times),
        "rows": int(batch["input_ids"].shape[0]),
        "tokens_per_step": int(batch["input_ids"].numel()),
        "real_tokens_per_step": real_tokens(variant, batch, pad_token_id),
        **{f"{key}_per_step": value / steps for key, value in counter.counts.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "step_rss_growth_mb": warmup_peak - rss_loaded,
        "peak_rss_reset": peak_reset,
        "rewards_chosen": chosen.tolist(),
        "rewards_rejected": rejected.tolist(),
        "loss": float(loss),
        "threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],  # 1-minute load of the machine before / after the steps
    }


# ---------------------------------------------------------------------------------------------------------------------
# Driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="pairs a step (both layouts)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps a worker, after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every variant once")
    parser.add_argument("--max_answer_words", type=int, default=200, help="answers are cut to this many words")
    parser.add_argument("--audio_seconds", type=float, default=5.0, help="length of each pair's clip")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny LM, batch 2, 1 timed step, 1 round: seconds")
    add_setup_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.lm_layers, args.lm_hidden, args.lm_ffn, args.samples = 1, 64, 2.0, 8
        args.batch, args.steps, args.repeats, args.max_answer_words, args.audio_seconds = 2, 1, 1, 20, 1.0
    workdir = workdir_of(args)
    model_path = workdir / "reward_model"

    if args.worker:
        pairs = make_pairs(workdir, args.batch, args.max_answer_words, args.audio_seconds, args.seed)
        if args.worker == "check":
            result = run_check(model_path, pairs, args.threads)
        else:
            result = run_variant(args.worker, model_path, pairs, args.steps, args.threads)
        print(RESULT + json.dumps(result), flush=True)
        return

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the workers inherit it; they also call set_num_threads
    prepare(workdir, args.samples, args.seed, args.lm_layers, args.lm_hidden, args.lm_ffn)
    prepare_reward_model(workdir, args.seed)
    flags = [
        "--workdir", str(workdir), "--samples", str(args.samples), "--batch", str(args.batch),
        "--steps", str(args.steps), "--max_answer_words", str(args.max_answer_words),
        "--audio_seconds", str(args.audio_seconds), "--threads", str(args.threads), "--seed", str(args.seed),
    ]  # fmt: skip
    check = run_worker(__file__, "check", flags)  # raises unless both layouts compute the same rewards and gradients
    print(f"check: both layouts give the same rewards (max |difference| {check['max_abs_reward_difference']:.1e}), "
          f"loss {check['loss'][0]:.6f} / {check['loss'][1]:.6f}, gradients of {check['trained_parameters']} "
          f"parameters (max relative difference {check['max_relative_gradient_difference']:.1e}); "
          f"encoded {check['encoded']}", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.repeats):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]  # interleaved, and neither always runs first
        for variant in order:
            start = time.perf_counter()
            runs[variant].append(run_worker(__file__, variant, flags))
            r = runs[variant][-1]
            print(f"round {round_}: {variant} ({time.perf_counter() - start:.0f} s): step {r['step_s']:.2f} s "
                  f"(CPU {r['step_cpu_s']:.2f} s), {r['tokens_per_step']} tokens, step RSS growth "
                  f"{r['step_rss_growth_mb']:.0f} MB, load {r['load_average'][0]:.1f}", flush=True)  # fmt: skip
        ours, theirs = runs["pair_row"][-1], runs["two_sequences"][-1]
        for side in ("rewards_chosen", "rewards_rejected"):  # the timed processes computed the same thing too
            np.testing.assert_allclose(ours[side], theirs[side], **REWARD_TOLERANCE)
        report(runs, args, check, workdir, final=round_ == args.repeats - 1)


RATIO_KEYS = {
    "step_time": "step_s",
    "step_cpu_time": "step_cpu_s",
    "peak_rss": "peak_rss_mb",
    "step_rss_growth": "step_rss_growth_mb",
    "tokens": "tokens_per_step",
    "real_tokens": "real_tokens_per_step",
    "images_encoded": "images_per_step",
    "clips_encoded": "clips_per_step",
    "collate_time": "collate_s",
}


def report(runs: dict[str, list[dict]], args: argparse.Namespace, check: dict, workdir: Path, final: bool) -> None:
    """Medians over the rounds so far and pair_row / two_sequences ratios; written after every round (a long run on
    the shared machine can be cut short)."""
    summary = {}
    for variant, results in runs.items():
        summary[variant] = {key: statistics.median(r[key] for r in results)
                            for key, value in results[0].items() if isinstance(value, int | float)}  # fmt: skip
    print("\n| layout | step (s) | step CPU (s) | rows | tokens / step | real tokens / step | images / step | "
          "clips / step | encoder calls / step | peak RSS (MB) | step RSS growth (MB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['step_s']:.2f} | {s['step_cpu_s']:.2f} | {s['rows']:.0f} | {s['tokens_per_step']:.0f} | "
              f"{s['real_tokens_per_step']:.0f} | {s['images_per_step']:.0f} | {s['clips_per_step']:.0f} | "
              f"{s['vision_calls_per_step'] + s['audio_calls_per_step']:.0f} | {s['peak_rss_mb']:.0f} | "
              f"{s['step_rss_growth_mb']:.0f} |")  # fmt: skip
    per_round = {name: [r[key] / t[key] for r, t in zip(runs["pair_row"], runs["two_sequences"])]
                 for name, key in RATIO_KEYS.items()}  # fmt: skip
    ratios = {
        name: {"median": statistics.median(values), "min": min(values), "max": max(values), "per_round": values}
        for name, values in per_round.items()
    }
    print("pair_row / two_sequences: " + "; ".join(
        f"{name} x{r['median']:.2f} (rounds " + ", ".join(f"x{x:.2f}" for x in r["per_round"]) + ")"
        for name, r in ratios.items()))  # fmt: skip
    loads = [x for results in runs.values() for r in results for x in r["load_average"]]
    out = {
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "check": check,
        "load_average": {"end": os.getloadavg(), "during_runs_min": min(loads), "during_runs_max": max(loads)},
        "runs": runs,
        "median": summary,
        "ratios_pair_row_over_two_sequences": ratios,
        "rounds_done": len(runs["pair_row"]),
    }
    path = workdir.parent / "reward_step_smoke.json" if args.smoke else RESULTS / "reward_step.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}" + ("" if final else " (rounds so far)"), flush=True)


if __name__ == "__main__":
    main()
