"""GRPO training step: any2text's `GRPOTrainer` vs TRL's `GRPOTrainer` on the stock Llava, same prompts, G, lengths, steps.

    .venv/bin/pip install --no-deps --target build/trl trl==1.16.0    # the peer only; never a project dependency
    python benchmarks/grpo_step.py [--prompts 2] [--generations 4] [--completion_length 32] [--steps 3] [--repeats 2]
    python benchmarks/grpo_step.py --smoke                              # tiny LM, one round, seconds

Checkpoints and images come from `stage2_throughput.prepare` (its set-up flags: `--lm_layers` / `--lm_hidden` /
`--lm_ffn` / `--samples` / `--workdir`): a random Llama (vocabulary 32,000) and a 2-layer CLIP ViT at 224 px (256
image tokens), built from the same saved parts into our LlamaVisionAudio and the stock `LlavaForConditionalGeneration`.
The prompts: one of those images and "Describe the picture." (TRL-Prompt rows for any2text, TRL's conversational
prompt-only rows for TRL).

Both trainers: `--prompts` prompts a step with `--generations` completions each (`per_device_train_batch_size` =
prompts x G, TRL's meaning in both), `max_completion_length` `--completion_length` (a random model almost never samples
its end-of-sequence token, so every completion has that length in both: `completions/mean_length` is reported),
temperature 1, `beta` 0 and `loss_type` dapo (TRL's defaults: no reference model), one reward function (the
completion's length in characters, the same function), the projector and language model trained (vision tower frozen),
the same learning rate, sequential prompts, `dataloader_num_workers 0`, `--precision` (bf16 mixed precision by
default, as TRL's configs), `--threads` torch threads, `--steps` timed steps after one warm-up step.

Reported per variant: mean step time (wall, and process CPU time), each timed step's fastest time over the rounds,
the time spent inside `generate`, images through the vision tower a step (TRL repeats each prompt G times, so it
prefills and re-encodes each image G times; any2text prefills each prompt once and repeats its KV cache), peak RSS and
its growth once torch is imported, and any2text / TRL ratios per round and their median. Writes
benchmarks/results/grpo_step.json (`--smoke`: build/grpo_step_smoke.json; or `--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# The benchmark's folder is first on `sys.path` when it runs as a script.
from dpo_step import CpuClock, _rss_mb, import_trl, step_result
from stage2_throughput import RESULT, StepClock, add_setup_arguments, prepare, run_worker, workdir_of

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("any2text", "trl")
QUESTION = "Describe the picture."


def completion_length_reward(prompts, completions, **kwargs) -> list[float]:
    """The reward both trainers call: the completion's length in characters (cheap; the step is what is timed)."""
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def write_prompts(workdir: Path, count: int) -> Path:
    rows = json.loads((workdir / "data.json").read_text())
    if count > len(rows):
        raise ValueError(f"{count} prompts need as many images; `prepare` wrote {len(rows)}: raise `--samples`.")
    prompts = [{"id": str(i), "prompt": f"<image>{QUESTION}", "images": [rows[i]["image"]]} for i in range(count)]
    path = workdir / f"grpo_prompts_{count}.json"
    path.write_text(json.dumps(prompts))
    return path


class Encoded:
    """Counts images through the vision tower and times `generate` on a model (forward hook, wrapped method)."""

    def __init__(self, model):
        self.images, self.generate_s = [], []
        tower = model.model.vision_tower
        tower.register_forward_hook(lambda module, args, output: self.images.append(len(args[0])))
        generate = model.generate

        def timed_generate(*args, **kwargs):
            start = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                self.generate_s.append(time.perf_counter() - start)

        model.generate = timed_generate


