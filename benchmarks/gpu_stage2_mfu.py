"""Stage-2 training step on a GPU: MFU of padded vs padding-free vs packed batches, full and LoRA, vs stock Llava.

    python benchmarks/gpu_stage2_mfu.py [--batch 8] [--steps 10] [--lora] [--output results/gpu_stage2_mfu_h200.json]
    python benchmarks/gpu_stage2_mfu.py --device cpu --tiny --steps 2      # smoke run of the script itself

Models: a randomly initialised Llama-3.2-1B-shaped language model (bf16; 16 layers, hidden 2048, vocabulary 128,256)
and CLIP ViT-L/14-336 (frozen, 576 image tokens), with a 2-layer MLP projector; stage 2 trains the projector and the
language model (fully, or LoRA r=16 on its attention and MLP projections with `--lora`). Samples: one 336 px image,
a 48-token prompt and an answer of long-tailed length (log-normal, median 60 tokens, capped at 1,500), as in
LLaVA-Instruct; the same samples for every variant.

Variants (attention: flash-attention 2 when `flash_attn` is installed, else SDPA, per sample for padding-free and
packed rows as in training; printed):
- `llava`: stock `LlavaForConditionalGeneration` on the padded batch, logits at every position. This is what TRL's
  `SFTTrainer` feeds a stock Llava (its vision collator pads; TRL refuses padding-free and packing for vision data),
  so it stands for "stock Llava + TRL" (the CPU benchmark `stage2_throughput.py` runs TRL itself);
- `padded`: any2text on the same padded batch (logits only at labelled positions);
- `padding_free`: the same samples as one row, `position_ids` restarting per sample (flash-attention's varlen path);
- `packed`: best-fit-decreasing rows of at most `--max_length` tokens, rows per step holding ≈ `--batch` samples.

FLOPs are counted as in shared/reference/performance.md, on real (non-pad) tokens only, pad work being waste:
trained LM 6·N·T (LoRA: 4·N·T + 6·N_lora·T), causal attention 4·L·d·T²/2 × 3 per sample, the LM head 6·d·V per
labelled token (the work needed: any2text computes only those), the frozen encoder 2·N_enc per image token (577),
the projector 6·N_proj per image token. No gradient checkpointing. Peak dense bf16: 989 TFLOP/s (H100 SXM / H200).
"""

import argparse
import gc
import importlib.util
import json
import time

import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForConditionalGeneration
from any2text.data.packing import bfd_bins, concat_rows, flatten_padded_batch, stack_rows, use_varlen_sdpa

PEAK_TFLOPS = 989.0
IMAGE_TOKEN_ID = 128256
PAD_ID = 128004  # Llama-3's <|finetune_right_pad_id|>; 128257 is our audio token (and would count as one)
PROMPT = 48


def configs(tiny: bool):
    if tiny:  # smoke-run shapes (CPU)
        text = LlamaConfig(vocab_size=128258, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)  # fmt: skip
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=336, patch_size=14)  # fmt: skip
        return text, vision
    text = LlamaConfig(  # Llama-3.2-1B
        vocab_size=128258, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
    )  # fmt: skip
    vision = CLIPVisionConfig(  # CLIP ViT-L/14-336
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768,
    )  # fmt: skip
    return text, vision


