"""`any2text build`: compose a checkpoint from a language model and encoder checkpoints.

any2text build --kind llama_vision_audio --save_path ./llama_vision_audio
any2text build --kind llama_vision --language_model_path Qwen/Qwen2.5-7B-Instruct --save_path ./qwen_vision
"""

from dataclasses import dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from ..cli import setup_logging
from ..data.loading import none_if_unset
from ..inference import DTypeName
from .presets import DEFAULT_AUDIO_TOWER, DEFAULT_LANGUAGE_MODEL, DEFAULT_VISION_TOWER


@dataclass
class BuildArguments:
    kind: Literal["llama_vision", "llama_vision_audio"] = field(
        default="llama_vision_audio",
        metadata={"help": "llama_vision: a stock Llava checkpoint; llama_vision_audio: image + audio + text."},
    )
    language_model_path: str = field(default=DEFAULT_LANGUAGE_MODEL, metadata={"help": "Causal LM, Hub id or path."})
    vision_tower_path: str = field(
        default=DEFAULT_VISION_TOWER, metadata={"help": "CLIP / SigLIP checkpoint; 'none' for no vision input."}
    )
    audio_tower_path: str = field(
        default=DEFAULT_AUDIO_TOWER,
        metadata={"help": "CLAP checkpoint; 'none' for no audio input (llama_vision_audio only)."},
    )
    save_path: str | None = field(default=None, metadata={"help": "Output folder."})
    dtype: DTypeName = field(
        default="auto", metadata={"help": "auto (the LM checkpoint's), float32, bfloat16, float16."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the projector initialisation."})
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to upload the checkpoint to."})


def run_build(args: BuildArguments):
    """Run the builder `args.kind` names; returns `(model, processor)`."""
    from .llama_vision import build_llama_vision
    from .llama_vision_audio import build_llama_vision_audio

    vision = none_if_unset(args.vision_tower_path)
    audio = none_if_unset(args.audio_tower_path)
    common = dict(
        save_path=args.save_path,
        dtype=args.dtype,
        seed=args.seed,
        max_shard_size=args.max_shard_size,
        push_to_hub=args.push_to_hub,
    )
    if args.kind == "llama_vision":
        if vision is None:
            raise ValueError("`--kind llama_vision` needs `--vision_tower_path` (a CLIP or SigLIP checkpoint).")
        return build_llama_vision(args.language_model_path, vision, **common)
    return build_llama_vision_audio(args.language_model_path, vision, audio, **common)


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(BuildArguments).parse_args_into_dataclasses(args=argv)
    if args.save_path is None and args.push_to_hub is None:
        raise SystemExit("Nothing would be written: pass `--save_path DIR` and/or `--push_to_hub REPO_ID`.")
    setup_logging()
    run_build(args)
    print(f"Built {args.kind} checkpoint" + (f" in {args.save_path}" if args.save_path else ""))


if __name__ == "__main__":
    main()
