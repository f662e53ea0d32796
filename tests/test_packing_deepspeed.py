"""The 2-process ZeRO-3 CPU run of `test_deepspeed.py`, with packed rows: ranks hold different modalities and bins."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_helpers import build_tiny_checkpoint, write_llava_data

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "examples" / "ds_z3_cpu_config.json"

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None
    or __import__("importlib").util.find_spec("deepspeed") is None,
    reason="needs deepspeed and torchrun",
)


@pytest.mark.slow
def test_zero3_two_ranks_packed(tmp_path):
    base = build_tiny_checkpoint(tmp_path / "base")
    # Rows of at most 80 tokens hold one or two samples; sequential sampling gives the ranks alternate bins, so one
    # rank's batch may hold only text while the other's holds images and audio.
    kinds = ["image", "text", "audio", "text", "both", "image", "audio", "audio", "text", "text"]
    data = write_llava_data(tmp_path / "data", kinds)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / "build" / "torch_extensions")),
    }
    command = [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", "29537",
        "-m", "any2text.train",
        "--model_name_or_path", str(base), "--output_dir", str(out), "--deepspeed", str(CPU_CONFIG),
        "--train_datasets", f"{data},", "--train_template", "LLaVA,", "--train_sampling_strategy", "sequential",
        "--packing", "True", "--max_length", "80",
        "--per_device_train_batch_size", "1", "--num_train_epochs", "2", "--learning_rate", "1e-3",
        "--freeze_language_model", "False", "--use_cpu", "True",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "Packed 10 samples into" in result.stdout + result.stderr

    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k.split(".")[1] for k in before if k.startswith("model.") and not torch.equal(before[k], after[k])}
    assert changed == {"vision_projector", "audio_projector", "language_model"}
