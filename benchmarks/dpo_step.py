"""DPO training step: any2text's `DPOTrainer` vs TRL's `DPOTrainer` on the stock Llava, same pairs, batch and steps.

    .venv/bin/pip install --no-deps --target build/trl trl     # the peer only; never a project dependency
    python benchmarks/dpo_step.py [--batch 2] [--steps 3] [--repeats 3] [--max_length 1024]
    python benchmarks/dpo_step.py --smoke                      # tiny LM, one round, seconds: checks the script runs
    python benchmarks/dpo_step.py --device cuda --dtype bfloat16 --lm_layers 16 --lm_hidden 2048   # GPU

Checkpoints and images come from `stage2_throughput.prepare` (its set-up flags: `--lm_layers` / `--lm_hidden` /
`--lm_ffn` / `--samples` / `--workdir`): a random Llama (vocabulary 32,000) and a 2-layer CLIP ViT at 224 px (256
image tokens), built from the same saved parts into our LlamaVisionAudio (`build_llama_vision_audio`) and the stock
`LlavaForConditionalGeneration` (`build_llama_vision`). The pairs (written next to them, `pairs_*.json`): one of those
images, the question "Describe the picture.", and two answers of long-tailed length (log-normal, median ≈ 60
tokens, at most `--max_answer_words` words, so no pair reaches `--max_length` and neither side truncates).

Variants, each run in its own process, interleaved over `--repeats` rounds (the figures are medians of rounds):
- `any2text`: `any2text.training.dpo.build_dpo_trainer` as `python -m any2text.dpo` runs it, full fine-tune of the
  projector and language model (vision tower frozen), the reference loaded from the same checkpoint and run every
  step (its default), padded pair rows (one row per pair, `[prompt | chosen | rejected]`, each image encoded once);
- `any2text_padding_free` (optional, `--variants`): the same with `--padding_free True`;
- `trl`: TRL's `DPOTrainer` (installed under `build/trl`) on the stock Llava, the same freezing, the reference
  loaded by TRL from the same checkpoint and run every step (its default). TRL 1.16 refuses
  `precompute_ref_log_probs=True` for vision datasets and has `padding_free` disabled since its DPO refactor (it
  warns and falls back to padding), so it runs with both `False`, as documented.

Both: sigmoid loss, beta 0.1, the same learning rate, `--max_length`, `--batch` pairs a step, sequential sampling
(the very same pairs in every step of both), `dataloader_num_workers 0` (a step's time includes its collation and
image processing), `--steps` timed steps after one warm-up step, `--dtype` weights, `--precision` (bf16 mixed
precision by default: TRL's configs default to `bf16=True`, so it is set for both), `--threads` torch threads.
Reported per variant: mean step time over the timed steps, wall and process CPU time (all threads: on a machine shared
with other jobs the wall time grows with their load, the CPU time less so, though it counts threads spin-waiting for a
descheduled one), each timed step's fastest time over the rounds, sequence positions and images a step, peak memory
(RSS on CPU, and its growth over the worker's RSS once torch is imported; `torch.cuda.max_memory_allocated` on a GPU),
the 1-minute load average around each run; any2text / TRL ratios per round and their median. Writes
benchmarks/results/dpo_step.json (`--smoke`: build/dpo_step_smoke.json; or `--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# The benchmark's folder is first on `sys.path` when it runs as a script.
from stage2_throughput import REPO, RESULT, StepClock, add_setup_arguments, prepare, run_worker, workdir_of

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("any2text", "trl", "any2text_padding_free")
QUESTION = "Describe the picture."
TRL_PATH = REPO / "build" / "trl"


# ---------------------------------------------------------------------------------------------------------------------
# Data (parent process)


def write_pairs(workdir: Path, count: int, max_answer_words: int, seed: int) -> Path:
    """`count` RLAIF-V rows over the images `prepare` wrote: each row's answer chosen, another row's rejected."""
    rows = json.loads((workdir / "data.json").read_text())
    if count > len(rows):
        raise ValueError(f"{count} pairs need as many images; `prepare` wrote {len(rows)}: raise `--samples`.")
    answers = [row["conversations"][1]["value"].split()[:max_answer_words] for row in rows]
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        other = int(rng.integers(1, len(rows)))  # any other row's answer
        pairs.append({"id": str(i), "image": rows[i]["image"], "question": QUESTION,
                      "chosen": " ".join(answers[i]), "rejected": " ".join(answers[(i + other) % len(rows)])})  # fmt: skip
    path = workdir / f"pairs_{count}_w{max_answer_words}_s{seed}.json"
    path.write_text(json.dumps(pairs))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# One variant (child process)


class Counting:
    """Wraps a data collator: sequence positions (rows x length, padding included) and images of each batch."""

    def __init__(self, collator):
        self.collator = collator
        self.positions: list[int] = []
        self.images: list[int] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.positions.append(batch["input_ids"].numel())
        pixels = batch.get("pixel_values")
        self.images.append(0 if pixels is None else int(pixels.shape[0]))
        return batch


class CpuClock:
    """A `TrainerCallback`: process CPU time (all threads) between consecutive step ends, data included.

    On a machine shared with other jobs a step's wall time grows with their load; its CPU time much less so.
    """

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.last = time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.process_time()
                clock.times.append(now - clock.last)
                clock.last = now

        self.times: list[float] = []
        self.last = 0.0
        self.callback = _Callback()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def import_trl() -> None:
    """Put the benchmark-only TRL install (`build/trl`) first on the path, or exit saying how to install it."""
    if not (TRL_PATH / "trl").is_dir():
        raise SystemExit(
            f"TRL is not installed for the benchmark: run `pip install --no-deps --target {TRL_PATH} trl`."
        )
    sys.path.insert(0, str(TRL_PATH))


def step_result(trainer, clock: StepClock, cpu: CpuClock, rss: tuple[float, float], load_before: float) -> dict:
    """The figures every step benchmark reports, over the steps after the first (warm-up): wall and CPU time per step,
    peak RSS (and CUDA memory), threads and the machine's load before / after."""
    import torch

    timed = list(range(1, len(clock.times)))
    result = {
        "step_s": statistics.mean(clock.times[i] for i in timed),
        "step_s_per_step": [clock.times[i] for i in timed],
        "step_median_s": statistics.median(clock.times[i] for i in timed),
        "step_cpu_s": statistics.mean(cpu.times[i] for i in timed),
        "timed_steps": len(timed),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_start_mb": rss[0],
        "rss_loaded_mb": rss[1],
        "threads": torch.get_num_threads(),
        "bf16_autocast": bool(trainer.args.bf16),
        "load_average": [load_before, os.getloadavg()[0]],  # 1-minute load of the machine before / after training
    }
    result["peak_rss_growth_mb"] = result["peak_rss_mb"] - rss[0]
    if trainer.args.device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["device_name"] = torch.cuda.get_device_name()
    return result


