"""DPO training step: any2text's pair layout vs the naive "two full forwards, media encoded twice, full logits".

    .venv/bin/python benchmarks/dpo_step.py [--pairs 4] [--image_tokens 144] [--vocab 32000] [--repeats 3]

Both variants get the same LlamaVisionAudio model (a 2-layer Llama, hidden 256, `--vocab`; a CLIP tower giving
`--image_tokens` tokens per image; frozen tower, trained projector and language model), the same pairs (one image,
a ~40-token question, two ~16-token answers each) and a frozen reference copy; the step is policy forward +
reference forward + DPO loss + backward.

- any2text: `PreferenceCollator` (one row per pair `[prompt | chosen | rejected]`, each image once) and
  `pair_logps` (logits only at answer positions);
- naive (what TRL's `DPOTrainer` does for vision models): chosen and rejected as two sequences each carrying the
  image (`MultimodalCollator`), full logits, log-probs from them.

Each variant runs in its own subprocess (peak RSS of one cannot hide in the other's); step time is the median of
`--repeats` steps after a warm-up. Prints a table and writes benchmarks/results/dpo_step.json.
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


def build(image_tokens: int, vocab: int):
    import torch
    from transformers import AutoTokenizer, ClapFeatureExtractor, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig

    from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor
    from any2text.builders.presets import tiny_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<image>", "<audio>"]})
    side = int(image_tokens**0.5) * 2
    text = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    vision = CLIPVisionConfig(image_size=side, patch_size=2, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    config = LlamaVisionAudioConfig(
        text_config=text, vision_config=vision, image_token_id=tokenizer.convert_tokens_to_ids("<image>")
    )
    torch.manual_seed(0)
    policy = LlamaVisionAudioForConditionalGeneration._from_config(config)
    reference = LlamaVisionAudioForConditionalGeneration._from_config(config)
    reference.load_state_dict(policy.state_dict())
    policy.model.vision_tower.requires_grad_(False)
    reference.requires_grad_(False)
    processor = LlamaVisionAudioProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        feature_extractor=ClapFeatureExtractor(),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        audio_seq_length=1,
    )
    return policy.train(), reference.train(), processor


def pairs(count: int):
    from PIL import Image

    from any2text.data.templates import get_template

    template = get_template("TRL-Preference")
    question = "Look at the picture carefully and describe the main object, its colour and where it is. " * 2
    return [
        template({"prompt": question, "images": [Image.new("RGB", (64, 64), (40 * i % 255, 90, 200))],
                  "chosen": "A blue square on the left side of a dark background, drawn with a thin outline.",
                  "rejected": "A red circle in the middle of a white background, with a shadow below it."})
        for i in range(count)
    ]  # fmt: skip


def run_variant(variant: str, n_pairs: int, image_tokens: int, vocab: int, repeats: int) -> dict:
    import torch

    from any2text.data.collator import MultimodalCollator
    from any2text.data.preference import PreferenceCollator
    from any2text.training.dpo import answer_logps, dpo_loss, pair_logps

    policy, reference, processor = build(image_tokens, vocab)
    samples = pairs(n_pairs)
    encoded = {"images": 0}
    policy.model.vision_tower.register_forward_pre_hook(
        lambda module, args: encoded.__setitem__("images", encoded["images"] + args[0].shape[0])
    )

    if variant == "any2text":
        batch = PreferenceCollator(processor)([{"messages": s} for s in samples])

        def logps(model):
            out = pair_logps(model, batch)
            return out["chosen_logps"], out["rejected_logps"]

        logits_positions = len(batch["logits_to_keep"]) * batch["input_ids"].shape[0]
        tokens = batch["input_ids"].numel()
    else:
        conversations = [list(s) for s in samples] + [[*s.prompt, *s.rejected] for s in samples]
        batch = MultimodalCollator(processor)([{"messages": c} for c in conversations])
        labels = batch.pop("labels")

        def logps(model):
            logits = model(**batch, use_cache=False).logits
            summed = answer_logps(logits[:, :-1], labels[:, 1:])[0]
            return summed[:n_pairs], summed[n_pairs:]

        logits_positions = batch["input_ids"].numel()
        tokens = batch["input_ids"].numel()

    def step():
        chosen, rejected = logps(policy)
        with torch.no_grad():
            ref_chosen, ref_rejected = logps(reference)
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected).mean().backward()
        policy.zero_grad(set_to_none=True)

    step()  # warm-up
    encoded["images"] = 0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "step_s": statistics.median(times),
        "images_encoded_per_step": encoded["images"] / repeats,
        "logit_positions_per_forward": logits_positions,
        "tokens_per_forward": tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--image_tokens", type=int, default=144)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.pairs, args.image_tokens, args.vocab, args.repeats)))
        return
    results = {}
    for variant in ("naive", "any2text"):
        command = [sys.executable, __file__, "--variant", variant, "--pairs", str(args.pairs),
                   "--image_tokens", str(args.image_tokens), "--vocab", str(args.vocab), "--repeats", str(args.repeats)]  # fmt: skip
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    naive, ours = results["naive"], results["any2text"]
    print(
        "| variant | step (s) | images encoded / step | logit positions / forward | tokens / forward | peak RSS (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("naive (TRL-style)", naive), ("any2text", ours)):
        print(f"| {name} | {r['step_s']:.3f} | {r['images_encoded_per_step']:.0f} | "
              f"{r['logit_positions_per_forward']} | {r['tokens_per_forward']} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
    ratios = {key: ours[key] / naive[key] for key in ("step_s", "images_encoded_per_step",
                                                      "logit_positions_per_forward", "peak_rss_mb")}  # fmt: skip
    print("any2text / naive: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dpo_step.json").write_text(json.dumps({"args": vars(args), **results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
