"""Batched generation: any2text vs stock Llava, new tokens/s at the same weights, prompts and batch.

    python benchmarks/generation_throughput.py [--batch 8] [--prompts 32] [--new_tokens 32] [--repeats 3]
    python benchmarks/generation_throughput.py --device cuda --dtype bfloat16 --lm_layers 16 --lm_hidden 2048  # GPU

Both checkpoints come from the same saved parts (`stage2_throughput.prepare`: a random Llama, a 2-layer CLIP ViT at
224 px, the LLaVA-format rows with one image each): `build_llama_vision_audio` (ours) and `build_llama_vision` (stock
`LlavaForConditionalGeneration`). Each variant loads through `any2text.inference.load_inference_model` (the Auto
classes) and generates through `generate_batch` (the path of `any2text eval` / `chat`): left-padded batches,
greedy, KV cache, exactly `--new_tokens` new tokens per prompt (`min_new_tokens`, so EOS cannot end one variant
early). Each variant runs in its own process, interleaved over `--repeats` rounds; after a warm-up batch it times
all prompts with one new token (prefill: image encoding + prompt) and with `--new_tokens`, each the fastest of
`--trials` passes; the figure is the median round.
Reported: new tokens/s end to end, decode tokens/s (the tokens after the first over the extra time), prefill time,
and the ratios any2text / Llava. Writes benchmarks/results/generation_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# The benchmark's folder is first on `sys.path` when it runs as a script.
from stage2_throughput import RESULT, add_setup_arguments, prepare, run_worker, workdir_of

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"any2text": "ours", "llava": "llava"}


def conversations(workdir: Path, count: int) -> list[list[dict]]:
    rows = json.loads((workdir / "data.json").read_text())[:count]
    return [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(workdir / row["image"])},
                    {"type": "text", "text": "Describe the picture."},
                ],
            }
        ]
        for row in rows
    ]


def run_variant(variant: str, workdir: Path, args: argparse.Namespace) -> dict:
    import torch

    from any2text.inference import decode_media, generate_batch, load_inference_model

    torch.manual_seed(0)
    model, processor = load_inference_model(str(workdir / VARIANTS[variant]), dtype=args.dtype, device=args.device)
    prompts = [decode_media(c, processor) for c in conversations(workdir, args.prompts)]  # media read once, untimed

    def timed(new_tokens: int, items: list) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            generate_batch(
                model, processor, items, max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=args.batch
            )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(args.new_tokens, prompts[: args.batch])  # warm-up
    # The fastest of `--trials` passes: the one least disturbed by whatever else the machine ran.
    prefill = min(timed(1, prompts) for _ in range(args.trials))
    full = min(timed(args.new_tokens, prompts) for _ in range(args.trials))
    return {
        "tokens_per_s": len(prompts) * args.new_tokens / full,
        "decode_tokens_per_s": len(prompts) * (args.new_tokens - 1) / max(full - prefill, 1e-9),
        "prefill_s": prefill,
        "total_s": full,
        "attn": model.config.text_config._attn_implementation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2, help="timed passes per process; the fastest counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    add_setup_arguments(parser)  # stage2_throughput.py's: the same checkpoints and data, written once
    args = parser.parse_args()
    if args.prompts > args.samples:
        parser.error(f"--prompts {args.prompts} needs at least as many --samples (rows of data), got {args.samples}.")
    workdir = workdir_of(args)

    if args.worker:
        print(RESULT + json.dumps(run_variant(args.worker, workdir, args)), flush=True)
        return

    prepare(workdir, args.samples, 0, args.lm_layers, args.lm_hidden, args.lm_ffn)
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.repeats):
        for variant in VARIANTS:  # interleaved, so load drifts hit both alike
            flags = ["--workdir", str(workdir)]
            for name in ("samples", "prompts", "batch", "new_tokens", "device", "dtype", "trials"):
                flags += [f"--{name}", str(getattr(args, name))]
            runs[variant].append(run_worker(__file__, variant, flags))
            print(f"round {round_}: {variant}: {runs[variant][-1]}", flush=True)

    keys = ("tokens_per_s", "decode_tokens_per_s", "prefill_s", "total_s")
    summary = {v: {k: statistics.median(r[k] for r in results) for k in keys} for v, results in runs.items()}
    ours, base = summary["any2text"], summary["llava"]
    print(
        f"\n{args.prompts} prompts, batch {args.batch}, {args.new_tokens} new tokens each, {args.device} {args.dtype}"
    )
    print("| variant | new tokens/s | decode tokens/s | prefill (s) | total (s) |\n|---|---:|---:|---:|---:|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['tokens_per_s']:.1f} | {s['decode_tokens_per_s']:.1f} | {s['prefill_s']:.2f} | "
              f"{s['total_s']:.2f} |")  # fmt: skip
    ratios = {k: ours[k] / base[k] for k in ("tokens_per_s", "decode_tokens_per_s")}
    print(f"any2text / Llava: new tokens/s x{ratios['tokens_per_s']:.2f}, decode x{ratios['decode_tokens_per_s']:.2f}")
    per_round = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["any2text"], runs["llava"], strict=True)]
    print("per round: " + ", ".join(f"x{x:.2f}" for x in per_round))
    RESULTS.mkdir(exist_ok=True)
    out = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "runs": runs, "median": summary,
           "ratios": ratios}  # fmt: skip
    name = "generation_throughput.json" if args.device == "cpu" else f"generation_throughput_{args.device}.json"
    (RESULTS / name.replace(":", "")).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