def run_any2text(padding_free: bool, workdir: Path, pairs: Path, args: argparse.Namespace):
    from any2text.training.dpo import build_dpo_trainer, parse_args

    flags = [
        "--model_name_or_path", str(workdir / "ours"), "--output_dir", str(workdir / "out" / "dpo_any2text"),
        "--train_datasets", f"{pairs},", "--train_template", "RLAIF-V,", "--dtype", args.dtype,
        "--freeze_language_model", "False", "--per_device_train_batch_size", str(args.batch),
        "--max_steps", str(args.steps + 1), "--train_sampling_strategy", "sequential", "--max_length", str(args.max_length),
        "--beta", "0.1", "--loss_type", "sigmoid", "--learning_rate", "1e-6", "--logging_steps", "1",
        "--save_strategy", "no", "--use_cpu", str(args.device == "cpu"), "--report_to", "none", "--disable_tqdm", "True",
        "--seed", "0", "--log_level", "error", "--dataloader_num_workers", "0", "--padding_free", str(padding_free),
        "--bf16", str(args.precision == "bf16"),
    ]  # fmt: skip
    return build_dpo_trainer(*parse_args(flags))


def run_trl(workdir: Path, pairs: Path, args: argparse.Namespace):
    import_trl()
    import datasets
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    rows = json.loads(pairs.read_text())
    records = [
        {
            "images": [Image.open(workdir / row["image"]).convert("RGB")],
            "prompt": [{"role": "user", "content": row["question"]}],  # TRL puts the image before the text
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in rows
    ]
    dataset = datasets.Dataset.from_list(records)
    model = AutoModelForImageTextToText.from_pretrained(workdir / "llava", dtype=args.dtype)
    model.model.vision_tower.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(workdir / "llava")
    config = DPOConfig(
        output_dir=str(workdir / "out" / "dpo_trl"), per_device_train_batch_size=args.batch, max_steps=args.steps + 1,
        train_sampling_strategy="sequential", max_length=args.max_length, beta=0.1, loss_type=["sigmoid"],
        learning_rate=1e-6, logging_steps=1, save_strategy="no", use_cpu=args.device == "cpu", report_to="none",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, log_level="error",
        padding_free=False, precompute_ref_log_probs=False,  # TRL 1.16, vision data: the only supported settings
        bf16=args.precision == "bf16",  # TRL's configs default to bf16=True; set it explicitly, as for any2text
    )  # fmt: skip
    return DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)


