"""DPO under DeepSpeed ZeRO-3 on two CPU processes, one rank seeing image pairs and the other audio pairs."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from transformers import AutoModelForImageTextToText


def write_pairs(folder: Path, kinds: list[str]) -> Path:
    """TRL-format pairs (JSON lines, media paths relative to the file), one per entry of `kinds`, in that order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, kind in enumerate(kinds):
        row = {"id": str(i), "chosen": "yes", "rejected": "no"}
        if kind == "image":
            Image.new("RGB", (16, 16), (255, 0, 0) if i % 2 else (0, 0, 255)).save(folder / f"img{i}.png")
            row |= {"prompt": "<image>\nIs it red?", "images": [f"img{i}.png"]}
        elif kind == "audio":
            t = np.arange(8000) / 16000
            sf.write(
                folder / f"snd{i}.wav", (0.5 * np.sin(2 * np.pi * 300 * (1 + i % 2) * t)).astype(np.float32), 16000
            )
            row |= {"prompt": "<audio>\nIs it low?", "audios": [f"snd{i}.wav"]}
        else:
            row |= {"prompt": "Is it?"}
        rows.append(row)
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["lora", "ref_model"])
def test_zero3_two_ranks_mixed_modality_dpo(torchrun, tiny_checkpoint, tmp_path, reference):
    base = tiny_checkpoint
    # Sequential sampling, 2 pairs per device: rank 0 gets image (and text) pairs, rank 1 audio (and text) pairs.
    # The policy and the reference forward (adapters disabled, or a separate ZeRO-3 engine) must run the same towers
    # on both ranks, or the parameter gathers stop matching and the run hangs.
    data = write_pairs(tmp_path / "data", ["image", "text", "audio", "text", "image", "image", "audio", "audio"])
    out = tmp_path / "out"
    extra = ["--use_peft", "True"] if reference == "lora" else []
    torchrun(
        "any2text.dpo",
        "--model_name_or_path", str(base), "--output_dir", str(out),
        "--train_datasets", str(data), "--train_template", "TRL-Preference", "--train_sampling_strategy", "sequential",
        "--per_device_train_batch_size", "2", "--num_train_epochs", "1", "--learning_rate", "1e-3",
        "--freeze_language_model", "False",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True", *extra,
    )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("rewards/accuracies" in h for h in history) == 2
    if reference == "ref_model":
        model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    else:
        assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_zero3_rank_with_an_empty_batch_keeps_in_step(torchrun, tiny_checkpoint, tmp_path, stage):
    """Batch size 1, `--truncation drop`: rank 0's first batch holds only an over-long sample, rank 1's a good one.
    Rank 0 runs the stage's loss on the placeholder times zero (policy and LoRA reference forwards, metric gathers),
    so the ranks' ZeRO-3 gathers match; the step is counted as skipped, not trained on."""
    from test_stages import STAGES, write_rows

    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["long", "good", "good", "text"])
    out = tmp_path / "out"
    torchrun(
        f"any2text.{'train' if stage == 'sft' else 'dpo'}",
        "--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(out),
        "--train_datasets", str(data), "--train_template", case.template, "--train_sampling_strategy", "sequential",
        "--per_device_train_batch_size", "1", "--num_train_epochs", "1", "--max_length", "120", "--truncation", "drop",
        "--freeze_language_model", "False", "--use_peft", "True",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
        timeout=300,
    )  # fmt: skip
    results = json.loads((out / "train_results.json").read_text())
    assert results["train_empty_batches_skipped"] == 1  # rank 0's count, where the main process logs
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
