"""Load and convert the checkpoints the seed project (align-anything) published.

Two formats (see the format notes in the repository's shared reference):

- image+text: a stock Llava checkpoint (`model_type: "llava"`) with a pickled `pytorch_model.bin` whose vision tower
  is a full CLIPModel, and no processor config or chat template.
- image+audio+text: `model_type: "llama_vision_audio"` with the seed's own key names (`image_projector`,
  `language_model.model`, ...), a CLIP tower whose CLS embedding was kept although the config says `"default"`, and
  one `preprocessor_config.json` that both CLIP and CLAP wrote to (CLAP's won).

`load_seed_checkpoint` gives a working `(model, processor)` in memory; `convert_seed_checkpoint` writes it as a normal
checkpoint (safetensors, processor config, chat template) that loads with `AutoModelForImageTextToText` /
`AutoProcessor`. The seed folder cannot be loaded by `from_pretrained` alone, even with `key_mapping`, because its
config states the wrong vision strategy and it carries no usable processor config.

    any2text convert-seed --model PKU-Alignment/seed-model-dir --output ./converted
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    ClapFeatureExtractor,
    HfArgumentParser,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import logging

from ..cli import setup_logging
from ..models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioProcessor,
)
from .checkpoint import BuildRecord, save_checkpoint, token_table
from .components import AUDIO_TOKEN, IMAGE_TOKEN, PAD_TOKEN, check_image_processor
from .image_processors import clip_image_processor_class

logger = logging.get_logger(__name__)

# Seed key prefixes -> ours, through `from_pretrained(key_mapping=...)`. Inner encoder keys (CLIP's `vision_model.`)
# are left to transformers' own per-encoder conversions, which follow the installed version.
SEED_KEY_MAPPING = {
    r"^language_model\.lm_head\.": "lm_head.",
    r"^language_model\.model\.": "model.language_model.",
    r"^vision_tower\.": "model.vision_tower.",
    r"^audio_tower\.": "model.audio_tower.",
    r"^image_projector\.": "model.vision_projector.",
    r"^audio_projector\.": "model.audio_projector.",
}

# The prompt format the seed documents for inference, as a chat template:
# "<|start_header_id|>user<|end_header_id|>: <image> Give an overview of what's in the image.\n"
# "<|start_header_id|>assistant<|end_header_id|>: ". Media placeholders come first, each followed by a space.
SEED_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>: ' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}"
    "{%- for item in message['content'] if item['type'] == 'image' %}{{- '<image> ' }}{%- endfor %}"
    "{%- for item in message['content'] if item['type'] == 'audio' %}{{- '<audio> ' }}{%- endfor %}"
    "{%- for item in message['content'] if item['type'] == 'text' %}{{- item['text'] }}{%- endfor %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '\\n<|start_header_id|>assistant<|end_header_id|>: ' }}{%- endif %}"
)


def _weights_file(src: Path) -> Path:
    weights = src / "pytorch_model.bin"
    if not weights.exists():
        raise ValueError(
            f"`{src}` has no `pytorch_model.bin`: the seed checkpoints are a pickled state dict. "
            "A folder with safetensors is already a normal checkpoint: load it with `from_pretrained`."
        )
    return weights


def _load(model_class: type[PreTrainedModel], src: Path, config, key_mapping: dict | None) -> PreTrainedModel:
    """Load through transformers (which reads `.bin` with `torch.load(weights_only=True)`), check nothing is missing
    and only the other CLIP tower was skipped, then move the weights into a fresh model.

    The move matters: a model loaded with a key mapping is saved back in the source layout.
    """
    model, info = model_class.from_pretrained(
        src, config=config, key_mapping=key_mapping, weights_only=True, output_loading_info=True
    )
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"`{src}` is not a seed checkpoint: {len(missing)} weight(s) missing, e.g. `{missing[0]}`.")
    # The seed stored the full CLIPModel; its text tower and projections are the only weights to leave behind.
    dropped = sorted(info["unexpected_keys"])
    foreign = [k for k in dropped if "vision_tower." not in k or ".vision_model." in k]
    if foreign:
        raise ValueError(f"`{src}` holds weights this model has no place for, e.g. `{foreign[0]}`.")
    logger.info(f"Dropped {len(dropped)} weights of the seed's CLIP text tower")
    with torch.device("meta"):
        fresh = model_class(model.config)
    fresh.load_state_dict(model.state_dict(), assign=True, strict=True)
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh.eval()


def _tokenizer(src: Path):
    tokenizer = AutoTokenizer.from_pretrained(src)
    if tokenizer.pad_token is None and PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = PAD_TOKEN  # the seed added `<pad>` but never declared it
    return tokenizer


def _clip_image_processor(image_size: int) -> BaseImageProcessor:
    # What openai/clip-vit-large-patch14-336 ships (CLIP's defaults at the tower's size); the seed hard-coded it too.
    return clip_image_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def load_seed_checkpoint(src: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A seed checkpoint folder as `(model, processor)` with the semantics it was trained with.

    - `llava`: `LlavaForConditionalGeneration` + a `LlavaProcessor` with `patch_size`,
      `vision_feature_select_strategy="default"` and the seed's chat template.
    - `llama_vision_audio`: `LlamaVisionAudioForConditionalGeneration` with `vision_feature_select_strategy="full"`
      (CLS kept: (image_size / patch_size)^2 + 1 tokens, 577 at 336 px) and audio from CLAP `hidden_states[-2]` (64
      tokens), + a `LlamaVisionAudioProcessor` expanding placeholders to exactly those counts, CLIP's image processor
      at the tower's size and the CLAP feature extractor the seed folder kept.
    """
    src = Path(src)
    _weights_file(src)
    config = AutoConfig.from_pretrained(src)
    tokenizer = _tokenizer(src)
    if isinstance(config, LlamaVisionAudioConfig):
        # Converted here: the seed-format mark (which makes a direct load an error) goes.
        if config.is_seed_format:
            delattr(config, "audio_feature_select_strategy")
        # The seed's model never applied its "default" strategy: every CLIP embedding, CLS included, was used.
        config.vision_feature_select_strategy = "full"
        config.pad_token_id = config.text_config.pad_token_id = tokenizer.pad_token_id
        model = _load(LlamaVisionAudioForConditionalGeneration, src, config, SEED_KEY_MAPPING)
        image_processor = _clip_image_processor(config.vision_config.image_size)
        preprocessor = json.loads((src / "preprocessor_config.json").read_text()) if config.audio_config else {}
        if preprocessor.get("feature_extractor_type") == "ClapFeatureExtractor":
            feature_extractor = ClapFeatureExtractor.from_pretrained(src)
        else:
            logger.warning(f"`{src}` holds no CLAP feature extractor config; using ClapFeatureExtractor's defaults.")
            feature_extractor = ClapFeatureExtractor()
        processor = LlamaVisionAudioProcessor(
            image_processor=image_processor,
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            chat_template=SEED_CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
            audio_token=AUDIO_TOKEN,
            image_seq_length=config.image_seq_length,
            audio_seq_length=config.audio_seq_length,
            video_frame_seq_length=config.video_frame_seq_length or None,
        )
    elif config.model_type == LlavaForConditionalGeneration.config_class.model_type:
        config.pad_token_id = config.text_config.pad_token_id = tokenizer.pad_token_id
        model = _load(LlavaForConditionalGeneration, src, config, None)
        vision_config = config.vision_config
        image_processor = clip_image_processor_class().from_pretrained(src)
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=SEED_CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
            num_additional_image_tokens=1,  # CLIP's CLS, removed again by the "default" strategy
        )
    else:
        raise ValueError(
            f"`{src}` has `model_type: {config.model_type!r}`; seed checkpoints are 'llava' or 'llama_vision_audio'."
        )
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    vision_config = getattr(model.config, "vision_config", None)
    if vision_config is not None:
        check_image_processor(processor.image_processor, vision_config.image_size, src)
    return model, processor