def run_variant(variant: str, workdir: Path, pairs: Path, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    rss_start = _rss_mb()
    if variant == "trl":
        trainer = run_trl(workdir, pairs, args)
    else:
        trainer = run_any2text(variant == "any2text_padding_free", workdir, pairs, args)
    rss_loaded = _rss_mb()  # imports, policy, reference, data
    counting = Counting(trainer.data_collator)
    trainer.data_collator = counting
    clock, cpu = StepClock(), CpuClock()
    trainer.add_callback(clock.callback)
    trainer.add_callback(cpu.callback)
    load_before = os.getloadavg()[0]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = list(range(1, len(clock.times)))  # every step after the first (warm-up)
    return {
        **step_result(trainer, clock, cpu, (rss_start, rss_loaded), load_before),
        "positions_per_step": statistics.mean(counting.positions[i] for i in timed),
        "images_per_step": statistics.mean(counting.images[i] for i in timed),
        "loss": statistics.mean(clock.losses[i] for i in timed),
        "dtype": str(next(trainer.model.parameters()).dtype),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="pairs a step (both trainers)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every variant once")
    parser.add_argument("--max_length", type=int, default=1024, help="both trainers' `max_length`")
    parser.add_argument("--max_answer_words", type=int, default=200, help="answers are cut to this many words")
    parser.add_argument("--variants", default="any2text,trl", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu", help="`cpu` or `cuda`")
    parser.add_argument("--dtype", default="float32", help="weights of policy and reference, both trainers")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                        help="both trainers: bf16 mixed precision (`--bf16 True`, TRL's default) or fp32")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny LM, batch 2, 1 timed step, 1 round: seconds")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/dpo_step.json")
    parser.add_argument("--pairs_file", default=None, help=argparse.SUPPRESS)
    add_setup_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.lm_layers, args.lm_hidden, args.lm_ffn, args.samples = 1, 64, 2.0, 8
        args.batch, args.steps, args.repeats, args.max_answer_words = 2, 1, 1, 20
    workdir = workdir_of(args)

    if args.worker:
        result = run_variant(args.worker, workdir, Path(args.pairs_file), args)
        print(RESULT + json.dumps(result), flush=True)
        return

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}; choose from {list(VARIANTS)}.")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the workers inherit it; they also call set_num_threads
    prepare(workdir, args.samples, args.seed, args.lm_layers, args.lm_hidden, args.lm_ffn)
    pairs = write_pairs(workdir, args.batch * (args.steps + 1), args.max_answer_words, args.seed)
    flags = [
        "--workdir", str(workdir), "--pairs_file", str(pairs), "--batch", str(args.batch), "--steps", str(args.steps),
        "--max_length", str(args.max_length), "--device", args.device, "--dtype", args.dtype,
        "--threads", str(args.threads), "--precision", args.precision,
    ]  # fmt: skip
    print(f"{args.batch * (args.steps + 1)} pairs in {pairs}; {args.repeats} rounds of {variants}", flush=True)
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for round_ in range(args.repeats):
        for variant in variants:  # interleaved: each round runs every variant once, so load drifts hit all alike
            start = time.perf_counter()
            runs[variant].append(run_worker(__file__, variant, flags))
            print(f"round {round_}: {variant} ({time.perf_counter() - start:.0f} s): {runs[variant][-1]}", flush=True)

        report(runs, variants, args, pairs, workdir, final=round_ == args.repeats - 1)


