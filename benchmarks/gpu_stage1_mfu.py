"""Stage-1 training step on a GPU at the real recipe's shapes: MFU and memory, any2text vs stock Llava.

    python benchmarks/gpu_stage1_mfu.py [--batch 8] [--steps 10] [--layers 32]

Both models get the SAME randomly initialised Llama-3.1-8B-shaped language model (bf16), CLIP ViT-L/14-336 vision
tower and 2-layer MLP projector; the language model and tower are frozen, the projector trains (stage 1). Each
sample is one 336 px image (576 tokens), a 48-token prompt and a 16-token labelled answer. The baseline is
`transformers.LlavaForConditionalGeneration`, which materialises logits (128K vocabulary) at every position.

FLOPs counted as in shared/reference/performance.md: frozen LM with gradients flowing back to the projector
≈ 4·N·T plus causal attention 4·L·d·T²/2 × 2 (forward + activation backward) per sample, the frozen encoder
2·N_enc per image token, the projector 6·N_proj per token. No gradient checkpointing (the LM is frozen).
Peak dense bf16: 989 TFLOP/s (H100 SXM / H200).
"""

import argparse
import gc
import json
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForConditionalGeneration

PEAK_TFLOPS = 989.0


def configs(layers: int):
    text = LlamaConfig(
        vocab_size=128260,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768,
    )  # fmt: skip
    return text, vision


def matmul_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: dict) -> None:
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run(variant: str, batch: int, steps: int, layers: int, device: str = "cuda") -> dict:
    text, vision = configs(layers)
    image_token_id = 128256
    torch.manual_seed(0)
    with torch.device(device):
        if variant == "any2text":
            config = LlamaVisionAudioConfig(text_config=text, vision_config=vision, image_token_id=image_token_id)
            model = LlamaVisionAudioForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
            projector, tower, lm = model.model.vision_projector, model.model.vision_tower, model.model.language_model
        else:
            config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=image_token_id)
            model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
            projector, tower, lm = (
                model.model.multi_modal_projector,
                model.model.vision_tower,
                model.model.language_model,
            )
    model.requires_grad_(False)
    projector.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-4)
    prompt, answer, image_tokens = 48, 16, 576
    seq = prompt + image_tokens + answer
    ids = torch.randint(0, 128000, (batch, seq), device=device)
    ids[:, 1 : 1 + image_tokens] = image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 336, 336, device=device, dtype=torch.bfloat16),
        "labels": labels,
    }

    for _ in range(3):
        train_step(model, optimizer, inputs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, inputs)
    sync()
    seconds = (time.perf_counter() - start) / steps

    n_lm, n_enc, n_proj = (
        matmul_params(lm) + text.hidden_size * text.vocab_size,
        matmul_params(tower),
        matmul_params(projector),
    )
    attention = 4 * text.num_hidden_layers * text.hidden_size * seq**2 / 2 * 2
    flops = batch * (4 * n_lm * seq + attention + 2 * n_enc * (image_tokens + 1) + 6 * n_proj * image_tokens)
    result = {
        "variant": variant,
        "step_s": seconds,
        "samples_per_s": batch / seconds,
        "tokens_per_s": batch * seq / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / PEAK_TFLOPS,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
    }
    del model, optimizer, inputs
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--output", default=None)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script")
    args = parser.parse_args()
    results = [run(v, args.batch, args.steps, args.layers, args.device) for v in ("llava", "any2text")]
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "batch": args.batch,
        "layers": args.layers,
        "baseline": "transformers.LlavaForConditionalGeneration, same shapes and batch",
        "results": results,
        "speedup_any2text_over_llava": results[0]["step_s"] / results[1]["step_s"],
        "peak_memory_ratio_any2text_over_llava": (
            results[1]["peak_memory_gb"] / results[0]["peak_memory_gb"] if args.device == "cuda" else None
        ),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
