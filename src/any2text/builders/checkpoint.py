"""Save a built checkpoint (weights, processor, model card, optionally the modeling code) and upload it to the Hub."""

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCardData
from transformers import PreTrainedModel, ProcessorMixin
from transformers.utils import logging

from ..models.llama_vision_audio import (
    LlamaVisionAudioConfig,
    LlamaVisionAudioForConditionalGeneration,
    LlamaVisionAudioForSequenceClassification,
    LlamaVisionAudioProcessor,
)
from ..models.llama_vision_audio.feature_extraction_llama_vision_audio import LlamaVisionAudioFeatureExtractor

logger = logging.get_logger(__name__)


@dataclass
class BuildRecord:
    """What a checkpoint was built from; its model card says so.

    `builder` is the function that made it; `card_sections` writes the card's body (a converted checkpoint's record,
    `seed.ConversionRecord`, writes its own).
    """

    builder: str
    language_model: str
    vision_tower: str | None = None
    audio_tower: str | None = None
    added_tokens: dict[str, int] = field(default_factory=dict)
    num_old_tokens: int = 0
    seed: int = 0

    @property
    def base_models(self) -> list[str]:
        return [b for b in (self.language_model, self.vision_tower, self.audio_tower) if b]

    def card_sections(self, model: PreTrainedModel) -> list[str]:
        return _built_section(model, self)


_AUTO_CLASSES = (
    (LlamaVisionAudioConfig, "AutoConfig"),
    (LlamaVisionAudioForConditionalGeneration, "AutoModelForImageTextToText"),
    (LlamaVisionAudioForSequenceClassification, "AutoModelForSequenceClassification"),
    (LlamaVisionAudioProcessor, "AutoProcessor"),
    (LlamaVisionAudioFeatureExtractor, "AutoFeatureExtractor"),
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


def save_checkpoint(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    save_path: str | Path,
    record: BuildRecord,
    max_shard_size: str | int = "5GB",
    remote_code: bool = True,
) -> Path:
    """Write model (sharded safetensors), processor and README.md to `save_path`.

    `remote_code=True` ships the model folder's code through `enable_remote_code`, which stays on for the process
    (transformers' `register_for_auto_class` is class-level and has no public undo).
    """
    save_path = Path(save_path)
    if remote_code:
        enable_remote_code()
    elif type(model).is_remote_code():
        raise ValueError(
            f"`remote_code=False`, but this process already registered `{type(model).__name__}` for remote code "
            "(`enable_remote_code`), so its code would be saved anyway. Pass `remote_code=True`, or save from a "
            "process that did not enable it."
        )
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
    after_save: Callable[[Path], None] | None = None,
) -> None:
    """The last steps of every builder: save to `save_path` and/or upload to the Hub repo `push_to_hub`.

    `after_save(folder)` rewrites the saved folder before it is uploaded; uploading without `save_path` writes the
    folder to a temporary directory first, so the Hub gets exactly what a local save would hold.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_path if save_path is not None else (tmp if push_to_hub is not None else None)
        if folder is not None:
            logger.info(f"[4/5] Saving to {folder}")
            save_checkpoint(model, processor, folder, record, max_shard_size=max_shard_size, remote_code=remote_code)
            if after_save is not None:
                after_save(Path(folder))
        if push_to_hub is not None:
            logger.info(f"[5/5] Uploading to the Hub repo {push_to_hub}")
            push_checkpoint(
                model, processor, push_to_hub, record, save_path=folder, remote_code=remote_code, private=private,
                token=token,
            )  # fmt: skip
    logger.info("Done.")


def card_front_matter(base_models: Sequence[str], model_type: str, library_name: str = "transformers") -> str:
    """The YAML block that opens a model card (the Hub's metadata), written by `huggingface_hub.ModelCardData`."""
    data = ModelCardData(
        library_name=library_name,
        pipeline_tag="image-text-to-text",
        base_model=list(base_models),
        tags=["any2text", model_type],
    )
    return f"---\n{data.to_yaml()}\n---\n\n"


def model_card(model: PreTrainedModel, record: BuildRecord, remote_code: bool) -> str:
    """A README.md: base model, encoders, added tokens, initialisation and how to load."""
    body = record.card_sections(model) + _loading_section(remote_code)
    return card_front_matter(record.base_models, model.config.model_type) + "\n".join(body)


def token_table(record: BuildRecord) -> list[str]:
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
        *token_table(record),
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


def _build_kwargs(record: BuildRecord) -> dict[str, Any]:
    """The arguments that rebuild the checkpoint (an absent encoder is the builders' default, `None`)."""
    paths = {"language_model_path": record.language_model}
    paths |= {"vision_tower_path": record.vision_tower} if record.vision_tower else {}
    paths |= {"audio_tower_path": record.audio_tower} if record.audio_tower else {}
    return {**paths, "seed": record.seed}