def matmul_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def make_samples(count: int, seed: int = 0) -> list[dict]:
    """Token ids and labels of `count` samples: BOS, 576 image tokens, prompt, long-tailed answer."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        answer = int(min(max(np.exp(rng.normal(4.1, 1.0)), 1), 1500))
        ids = torch.randint(0, 128000, (1 + 576 + PROMPT + answer,))
        ids[1:577] = IMAGE_TOKEN_ID
        labels = torch.full_like(ids, -100)
        labels[-answer:] = ids[-answer:]
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def padded_batch(samples: list[dict], device: str) -> dict:
    length = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), length), PAD_ID)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
    pixels = torch.randn(len(samples), 3, 336, 336, dtype=torch.bfloat16)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}


def packed_batch(groups: list[list[dict]], single_row: bool) -> dict:
    """One padding-free row per group, through the same flattening the collator wrapper uses; with flash-attention
    (its varlen path reads packed `position_ids` only in a batch of one row) or per-sample SDPA all in ONE row."""
    rows = [flatten_padded_batch(padded_batch(group, "cpu")) for group in groups]
    return stack_rows([concat_rows(rows)] if single_row else rows, PAD_ID)


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def build(variant: str, text, vision, lora: bool, attn: str, device: str):
    torch.manual_seed(0)
    with torch.device(device):
        if variant == "llava":
            config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID)
            model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
            projector = model.model.multi_modal_projector
        else:
            config = LlamaVisionAudioConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID)
            model = LlamaVisionAudioForConditionalGeneration._from_config(
                config, dtype=torch.bfloat16, attn_implementation={"text_config": attn, "vision_config": "sdpa"}
            )
            projector = model.model.vision_projector
    tower, lm = model.model.vision_tower, model.model.language_model
    tower.requires_grad_(False)
    if lora:
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
        projector.requires_grad_(True)
    model.train()
    return model, projector, tower, lm


def run(variant: str, samples: list[dict], args, attn: str) -> dict:
    text, vision = configs(args.tiny)
    model, projector, tower, lm = build("llava" if variant == "llava" else "any2text", text, vision, args.lora, attn,
                                        args.device)  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    # As `--padding_free` / `--packing` do in training: SDPA attends per sample, and packed rows join into one row.
    varlen = variant in ("padding_free", "packed") and use_varlen_sdpa(lm)
    steps = []
    if variant == "packed":
        lengths = [len(s["input_ids"]) for s in samples]
        bins = bfd_bins(lengths, args.max_length)
        rows = max(1, round(args.batch * len(bins) / len(samples)))
        for i in range(0, len(bins) - rows + 1, rows):
            steps.append(
                packed_batch([[samples[j] for j in b] for b in bins[i : i + rows]], "flash" in attn or varlen)
            )
    else:
        for i in range(0, len(samples) - args.batch + 1, args.batch):
            group = samples[i : i + args.batch]
            steps.append(packed_batch([group], False) if variant == "padding_free" else padded_batch(group, "cpu"))
    if len(steps) < 3 + args.steps:
        raise ValueError(
            f"{variant}: {len(steps)} batches for 3 warm-up + {args.steps} timed steps; pass more samples."
        )
    warmup, timed = steps[:3], steps[3 : 3 + args.steps]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for batch in warmup:
        _step(model, optimizer, to_device(batch, args.device))
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in timed:
        _step(model, optimizer, to_device(batch, args.device))
    sync()
    seconds = time.perf_counter() - start
    flops, real_tokens, n_samples = 0.0, 0, 0
    linears = [(n, m) for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear)]
    n_lm = sum(m.weight.numel() for n, m in linears if "lora_" not in n)
    n_lora = sum(p.numel() for n, p in lm.named_parameters() if "lora_" in n)
    n_enc, n_proj = matmul_params(tower), matmul_params(projector)
    d, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    for batch in timed:
        seq_lengths = _sample_lengths(batch)
        labelled = int((batch["labels"] != -100).sum())
        for t in seq_lengths:
            lm_flops = (4 * n_lm * t + 6 * n_lora * t) if args.lora else 6 * n_lm * t
            flops += lm_flops + 4 * layers * d * t * t / 2 * 3 + 2 * n_enc * 577 + 6 * n_proj * 576
        flops += (4 if args.lora else 6) * d * vocab * labelled  # the head trains only in full fine-tuning
        real_tokens += sum(seq_lengths)
        n_samples += len(seq_lengths)
    result = {
        "variant": variant,
        "lora": args.lora,
        "attn_implementation": lm.config._attn_implementation,
        "steps": len(timed),
        "step_s": seconds / len(timed),
        "samples_per_s": n_samples / seconds,
        "real_tokens_per_s": real_tokens / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / PEAK_TFLOPS,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else None,
    }
    del model, optimizer
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def _step(model, optimizer, batch: dict) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sample_lengths(batch: dict) -> list[int]:
    """Real lengths of the samples of a padded or padding-free batch (pad tails excluded)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(-1).tolist()
    lengths = []
    for ids, positions in zip(batch["input_ids"], batch["position_ids"]):
        starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
        lengths += [end - start for start, end in zip(starts, starts[1:]) if ids[start] != PAD_ID]
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--variants", default="llava,padded,padding_free,packed")
    parser.add_argument("--output", default=None)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a smoke run")
    args = parser.parse_args()
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") and args.device == "cuda" else "sdpa"
    # Enough for every variant's warm-up and timed steps (packed bins hold more samples than they have rows).
    samples = make_samples(args.batch * (args.steps + 3) * 4)
    results = [run(variant, samples, args, attn) for variant in args.variants.split(",")]
    by_name = {r["variant"]: r for r in results}
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "batch": args.batch,
        "lora": args.lora,
        "baseline": "stock LlavaForConditionalGeneration on the padded batch (what TRL's SFTTrainer feeds it)",
        "results": results,
        "samples_per_s_vs_llava": {
            name: r["samples_per_s"] / by_name["llava"]["samples_per_s"] for name, r in by_name.items()
        }
        if "llava" in by_name
        else None,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
