"""Save a built checkpoint (weights, processor, model card, optionally the modeling code) and upload it to the Hub."""

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from transformers import PreTrainedModel, ProcessorMixin
from transformers.utils import logging

from ..models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioProcessor,
)

logger = logging.get_logger(__name__)


@dataclass
class BuildRecord:
    """What a checkpoint was built from; written into its model card."""

    builder: str
    language_model: str
    vision_tower: str | None = None
    audio_tower: str | None = None
    added_tokens: dict[str, int] = field(default_factory=dict)
    num_old_tokens: int = 0
    seed: int = 0


_AUTO_CLASSES = (
    (LlamaVisionAudioConfig, "AutoConfig"),
    (LlamaVisionAudioForConditionalGeneration, "AutoModelForImageTextToText"),
    (LlamaVisionAudioProcessor, "AutoProcessor"),
)


def enable_remote_code() -> None:
    """Make every later `save_pretrained` / `push_to_hub` of LlamaVisionAudio ship the model folder's code and an
    `auto_map`, e.g. before `model.push_to_hub(...)` of a trained model.

    The saved folder then loads with `trust_remote_code=True` where any2text is not installed. Where it is
    installed, `import any2text` registers the same classes and loading needs no remote code.
    This is transformers' class-level `register_for_auto_class`: it stays on for the process.
    """
    for cls, auto_class in _AUTO_CLASSES:
        cls.register_for_auto_class(auto_class)


@contextmanager
def _remote_code(enabled: bool) -> Iterator[None]:
    """`enable_remote_code` for one save only, so building does not change how the rest of the process saves."""
    previous = [cls._auto_class for cls, _ in _AUTO_CLASSES]
    if enabled:
        enable_remote_code()
    try:
        yield
    finally:
        for (cls, _), auto_class in zip(_AUTO_CLASSES, previous):
            cls._auto_class = auto_class


def save_checkpoint(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    save_path: str | Path,
    record: BuildRecord,
    max_shard_size: str | int = "5GB",
    remote_code: bool = True,
) -> Path:
    """Write model (sharded safetensors), processor and README.md to `save_path`."""
    save_path = Path(save_path)
    with _remote_code(remote_code):
        model.save_pretrained(save_path, max_shard_size=max_shard_size)
        processor.save_pretrained(save_path)
    (save_path / "README.md").write_text(model_card(model, record, remote_code=remote_code))
    return save_path


