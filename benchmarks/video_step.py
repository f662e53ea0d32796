"""Video SFT step: any2text's LlamaVisionAudio vs transformers' `LlavaNextVideoForConditionalGeneration`, same shapes.

    python benchmarks/video_step.py [--batch 2] [--frames 8] [--steps 3] [--repeats 3]
    python benchmarks/video_step.py --smoke                     # tiny LM, one round, seconds: checks the script runs
    python benchmarks/video_step.py --device cuda --lm_layers 16 --lm_hidden 2048    # GPU

Both models are built once from the same random parts and hold the same weights: a Llama (`--lm_layers` x
`--lm_hidden`, MLP `--lm_ffn` x, vocabulary 32,000 plus the placeholders) and a CLIP vision tower at 224 px, patch 14
(16 x 16 patches), the same 2-layer GELU projector, the feature layer -2, the CLS token dropped, 2 x 2 average pooling
before the projector (LLaVA-NeXT-Video's design, which any2text copies): 64 tokens a frame, `--frames` frames a video.
Ours is saved as the any2text checkpoint (`LlamaVisionAudioConfig`, no audio tower); the peer as
`LlavaNextVideoForConditionalGeneration` with its projector, tower and language model copied from ours, so the two
compute the same loss on the same batch (checked: the first step's losses must agree).

A step is what SFT stage 2 does: forward with `labels`, backward, `AdamW.step()`, `zero_grad()`; the vision tower is
frozen, projector and language model train. The batch (the same tensors for both): `--batch` videos of `--frames`
random frames, each row `[prompt text | one video's tokens | question | answer]` with the answer (`--answer_tokens`)
labelled. `pixel_values_videos` is `(batch, frames, 3, 224, 224)`, the layout both models take. Each variant runs in
its own process (`--repeats` interleaved rounds, medians of rounds); per variant: mean time of `--steps` steps after one
warm-up step, peak memory (RSS on CPU, and its growth over the RSS once the model is loaded; `max_memory_allocated` on a
GPU), the loss. Ratios any2text / peer per round and their median, and the speed ratio of the best steps (each timed
step's fastest time over the rounds, the least disturbed on a shared machine). Writes benchmarks/results/video_step.json
(`--smoke`: build/video_step_smoke.json; or `--output`).
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

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
RESULT = "RESULT "
VARIANTS = ("any2text", "llava_next_video")
VOCAB = 32000
IMAGE_SIZE, PATCH_SIZE, POOL_STRIDE = 224, 14, 2
# Placeholder ids past the text vocabulary, as the builders add them.
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, PAD_TOKEN_ID = VOCAB, VOCAB + 1, VOCAB + 2


def tokens_per_frame() -> int:
    return ((IMAGE_SIZE // PATCH_SIZE) // POOL_STRIDE) ** 2


# ---------------------------------------------------------------------------------------------------------------------
# Set-up (parent process)


def prepare(workdir: Path, args: argparse.Namespace) -> None:
    """Both checkpoints (same weights) and the batch, written once into `workdir`."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
    )

    from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForConditionalGeneration

    if (workdir / "done.json").is_file():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    text = LlamaConfig(
        vocab_size=VOCAB + 3, hidden_size=args.lm_hidden, intermediate_size=int(args.lm_ffn * args.lm_hidden),
        num_hidden_layers=args.lm_layers, num_attention_heads=args.lm_hidden // 64,
        num_key_value_heads=args.lm_hidden // 64, max_position_embeddings=8192, pad_token_id=PAD_TOKEN_ID,
    )  # fmt: skip
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=args.vision_hidden,
        intermediate_size=4 * args.vision_hidden, num_hidden_layers=args.vision_layers,
        num_attention_heads=args.vision_hidden // 64,
    )  # fmt: skip
    common = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu"}
    ours = LlamaVisionAudioForConditionalGeneration(
        LlamaVisionAudioConfig(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            audio_config=None,
            image_token_id=IMAGE_TOKEN_ID,
            video_token_id=VIDEO_TOKEN_ID,
            spatial_pool_mode="average",
            spatial_pool_stride=POOL_STRIDE,
            **common,
        )  # fmt: skip
    )
    ours.save_pretrained(workdir / "any2text")
    peer = LlavaNextVideoForConditionalGeneration(
        LlavaNextVideoConfig(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            image_token_index=IMAGE_TOKEN_ID,
            video_token_index=VIDEO_TOKEN_ID,
            spatial_pool_mode="average",
            spatial_pool_stride=POOL_STRIDE,
            tie_word_embeddings=False,
            **common,
        )  # fmt: skip
    )
    renamed = {key.replace("vision_projector.", "multi_modal_projector."): value
               for key, value in ours.state_dict().items()}  # fmt: skip
    missing, unexpected = peer.load_state_dict(renamed, strict=False)
    # `image_newline` only serves LLaVA-NeXT's any-resolution images, never a video.
    if [k for k in missing if k != "model.image_newline"] or unexpected:
        raise RuntimeError(f"Weights do not map one to one: missing {missing}, unexpected {unexpected}.")
    peer.save_pretrained(workdir / "llava_next_video")

    generator = torch.Generator().manual_seed(args.seed)
    video_tokens = args.frames * tokens_per_frame()
    rows, labels = [], []
    for _ in range(args.batch):
        prompt = torch.randint(0, VOCAB, (args.prompt_tokens,), generator=generator)
        question = torch.randint(0, VOCAB, (args.question_tokens,), generator=generator)
        answer = torch.randint(0, VOCAB, (args.answer_tokens,), generator=generator)
        video = torch.full((video_tokens,), VIDEO_TOKEN_ID)
        rows.append(torch.cat([prompt, video, question, answer]))
        labels.append(torch.cat([torch.full((len(rows[-1]) - len(answer),), -100), answer]))
    batch = {
        "input_ids": torch.stack(rows),
        "attention_mask": torch.ones(args.batch, len(rows[0]), dtype=torch.long),
        "labels": torch.stack(labels),
        "pixel_values_videos": torch.randn(args.batch, args.frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
    }
    torch.save(batch, workdir / "batch.pt")
    (workdir / "done.json").write_text(json.dumps({"sequence_length": len(rows[0]), "video_tokens": video_tokens}))


# ---------------------------------------------------------------------------------------------------------------------
# One variant (child process)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(variant: str, workdir: Path, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    import any2text  # registers the Auto classes

    assert any2text
    torch.set_num_threads(args.threads)
    rss_start = _rss_mb()
    dtype = getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(workdir / variant, dtype=dtype).to(args.device).train()
    model.model.vision_tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = {k: v.to(args.device) for k, v in torch.load(workdir / "batch.pt").items()}
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
    rss_loaded = _rss_mb()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.steps + 1):  # the first is a warm-up
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    result = {
        "step_s": statistics.mean(times[1:]),
        "step_s_per_step": times[1:],
        "first_loss": losses[0],
        "loss": statistics.mean(losses[1:]),
        "sequence_length": int(batch["input_ids"].shape[1]),
        "frames_per_step": int(batch["pixel_values_videos"].shape[0] * batch["pixel_values_videos"].shape[1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],
    }
    result["peak_rss_growth_mb"] = result["peak_rss_mb"] - rss_loaded
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["device_name"] = torch.cuda.get_device_name()
    return result


def run_worker(variant: str, flags: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, __file__, "--worker", variant, *flags], capture_output=True, text=True,
                          env=env, cwd=REPO)  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT)), None)
    if line is None:
        raise RuntimeError(f"{variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(line[len(RESULT) :])


# ---------------------------------------------------------------------------------------------------------------------
# Driver


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="videos (rows) a step")
    parser.add_argument("--frames", type=int, default=8, help="frames a video")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every variant once")
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--question_tokens", type=int, default=16)
    parser.add_argument("--answer_tokens", type=int, default=64, help="labelled tokens a row")
    parser.add_argument("--lm_layers", type=int, default=8)
    parser.add_argument("--lm_hidden", type=int, default=512, help="a multiple of 64")
    parser.add_argument("--lm_ffn", type=float, default=4.0)
    parser.add_argument("--vision_layers", type=int, default=2)
    parser.add_argument("--vision_hidden", type=int, default=128, help="a multiple of 64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="weights and frames of both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="1-layer LM of width 64, 1 timed step, 1 round")
    parser.add_argument("--workdir", default=None, help="default: build/bench_video_step_<shapes>")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/video_step.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = make_parser().parse_args()
    if args.smoke:
        args.lm_layers, args.lm_hidden, args.lm_ffn, args.vision_hidden = 1, 64, 2.0, 64
        args.steps, args.repeats, args.answer_tokens = 1, 1, 16
    shape = (f"L{args.lm_layers}_H{args.lm_hidden}_F{args.lm_ffn:g}_V{args.vision_layers}x{args.vision_hidden}_"
             f"B{args.batch}_T{args.frames}_A{args.answer_tokens}_s{args.seed}")  # fmt: skip
    workdir = Path(args.workdir or REPO / "build" / f"bench_video_step_{shape}")
    if args.worker:
        print(RESULT + json.dumps(run_variant(args.worker, workdir, args)), flush=True)
        return

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    prepare(workdir, args)
    flags = [a for a in sys.argv[1:] if a != "--smoke"] + ["--workdir", str(workdir)]
    flags += ["--lm_layers", str(args.lm_layers), "--lm_hidden", str(args.lm_hidden), "--steps", str(args.steps)]
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.repeats):
        for variant in VARIANTS:  # interleaved, so a drift in the machine's load hits both alike
            runs[variant].append(run_worker(variant, flags))
            print(f"round {round_}: {variant}: {runs[variant][-1]}", flush=True)
    report(runs, args, workdir)