def common_flags(args: argparse.Namespace) -> dict:
    return {
        "per_device_train_batch_size": args.prompts * args.generations, "num_generations": args.generations,
        "max_completion_length": args.completion_length, "max_steps": args.steps + 1, "learning_rate": 1e-6,
        "beta": 0.0, "loss_type": "dapo", "temperature": 1.0, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "disable_tqdm": True, "seed": 0, "dataloader_num_workers": 0, "log_level": "error",
        "use_cpu": args.device == "cpu", "bf16": args.precision == "bf16",
    }  # fmt: skip


def run_any2text(workdir: Path, prompts: Path, args: argparse.Namespace):
    from any2text.training.grpo import build_grpo_trainer, parse_args

    flags = ["--model_name_or_path", str(workdir / "ours"), "--output_dir", str(workdir / "out" / "grpo_any2text"),
             "--train_datasets", str(prompts), "--train_template", "TRL-Prompt", "--dtype", args.dtype,
             "--freeze_language_model", "False", "--reward_funcs", "grpo_step:completion_length_reward"]  # fmt: skip
    for key, value in common_flags(args).items():
        flags += [f"--{key}", str(value)]
    return build_grpo_trainer(*parse_args(flags))


def run_trl(workdir: Path, prompts: Path, args: argparse.Namespace):
    import_trl()
    import datasets
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    rows = json.loads(prompts.read_text())
    records = [{"prompt": [{"role": "user", "content": QUESTION}],  # TRL puts the image before the text
                "images": [Image.open(workdir / row["images"][0]).convert("RGB")]} for row in rows]  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(workdir / "llava", dtype=args.dtype)
    model.model.vision_tower.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(workdir / "llava", padding_side="left")
    config = GRPOConfig(output_dir=str(workdir / "out" / "grpo_trl"), shuffle_dataset=False, **common_flags(args))
    return GRPOTrainer(model=model, reward_funcs=completion_length_reward, args=config,
                       train_dataset=datasets.Dataset.from_list(records), processing_class=processor)  # fmt: skip


def run_variant(variant: str, workdir: Path, prompts: Path, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    rss_start = _rss_mb()
    trainer = run_trl(workdir, prompts, args) if variant == "trl" else run_any2text(workdir, prompts, args)
    rss_loaded = _rss_mb()
    encoded = Encoded(trainer.model)
    clock, cpu = StepClock(), CpuClock()
    trainer.add_callback(clock.callback)
    trainer.add_callback(cpu.callback)
    images_at_step, generate_at_step = [], []

    from transformers import TrainerCallback

    class _Marks(TrainerCallback):
        def on_step_end(self, *_, **__):
            images_at_step.append(sum(encoded.images))
            generate_at_step.append(sum(encoded.generate_s))

    trainer.add_callback(_Marks())
    load_before = os.getloadavg()[0]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = list(range(1, len(clock.times)))
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    result = {
        **step_result(trainer, clock, cpu, (rss_start, rss_loaded), load_before),
        "generate_s": statistics.mean(generate_at_step[i] - generate_at_step[i - 1] for i in timed),
        "images_encoded_per_step": statistics.mean(images_at_step[i] - images_at_step[i - 1] for i in timed),
        "completion_mean_length": statistics.mean(lengths[i] for i in timed),
    }
    result["loss_step_s"] = result["step_s"] - result["generate_s"]  # everything else: prefill excluded, loss, update
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2, help="prompts a step (both trainers)")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--completion_length", type=int, default=32, help="`max_completion_length` of both")
    parser.add_argument("--steps", type=int, default=6, help="timed steps, after one warm-up step")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs every variant once")
    parser.add_argument("--variants", default="any2text,trl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny LM, 1 timed step, 1 round: seconds")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/grpo_step.json")
    parser.add_argument("--prompts_file", default=None, help=argparse.SUPPRESS)
    add_setup_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.lm_layers, args.lm_hidden, args.lm_ffn, args.samples = 1, 64, 2.0, 8
        args.steps, args.repeats, args.completion_length = 1, 1, 8
    workdir = workdir_of(args)
    if args.worker:
        result = run_variant(args.worker, workdir, Path(args.prompts_file), args)
        print(RESULT + json.dumps(result), flush=True)
        return
    variants = args.variants.split(",")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    prepare(workdir, args.samples, args.seed, args.lm_layers, args.lm_hidden, args.lm_ffn)
    prompts = write_prompts(workdir, args.prompts * (args.steps + 1))
    flags = ["--workdir", str(workdir), "--prompts_file", str(prompts), "--prompts", str(args.prompts),
             "--generations", str(args.generations), "--completion_length", str(args.completion_length),
             "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
             "--precision", args.precision]  # fmt: skip
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for round_ in range(args.repeats):
        for variant in variants:
            start = time.perf_counter()
            runs[variant].append(run_worker(__file__, variant, flags))
            print(f"round {round_}: {variant} ({time.perf_counter() - start:.0f} s): {runs[variant][-1]}", flush=True)
        report(runs, variants, args, prompts, workdir)


