"""Stage-2 training throughput on long-tailed answers: any2text padded vs padding-free vs packed, and TRL + stock Llava.

    .venv/bin/pip install --no-deps --target build/trl trl     # the peer only; never a project dependency
    python benchmarks/stage2_throughput.py [--samples 64] [--epochs 2] [--repeats 3] [--batch 8]

The data: LLaVA-format rows, each one 224 px image (256 tokens after CLIP-14's CLS is dropped), a short prompt and an
answer of long-tailed length (log-normal, median ≈ 60 tokens, capped), like LLaVA-Instruct. The model: a random
Llama (vocabulary 32,000; by default 8 layers, hidden 512, MLP 4x hidden as in Llama-3.2-1B: `--lm_layers` /
`--lm_hidden` / `--lm_ffn`) and a 2-layer CLIP ViT (224 px, patch 14), both checkpoints written by our builders from
the same saved parts: `build_llama_vision_audio` (ours) and `build_llama_vision` (stock
`LlavaForConditionalGeneration`, the peer's). Stage 2: vision tower frozen, projector + language model train.

Variants (each run in its own process, interleaved over `--repeats` rounds; the figure is the median round):
- `padded`: `any2text.train` as shipped (batches of `--batch` samples, right-padded);
- `padding_free`: `--padding_free True` (the same batches as one row: same loss, see tests/test_packing.py);
- `packed`: `--packing True --max_length M` (best-fit-decreasing rows of about `--batch / --pack_rows` samples,
  `--pack_rows` rows a step; see `packing_plan`);
- `trl`: TRL's `SFTTrainer` (vision path; TRL refuses padding-free / packing for vision data) on the stock Llava.

Every variant runs the Trainer's loop with `dataloader_num_workers=0`, so a step's time includes its data
(collation, image processing). any2text's variants train `--epochs` epochs and are timed over the last one, so
every variant is timed on the very same samples (with few steps, which samples a step draws moves its time more
than the variants differ: the attention of a 1,300-token sample is 12x that of a 370-token one); the first epoch
warms up. TRL, the slowest by far, runs `--trl_steps` steps, timed after the first. Reported: samples/s and real
(non-pad) tokens/s over the timed steps, their mean training loss, and peak RSS. Writes
benchmarks/results/stage2_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
VARIANTS = ("padded", "padding_free", "packed", "trl")
WORDS = (
    "the a cat dog sky red blue green house tree car road sun light man woman child sits runs looks left right".split()
)


# ---------------------------------------------------------------------------------------------------------------------
# Setup (parent process)


def prepare(workdir: Path, samples: int, seed: int, lm_layers: int, lm_hidden: int, lm_ffn: float) -> dict:
    """Write the LM, CLIP, both checkpoints and the dataset into `workdir` (once)."""
    import torch
    from PIL import Image
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from any2text.builders.llama_vision import build_llama_vision
    from any2text.builders.llama_vision_audio import build_llama_vision_audio
    from any2text.builders.presets import tiny_tokenizer_path

    if (workdir / "done.json").is_file():
        return json.loads((workdir / "done.json").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    text = LlamaConfig(
        vocab_size=32000, hidden_size=lm_hidden, intermediate_size=int(lm_ffn * lm_hidden), num_hidden_layers=lm_layers,
        num_attention_heads=lm_hidden // 64, num_key_value_heads=lm_hidden // 64, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(text).save_pretrained(workdir / "lm")
    tokenizer.save_pretrained(workdir / "lm")
    vision = CLIPVisionConfig(
        image_size=224,
        patch_size=14,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    CLIPVisionModel(vision).save_pretrained(workdir / "clip")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        workdir / "clip"
    )
    build_llama_vision_audio(workdir / "lm", workdir / "clip", None, workdir / "ours", dtype="float32")
    build_llama_vision(workdir / "lm", workdir / "clip", workdir / "llava", dtype="float32")

    rng = np.random.default_rng(seed)
    rows = []
    (workdir / "images").mkdir(exist_ok=True)
    for i in range(samples):
        pixels = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(workdir / "images" / f"{i}.png")
        words = int(min(np.exp(rng.normal(3.6, 1.0)), 900))  # median ≈ 37 words ≈ 60 tokens, a long tail
        answer = " ".join(rng.choice(WORDS, size=max(words, 1)))
        rows.append(
            {
                "id": str(i),
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the picture."},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    (workdir / "data.json").write_text(json.dumps(rows))
    info = {"samples": samples}
    (workdir / "done.json").write_text(json.dumps(info))
    return info


def packing_plan(workdir: Path, batch: int, rows: int) -> tuple[int, int, list[int]]:
    """`max_length` and rows per step for `--packing`: `rows` rows holding about `batch` samples per step.

    A row's capacity is `batch / rows` mean samples (at least the longest sample), rounded up to a multiple of 64.
    Under `sdpa` a packed row attends per sample (`any2text_varlen_sdpa`), so a longer row costs no extra attention,
    and a step's rows are joined into one row with no padding.
    """
    from transformers import AutoProcessor

    from any2text.data.collator import MultimodalCollator
    from any2text.data.loading import MultimodalDataset, parse_dataset_specs
    from any2text.data.packing import bfd_bins

    collator = MultimodalCollator(AutoProcessor.from_pretrained(workdir / "ours"))
    dataset = MultimodalDataset(parse_dataset_specs(f"{workdir / 'data.json'},", templates="LLaVA,"))
    lengths = [collator.sample_length(dataset.messages(i, decode_media=False)) for i in range(len(dataset))]
    capacity = max(max(lengths), batch * sum(lengths) / len(lengths) / rows)
    max_length = -(-int(capacity) // 64) * 64
    bins = bfd_bins(lengths, max_length)
    rows = max(1, round(batch * len(bins) / len(lengths)))
    return max_length, rows, lengths


# ---------------------------------------------------------------------------------------------------------------------
# One variant (child process)


class StepClock:
    """A `TrainerCallback`: wall time between consecutive step ends (data included) and the loss of each step."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.last = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                clock.times.append(now - clock.last)
                clock.epochs.append(state.epoch)  # after this step: (epoch index) + (its share of the epoch)
                clock.last = now

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        self.times: list[float] = []
        self.epochs: list[float] = []
        self.losses: list[float] = []
        self.last = 0.0
        self.callback = _Callback()