def report(runs: dict[str, list[dict]], args: argparse.Namespace, workdir: Path) -> None:
    memory = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    ours, peer = runs["any2text"], runs["llava_next_video"]
    for a, b in zip(ours, peer):
        if abs(a["first_loss"] - b["first_loss"]) > 1e-3 * max(1.0, abs(b["first_loss"])):
            raise RuntimeError(
                f"The two models disagree on the same batch: loss {a['first_loss']} vs {b['first_loss']}."
            )
    per_round = {
        "speed": [b["step_s"] / a["step_s"] for a, b in zip(ours, peer)],
        "memory": [a[memory] / b[memory] for a, b in zip(ours, peer)],
    }
    if memory == "peak_rss_mb":
        per_round["rss_growth"] = [a["peak_rss_growth_mb"] / b["peak_rss_growth_mb"] for a, b in zip(ours, peer)]
    median = {variant: {key: statistics.median(r[key] for r in results)
                        for key, value in results[0].items() if isinstance(value, int | float)}
              for variant, results in runs.items()}  # fmt: skip
    ratios = {"per_round": per_round, **{name: statistics.median(values) for name, values in per_round.items()}}
    # Each timed step's fastest time over the rounds (the least disturbed by other jobs on a shared machine), averaged.
    for variant, results in runs.items():
        median[variant]["best_step_s"] = statistics.mean(map(min, zip(*(r["step_s_per_step"] for r in results))))
    ratios["speed_best_step"] = median["llava_next_video"]["best_step_s"] / median["any2text"]["best_step_s"]
    print("\n| variant | step (s) | first loss | sequence | frames / step | peak memory (MB) | memory growth (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, s in median.items():
        print(f"| {variant} | {s['step_s']:.3f} | {s['first_loss']:.4f} | {s['sequence_length']:.0f} | "
              f"{s['frames_per_step']:.0f} | {s[memory]:.0f} | {s['peak_rss_growth_mb']:.0f} |")  # fmt: skip
    print("any2text / LlavaNextVideo: " + "; ".join(f"{k} x{ratios[k]:.2f}" for k in (*per_round, "speed_best_step")))
    out = {
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "output")},
        "load_average": os.getloadavg(),
        "runs": runs,
        "median": median,
        "ratios_any2text_over_llava_next_video": ratios,
    }
    path = Path(args.output) if args.output else workdir.parent / "video_step_smoke.json" if args.smoke else None
    if path is None:
        suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
        path = RESULTS / f"video_step{suffix}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
