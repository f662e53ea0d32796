"""The 2-process ZeRO-3 CPU run of `test_deepspeed.py`, with packed rows: ranks hold different modalities and bins."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_llava_data


@pytest.mark.slow
def test_zero3_two_ranks_packed(torchrun, tiny_checkpoint, tmp_path):
    base = tiny_checkpoint
    # Rows of at most 80 tokens hold one or two samples; sequential sampling gives the ranks alternate bins, so one
    # rank's batch may hold only text while the other's holds images and audio.
    kinds = ["image", "text", "audio", "text", "both", "image", "audio", "audio", "text", "text"]
    data = write_llava_data(tmp_path / "data", kinds)
    out = tmp_path / "out"
    output = torchrun(
        "any2text.train",
        "--model_name_or_path", str(base), "--output_dir", str(out),
        "--train_datasets", f"{data},", "--train_template", "LLaVA,", "--train_sampling_strategy", "sequential",
        "--packing", "True", "--max_length", "80",
        "--per_device_train_batch_size", "1", "--num_train_epochs", "2", "--learning_rate", "1e-3",
        "--freeze_language_model", "False",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
    )  # fmt: skip
    assert "Packed 10 samples into" in output

    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k.split(".")[1] for k in before if k.startswith("model.") and not torch.equal(before[k], after[k])}
    assert changed == {"vision_projector", "audio_projector", "language_model"}