class ConversionRecord(BuildRecord):
    """A converted seed checkpoint: the same weights, so its card tells how it was converted rather than built."""

    def card_sections(self, model: PreTrainedModel) -> list[str]:
        return [
            "# Converted align-anything checkpoint",
            "",
            f"Converted from `{self.language_model}` with `any2text convert-seed`: the same weights (the seed's "
            "unused CLIP text tower dropped), with the semantics the model was trained with written into the config "
            "and processor.",
            "",
            "## Placeholder tokens",
            "",
            *token_table(self),
            "## How it was converted",
            "",
            "```bash",
            f"any2text convert-seed --model {self.language_model} --output OUTPUT",
            "```",
            "",
        ]


def convert_seed_checkpoint(src: str | Path, dst: str | Path, max_shard_size: str | int = "5GB") -> Path:
    """Write the seed checkpoint at `src` as a normal checkpoint in `dst` (see `load_seed_checkpoint`)."""
    model, processor = load_seed_checkpoint(src)
    tokenizer = processor.tokenizer
    placeholders = (IMAGE_TOKEN, AUDIO_TOKEN, PAD_TOKEN)
    record = ConversionRecord(
        builder="convert_seed_checkpoint",
        language_model=str(src),
        added_tokens={t: tokenizer.convert_tokens_to_ids(t) for t in placeholders if t in tokenizer.get_vocab()},
        num_old_tokens=len(tokenizer),
    )
    remote_code = isinstance(model, LlamaVisionAudioForConditionalGeneration)
    logger.info(f"Writing the converted checkpoint to {dst}")
    return save_checkpoint(model, processor, dst, record, max_shard_size=max_shard_size, remote_code=remote_code)


@dataclass
class ConvertSeedArguments:
    model: str = field(metadata={"help": "Folder of a seed (align-anything) checkpoint."})
    output: str = field(metadata={"help": "Folder to write the converted checkpoint to."})
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard."})


def main(argv: list[str] | None = None) -> None:
    """`any2text convert-seed --model SEED_DIR --output OUT`."""
    (args,) = HfArgumentParser(ConvertSeedArguments).parse_args_into_dataclasses(args=argv)
    setup_logging()
    convert_seed_checkpoint(args.model, args.output, max_shard_size=args.max_shard_size)
    print(f"Converted {args.model} -> {args.output}")


if __name__ == "__main__":
    main()
