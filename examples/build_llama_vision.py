"""Build an image+text model (a stock Llava checkpoint) from a text LLM and a CLIP vision tower.

    python examples/build_llama_vision.py --save_path ./llama_vision

The result loads with `LlavaForConditionalGeneration` / `AutoModelForImageTextToText` on plain transformers.
Other parts: `--language_model_path Qwen/Qwen2.5-7B-Instruct`, `--vision_tower_path google/siglip-so400m-patch14-384`;
`--dtype bfloat16` casts everything (the default, auto, keeps the language model's checkpoint dtype).
"""

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from any2text.builders import build_llama_vision

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("any2text").setLevel(logging.INFO)


@dataclass
class Arguments:
    language_model_path: str = field(default="meta-llama/Meta-Llama-3.1-8B-Instruct")
    vision_tower_path: str = field(default="openai/clip-vit-large-patch14-336")
    save_path: str = field(default="./llama_vision", metadata={"help": "Output folder."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=argv)
    build_llama_vision(args.language_model_path, args.vision_tower_path, save_path=args.save_path, dtype=args.dtype)


if __name__ == "__main__":
    main()