def push_checkpoint(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    repo_id: str,
    record: BuildRecord,
    save_path: str | Path | None = None,
    remote_code: bool = True,
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """Upload the checkpoint to `repo_id` as ONE commit (weights, processor, code, README), creating the repo if needed.

    The files are those `save_checkpoint` writes (`save_path`, or a temporary folder when it is `None`), so what is
    on the Hub is exactly what loads locally. Returns the commit URL.
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(save_path) if save_path is not None else Path(tmp)
        if save_path is None:
            save_checkpoint(model, processor, folder, record, remote_code=remote_code)
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"Upload {type(model).__name__} built by any2text.builders.{record.builder}",
        )
    return str(info)


def write_outputs(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    record: BuildRecord,
    save_path: str | Path | None,
    push_to_hub: str | None,
    remote_code: bool,
    max_shard_size: str | int = "5GB",
    private: bool | None = None,
    token: str | None = None,
) -> None:
    """The last steps of every builder: save to `save_path` and/or upload to the Hub repo `push_to_hub`."""
    if save_path is not None:
        logger.info(f"[4/5] Saving to {save_path}")
        save_checkpoint(model, processor, save_path, record, max_shard_size=max_shard_size, remote_code=remote_code)
    if push_to_hub is not None:
        logger.info(f"[5/5] Uploading to the Hub repo {push_to_hub}")
        push_checkpoint(
            model, processor, push_to_hub, record, save_path=save_path, remote_code=remote_code, private=private,
            token=token,
        )  # fmt: skip
    logger.info("Done.")


def model_card(model: PreTrainedModel, record: BuildRecord, remote_code: bool) -> str:
    """A README.md: base model, encoders, added tokens, initialisation and how to load."""
    config = model.config
    bases = [b for b in (record.language_model, record.vision_tower, record.audio_tower) if b]
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "base_model:"]
    front += [f"- {b}" for b in bases]
    front += ["tags:", "- any2text", f"- {config.model_type}", "---", ""]
    if record.builder == "convert_seed_checkpoint":
        body = _converted_section(record)
    else:
        body = _built_section(model, record)
    return "\n".join(front + body + _loading_section(remote_code))


def _token_table(record: BuildRecord) -> list[str]:
    return ["| token | id |", "|---|---|", *[f"| `{t}` | {i} |" for t, i in record.added_tokens.items()], ""]


def _built_section(model: PreTrainedModel, record: BuildRecord) -> list[str]:
    config = model.config
    text_config = config.get_text_config()
    new_rows = [t for t, i in record.added_tokens.items() if i >= record.num_old_tokens]
    lines = [
        f"# {type(model).__name__} built with any2text",
        "",
        "An untrained composition of pretrained parts: the projectors are freshly initialised, so the model needs "
        "projector pre-training (stage 1) and instruction tuning (stage 2) before it is useful.",
        "",
        "## Parts",
        "",
        f"- Language model: `{record.language_model}` ({text_config.model_type}, hidden size "
        f"{text_config.hidden_size}, vocabulary {text_config.vocab_size} after resizing)",
    ]
    if record.vision_tower:
        vision = config.vision_config
        lines.append(
            f"- Vision tower: `{record.vision_tower}` (only the {vision.model_type} tower is stored; "
            f"{vision.image_size}px, patch {vision.patch_size}, layer {config.vision_feature_layer}, "
            f"strategy `{config.vision_feature_select_strategy}`)"
        )
    if record.audio_tower:
        lines.append(
            f"- Audio tower: `{record.audio_tower}` (only the {config.audio_config.model_type} tower is stored; "
            f"layer {config.audio_feature_layer})"
        )
    lines += [
        f"- Projectors: 2-layer MLP (`{config.projector_hidden_act}`), weights ~ N(0, "
        f"{getattr(text_config, 'initializer_range', 0.02)}), biases 0, seed {record.seed}",
        f"- dtype: {model.dtype}",
        "",
        "## Added tokens",
        "",
        *_token_table(record),
        f"New embedding rows ({', '.join(f'`{t}`' for t in new_rows) or 'none'}), input and output, are the mean "
        f"of the {record.num_old_tokens} rows of the original vocabulary. `pad_token_id` is "
        f"{text_config.pad_token_id}.",
        "",
        "## How it was built",
        "",
        "```python",
        f"from any2text.builders import {record.builder}",
        "",
        f"{record.builder}(**{json.dumps(_build_kwargs(record))}, save_path=...)",
        "```",
        "",
    ]
    return lines


def _converted_section(record: BuildRecord) -> list[str]:
    return [
        "# Converted align-anything checkpoint",
        "",
        f"Converted from `{record.language_model}` with `any2text convert-seed`: the same weights (the seed's unused "
        "CLIP text tower dropped), with the semantics the model was trained with written into the config and "
        "processor.",
        "",
        "## Placeholder tokens",
        "",
        *_token_table(record),
        "## How it was converted",
        "",
        "```bash",
        f"any2text convert-seed --model {record.language_model} --output OUTPUT",
        "```",
        "",
    ]


def _loading_section(remote_code: bool) -> list[str]:
    lines = ["## Loading", "", "```python", "from transformers import AutoModelForImageTextToText, AutoProcessor", ""]
    if remote_code:
        lines += [
            "# With any2text installed (`import any2text`) no remote code is needed; without it:",
            'model = AutoModelForImageTextToText.from_pretrained("REPO", trust_remote_code=True)',
            'processor = AutoProcessor.from_pretrained("REPO", trust_remote_code=True)',
        ]
    else:
        lines += [
            'model = AutoModelForImageTextToText.from_pretrained("REPO")',
            'processor = AutoProcessor.from_pretrained("REPO")',
        ]
    return lines + ["```", ""]


def _build_kwargs(record: BuildRecord) -> dict:
    kwargs = {"language_model_path": record.language_model, "vision_tower_path": record.vision_tower}
    if record.builder == "build_llama_vision_audio":
        kwargs["audio_tower_path"] = record.audio_tower
    return {**kwargs, "seed": record.seed}
