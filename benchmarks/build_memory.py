"""Peak memory of a build, against the size of the language model it is built from.

    python benchmarks/build_memory.py [--layers 6 --hidden 1536] [--dtype bfloat16]

Saves a random Llama (about 300 MB in bf16 with the defaults, vocabulary = the tiny tokenizer's, so the embedding
resize runs), a tiny CLIP and a tiny CLAP to a temporary folder, then runs `build_llama_vision_audio` (save included)
in a fresh process and reports its peak RSS (`ru_maxrss`) above the RSS it had after importing everything.
The builder moves the loaded language model into a model built on the meta device, so the build should cost about
one copy of the language model (plus the enlarged embedding rows), not two or three.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PREPARE = """
import sys, torch
from pathlib import Path
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
sys.path.insert(0, {tests!r})
from builders_fixtures import make_parts
from any2text.builders.presets import tiny_tokenizer_path
root = Path({root!r})
parts = make_parts(root)  # tiny CLIP / CLAP (and tiny LMs, unused here)
tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size={hidden}, intermediate_size={hidden} * 8 // 3,
                     num_hidden_layers={layers}, num_attention_heads={hidden} // 128, num_key_value_heads=4,
                     bos_token_id=0, eos_token_id=4, tie_word_embeddings=False)
with torch.device("cpu"):
    model = LlamaForCausalLM(config).to(torch.{dtype})
model.save_pretrained(root / "big_llama")
tokenizer.save_pretrained(root / "big_llama")
"""

MEASURE = """
import json, os, resource, sys
import any2text
from any2text.builders import build_llama_vision_audio
import psutil
before = psutil.Process().memory_info().rss
root = {root!r}
build_llama_vision_audio(root + "/big_llama", root + "/clip", root + "/clap", save_path=root + "/out")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
print(json.dumps({{"rss_after_imports": before, "peak_rss": peak}}))
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    with tempfile.TemporaryDirectory() as root:
        prepare = PREPARE.format(root=root, tests=tests, hidden=args.hidden, layers=args.layers, dtype=args.dtype)
        subprocess.run([sys.executable, "-c", textwrap.dedent(prepare)], check=True, env=env, capture_output=True)
        lm_bytes = sum(f.stat().st_size for f in Path(root, "big_llama").glob("*.safetensors"))
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(MEASURE.format(root=root))],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 2**20
    extra = result["peak_rss"] - result["rss_after_imports"]
    report = {
        "language_model_mib": round(lm_bytes / mib, 1),
        "rss_after_imports_mib": round(result["rss_after_imports"] / mib, 1),
        "peak_rss_mib": round(result["peak_rss"] / mib, 1),
        "build_peak_above_imports_mib": round(extra / mib, 1),
        "ratio_to_language_model": round(extra / lm_bytes, 2),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
