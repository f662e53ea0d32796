"""Training-step memory and time: LlamaVisionAudio (logits only at labelled positions) vs stock Llava (all logits).

    .venv/bin/python benchmarks/sparse_logits.py [--vocab 32000] [--image_tokens 576] [--repeats 5]

Both models share one config: the same Llama text model, CLIP vision tower and projector sizes, the same batch
(2 samples, each one image of `image_tokens` tokens, a prompt and a short labelled answer). The baseline is the
stock `transformers.LlavaForConditionalGeneration`, which computes logits at every position and takes the loss
from them. Each variant runs in its own subprocess so the peak RSS of one cannot hide in the other's; the step
time is the median of `--repeats` steps after a warm-up. Prints a table and writes benchmarks/results/*.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_variant(variant: str, vocab: int, image_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForConditionalGeneration

    torch.manual_seed(0)
    side = int(image_tokens**0.5)
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    vision = CLIPVisionConfig(
        image_size=side * 2,
        patch_size=2,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    image_token_id = vocab - 1
    if variant == "any2text":
        config = LlamaVisionAudioConfig(text_config=text, vision_config=vision, image_token_id=image_token_id)
        model = LlamaVisionAudioForConditionalGeneration._from_config(config)
        model.model.vision_tower.requires_grad_(False)
    else:
        config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=image_token_id)
        model = LlavaForConditionalGeneration._from_config(config)
        model.model.vision_tower.requires_grad_(False)
    model.train()
    prompt, answer = 32, 16
    ids = torch.randint(0, vocab - 2, (2, prompt + image_tokens + answer))
    ids[:, 1 : 1 + image_tokens] = image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(2, 3, side * 2, side * 2),
        "labels": labels,
    }
    times = []
    for step in range(repeats + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "step_s_median": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vocab": vocab,
        "image_tokens": image_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--image_tokens", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", choices=["any2text", "llava"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.vocab, args.image_tokens, args.repeats)))
        return
    results = {}
    for variant in ("llava", "any2text"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--vocab", str(args.vocab)]
            + ["--image_tokens", str(args.image_tokens), "--repeats", str(args.repeats)],
            check=True,
            capture_output=True,
            text=True,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base, ours = results["llava"], results["any2text"]
    summary = {
        "baseline": "transformers.LlavaForConditionalGeneration (logits at every position)",
        "results": results,
        "step_time_ratio_any2text_over_llava": ours["step_s_median"] / base["step_s_median"],
        "peak_rss_ratio_any2text_over_llava": ours["peak_rss_mb"] / base["peak_rss_mb"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sparse_logits.json").write_text(json.dumps(summary, indent=2))
    print(f"{'variant':<10}{'step (s)':>10}{'peak RSS (MB)':>16}")
    for name, r in results.items():
        print(f"{name:<10}{r['step_s_median']:>10.3f}{r['peak_rss_mb']:>16.0f}")
    print(
        f"any2text / llava: step time x{summary['step_time_ratio_any2text_over_llava']:.2f}, "
        f"peak RSS x{summary['peak_rss_ratio_any2text_over_llava']:.2f}"
    )


if __name__ == "__main__":
    main()