def report(
    runs: dict[str, list[dict]], variants: list[str], args: argparse.Namespace, pairs: Path, workdir: Path, final: bool
) -> None:
    """Medians over the rounds so far, ratios to TRL; written after every round (a long run can be cut short)."""
    memory = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    summary = {}
    for variant, results in runs.items():
        summary[variant] = {key: statistics.median(r[key] for r in results)
                            for key, value in results[0].items() if isinstance(value, int | float)}  # fmt: skip
        # Each timed step's fastest time over the rounds (the least disturbed by the other jobs), averaged.
        summary[variant]["best_step_s"] = statistics.mean(map(min, zip(*(r["step_s_per_step"] for r in results))))
    print(
        "\n| variant | step (s) | best step (s) | step CPU (s) | positions / step | images / step | "
        f"{memory} | peak RSS growth (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['step_s']:.2f} | {s['best_step_s']:.2f} | {s['step_cpu_s']:.2f} | {s['positions_per_step']:.0f} | "
              f"{s['images_per_step']:.0f} | {s[memory]:.0f} | {s['peak_rss_growth_mb']:.0f} |")  # fmt: skip
    ratios = {}
    if "trl" in runs:
        for variant in (v for v in variants if v != "trl"):
            per_round = {
                "speed": [t["step_s"] / r["step_s"] for r, t in zip(runs[variant], runs["trl"])],
                "speed_cpu_time": [t["step_cpu_s"] / r["step_cpu_s"] for r, t in zip(runs[variant], runs["trl"])],
                "memory": [r[memory] / t[memory] for r, t in zip(runs[variant], runs["trl"])],
                "rss_growth": [r["peak_rss_growth_mb"] / t["peak_rss_growth_mb"] for r, t in zip(runs[variant], runs["trl"])],
            }  # fmt: skip
            ratios[variant] = {"per_round": per_round, **{k: statistics.median(v) for k, v in per_round.items()}}
            ratios[variant]["speed_best_step"] = summary["trl"]["best_step_s"] / summary[variant]["best_step_s"]
            print(f"{variant} / trl: " + "; ".join(
                f"{name} x{ratios[variant][name]:.2f} (rounds " + ", ".join(f"x{x:.2f}" for x in values) + ")"
                for name, values in per_round.items())
                + f"; speed, best steps x{ratios[variant]['speed_best_step']:.2f}")  # fmt: skip
    out = {
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "pairs_file", "output")},
        "pairs_file": pairs.name,
        "load_average": os.getloadavg(),
        "runs": runs,
        "median": summary,
        "ratios_vs_trl": ratios,
    }
    path = (
        Path(args.output)
        if args.output
        else workdir.parent / "dpo_step_smoke.json"
        if args.smoke
        else RESULTS / "dpo_step.json"
    )
    path.parent.mkdir(exist_ok=True)
    out["rounds_done"] = len(next(iter(runs.values())))
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}" + ("" if final else " (rounds so far)"), flush=True)


if __name__ == "__main__":
    main()