class Counting:
    """Wraps a data collator: counts the samples and the real (non-pad) tokens of each batch."""

    def __init__(self, collator, pad_token_id: int):
        self.collator = collator
        self.pad_token_id = pad_token_id
        self.samples: list[int] = []
        self.tokens: list[int] = []
        self.positions: list[int] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.samples.append(sum(len(f["packed"]) if "packed" in f else 1 for f in features))
        if "attention_mask" in batch:
            self.tokens.append(int(batch["attention_mask"].sum()))
        else:
            self.tokens.append(int((batch["input_ids"] != self.pad_token_id).sum()))
        self.positions.append(batch["input_ids"].numel())
        return batch


def run_any2text(variant: str, workdir: Path, args: argparse.Namespace, max_length: int, rows: int) -> dict:
    from any2text.training.train import build_trainer, parse_args

    flags = [
        "--model_name_or_path", str(workdir / "ours"), "--output_dir", str(workdir / "out" / variant),
        "--train_datasets", f"{workdir / 'data.json'},", "--train_template", "LLaVA,",
        "--freeze_language_model", "False", "--per_device_train_batch_size", str(args.batch),
        "--num_train_epochs", str(args.epochs), "--learning_rate", "1e-4", "--logging_steps", "1", "--save_strategy", "no",
        "--use_cpu", "True", "--report_to", "none", "--disable_tqdm", "True", "--seed", "0",
        "--log_level", "error", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    if variant == "padding_free":
        flags += ["--padding_free", "True"]
    if variant == "packed":
        flags += ["--packing", "True", "--max_length", str(max_length), "--per_device_train_batch_size", str(rows)]
    trainer = build_trainer(*parse_args(flags))
    result = _train(trainer, trainer.processing_class.tokenizer.pad_token_id, timed_after_epoch=args.epochs - 1)
    return {**result, "attn": trainer.model.config.text_config._attn_implementation}


def run_trl(workdir: Path, args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO / "build" / "trl"))
    import datasets
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    rows = json.loads((workdir / "data.json").read_text())
    records = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}]},
                {"role": "assistant", "content": [{"type": "text", "text": row["conversations"][1]["value"]}]},
            ],
            "images": [Image.open(workdir / row["image"]).convert("RGB")],
        }
        for row in rows
    ]
    dataset = datasets.Dataset.from_list(records)
    model = AutoModelForImageTextToText.from_pretrained(workdir / "llava", dtype="float32")
    model.model.vision_tower.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(workdir / "llava")
    config = SFTConfig(
        output_dir=str(workdir / "out" / "trl"), per_device_train_batch_size=args.batch, max_steps=args.trl_steps,
        learning_rate=1e-4, logging_steps=1, save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True,
        seed=0, max_length=None, dataloader_num_workers=0, log_level="error",
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    return _train(trainer, processor.tokenizer.pad_token_id)


def _train(trainer, pad_token_id: int, timed_after_epoch: float | None = None) -> dict:
    """Train; time the steps of the epochs after `timed_after_epoch` (None: every step after the first)."""
    counting = Counting(trainer.data_collator, pad_token_id)
    trainer.data_collator = counting
    clock = StepClock()
    trainer.add_callback(clock.callback)
    trainer.train()
    # Batch i is step i (no workers, no gradient accumulation).
    if timed_after_epoch is None:
        timed = list(range(1, len(clock.times)))
    else:  # a step ends at epoch e + k/n; it is in a timed epoch when that is past `timed_after_epoch`
        timed = [i for i, epoch in enumerate(clock.epochs) if epoch > timed_after_epoch + 1e-6]
    times = [clock.times[i] for i in timed]
    samples, tokens = [counting.samples[i] for i in timed], [counting.tokens[i] for i in timed]
    positions = [counting.positions[i] for i in timed]
    return {
        "pad_share": 1 - sum(tokens) / sum(positions),
        "samples_per_s": sum(samples) / sum(times),
        "tokens_per_s": sum(tokens) / sum(times),
        "step_s": statistics.median(times),
        "samples_per_step": sum(samples) / len(samples),
        "loss": statistics.mean(clock.losses[i] for i in timed),
        "timed_steps": len(timed),
        "first_loss": clock.losses[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Driver (also used by generation_throughput.py, which shares the checkpoints)

RESULT = "RESULT "


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that pick the written checkpoints and data (`prepare`), and the hidden `--worker` flag."""
    parser.add_argument("--samples", type=int, default=64, help="rows of data written")
    parser.add_argument("--workdir", default=None, help="default: build/bench_stage2_<LM shape>_N<samples>")
    parser.add_argument("--lm_layers", type=int, default=8, help="decoder layers of the random Llama")
    parser.add_argument("--lm_hidden", type=int, default=512, help="its hidden size (a multiple of 64)")
    parser.add_argument("--lm_ffn", type=float, default=4.0, help="its MLP width over the hidden size")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def workdir_of(args: argparse.Namespace) -> Path:
    shape = f"L{args.lm_layers}_H{args.lm_hidden}_F{args.lm_ffn:g}"
    return Path(args.workdir or REPO / "build" / f"bench_stage2_{shape}_N{args.samples}")


def run_worker(script: str, variant: str, flags: list[str]) -> dict:
    """Run `script --worker variant *flags` in its own process (this checkout's `src` first on the path) and return
    the dict it printed after `RESULT`."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, script, "--worker", variant, *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT)), None)
    if line is None:
        raise RuntimeError(f"{variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(line[len(RESULT) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="any2text trains this many, timed over the last")
    parser.add_argument("--trl_steps", type=int, default=4, help="steps TRL runs, timed after the first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pack_rows", type=int, default=2, help="rows per packed step (see `packing_plan`)")
    parser.add_argument("--trl_repeats", type=int, default=1, help="rounds that run `trl` (the slowest variant)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    add_setup_arguments(parser)
    parser.add_argument("--max_length", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = workdir_of(args)

    if args.worker:
        if args.worker == "trl":
            result = run_trl(workdir, args)
        else:
            result = run_any2text(args.worker, workdir, args, args.max_length, args.rows)
        print(RESULT + json.dumps(result), flush=True)
        return

    prepare(workdir, args.samples, args.seed, args.lm_layers, args.lm_hidden, args.lm_ffn)
    max_length, rows, lengths = packing_plan(workdir, args.batch, args.pack_rows)
    padded_share = _padding_share(lengths, args.batch)
    print(f"{len(lengths)} samples, lengths median {int(np.median(lengths))} max {max(lengths)}; padded batches of "
          f"{args.batch} are {padded_share:.0%} padding; packed: max_length {max_length}, {rows} rows/step")  # fmt: skip
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for round_ in range(args.repeats):
        for variant in variants:  # interleaved: each round runs every variant once, so load drifts hit all alike
            if variant == "trl" and round_ >= args.trl_repeats:
                continue
            flags = [
                "--workdir", str(workdir), "--epochs", str(args.epochs), "--trl_steps", str(args.trl_steps),
                "--batch", str(args.batch), "--max_length", str(max_length), "--rows", str(rows),
            ]  # fmt: skip
            runs[variant].append(run_worker(__file__, variant, flags))
            print(f"round {round_}: {variant}: {runs[variant][-1]}", flush=True)

    summary = {}
    for variant, results in runs.items():
        summary[variant] = {key: statistics.median(r[key] for r in results) for key in results[0] if key != "attn"}
    base = summary.get("padded")
    print(
        "\n| variant | samples/s | tokens/s | samples/step | pad share | step (s) | loss | peak RSS (MB) | "
        "samples/s vs padded | tokens/s vs padded |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, s in summary.items():
        ratio = f"x{s['samples_per_s'] / base['samples_per_s']:.2f}" if base else "-"
        token_ratio = f"x{s['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        print(
            f"| {variant} | {s['samples_per_s']:.2f} | {s['tokens_per_s']:.0f} | {s['samples_per_step']:.1f} | "
            f"{s['pad_share']:.0%} | {s['step_s']:.2f} | {s['loss']:.3f} | {s['peak_rss_mb']:.0f} | {ratio} | "
            f"{token_ratio} |"
        )
    if base:  # per round, so a load burst on one round shows
        for variant in runs:
            per_round = [r["samples_per_s"] / b["samples_per_s"] for r, b in zip(runs[variant], runs["padded"])]
            print(f"{variant} vs padded per round: " + ", ".join(f"x{x:.2f}" for x in per_round))
    RESULTS.mkdir(exist_ok=True)
    out = {"args": {k: v for k, v in vars(args).items() if k not in ("worker",)}, "max_length": max_length,
           "rows_per_step": rows, "padding_share": padded_share, "runs": runs, "median": summary}  # fmt: skip
    (RESULTS / "stage2_throughput.json").write_text(json.dumps(out, indent=1))


def _padding_share(lengths: list[int], batch: int) -> float:
    """Pad share of padded batches of `batch` consecutive samples (what the sequential order would give)."""
    padded = sum(max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return 1 - sum(lengths) / padded


if __name__ == "__main__":
    main()