def report(runs: dict, variants: list[str], args: argparse.Namespace, prompts: Path, workdir: Path) -> None:
    """Medians over the rounds so far and ratios to TRL; written after every round."""
    memory = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    summary = {}
    for variant, results in runs.items():
        summary[variant] = {key: statistics.median(r[key] for r in results)
                            for key, value in results[0].items() if isinstance(value, int | float)}  # fmt: skip
        summary[variant]["best_step_s"] = statistics.mean(map(min, zip(*(r["step_s_per_step"] for r in results))))
    print("\n| variant | step (s) | median step (s) | best step (s) | step CPU (s) | in generate (s) | rest (s) | images / step | "
          f"completion length | {memory} | RSS growth (MB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['step_s']:.2f} | {s['step_median_s']:.2f} | {s['best_step_s']:.2f} | {s['step_cpu_s']:.2f} | {s['generate_s']:.2f} "
              f"| {s['loss_step_s']:.2f} | {s['images_encoded_per_step']:.0f} | {s['completion_mean_length']:.1f} | "
              f"{s[memory]:.0f} | {s['peak_rss_growth_mb']:.0f} |")  # fmt: skip
    ratios = {}
    if "trl" in runs and "any2text" in runs:
        ours, trl = runs["any2text"], runs["trl"]
        per_round = {
            "speed": [t["step_s"] / r["step_s"] for r, t in zip(ours, trl)],
            "speed_median_step": [t["step_median_s"] / r["step_median_s"] for r, t in zip(ours, trl)],
            "speed_cpu_time": [t["step_cpu_s"] / r["step_cpu_s"] for r, t in zip(ours, trl)],
            "speed_generate": [t["generate_s"] / r["generate_s"] for r, t in zip(ours, trl)],
            "speed_rest": [t["loss_step_s"] / r["loss_step_s"] for r, t in zip(ours, trl)],
            "memory": [r[memory] / t[memory] for r, t in zip(ours, trl)],
            "rss_growth": [r["peak_rss_growth_mb"] / t["peak_rss_growth_mb"] for r, t in zip(ours, trl)],
        }
        ratios = {"per_round": per_round, **{k: statistics.median(v) for k, v in per_round.items()}}
        ratios["speed_best_step"] = summary["trl"]["best_step_s"] / summary["any2text"]["best_step_s"]
        print("any2text / trl: " + "; ".join(f"{k} x{ratios[k]:.2f}" for k in per_round)
              + f"; speed, best steps x{ratios['speed_best_step']:.2f}")  # fmt: skip
    out = {
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "prompts_file", "output")},
        "prompts_file": prompts.name,
        "load_average": os.getloadavg(),
        "runs": runs,
        "median": summary,
        "ratios_vs_trl": ratios,
    }
    path = Path(args.output) if args.output else (
        workdir.parent / "grpo_step_smoke.json" if args.smoke else RESULTS / "grpo_step.json"
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
