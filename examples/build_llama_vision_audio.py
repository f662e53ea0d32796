"""Build an image+audio+text model (LlamaVisionAudio) from a text LLM, a CLIP vision tower and a CLAP audio tower.

    python examples/build_llama_vision_audio.py --save_path ./llama_vision_audio

The result loads with `AutoModelForImageTextToText` after `import any2text`, or with `trust_remote_code=True`.
Pass `--vision_tower_path none` or `--audio_tower_path none` for an audio-only or vision-only model;
`--dtype bfloat16` casts everything (the default, auto, keeps the language model's checkpoint dtype).
"""

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from any2text.builders import build_llama_vision_audio

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("any2text").setLevel(logging.INFO)


@dataclass
class Arguments:
    language_model_path: str = field(default="meta-llama/Meta-Llama-3.1-8B-Instruct")
    vision_tower_path: str = field(default="openai/clip-vit-large-patch14-336", metadata={"help": "or 'none'"})
    audio_tower_path: str = field(default="laion/clap-htsat-fused", metadata={"help": "or 'none'"})
    save_path: str = field(default="./llama_vision_audio", metadata={"help": "Output folder."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=argv)
    build_llama_vision_audio(
        args.language_model_path,
        vision_tower_path=None if args.vision_tower_path.lower() == "none" else args.vision_tower_path,
        audio_tower_path=None if args.audio_tower_path.lower() == "none" else args.audio_tower_path,
        save_path=args.save_path,
        dtype=args.dtype,
    )


if __name__ == "__main__":
    main()
