"""Two CPU processes under DeepSpeed ZeRO-3, the ranks' batches holding different modalities (image, audio, video,
text) at every step."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from conftest import write_llava_data


@pytest.mark.slow
def test_zero3_two_ranks_with_disjoint_modalities(torchrun, tiny_checkpoint, tmp_path):
    base = tiny_checkpoint
    # Sequential sampling, 2 samples per device: batches 0, 2, 4 go to rank 0 and batches 1, 3, 5 to rank 1. Step 1:
    # images vs audio; step 2: videos vs text only; step 3: video + audio vs images (image and video share the
    # vision tower, called once per modality). Without the zero-contribution dummies (and CLAP gathered as one ZeRO-3
    # leaf) the ranks' parameter gathers would not match and the run would hang or crash.
    kinds = ["image", "text", "audio", "text", "video", "video", "text", "text", "video", "audio", "image", "image"]
    data = write_llava_data(tmp_path / "data", kinds)
    out = tmp_path / "out"
    torchrun(
        "any2text.train",
        "--model_name_or_path", str(base), "--output_dir", str(out),
        "--train_datasets", f"{data},", "--train_template", "LLaVA,", "--train_sampling_strategy", "sequential",
        "--per_device_train_batch_size", "2", "--num_train_epochs", "2", "--learning_rate", "1e-3",
        "--freeze_language_model", "False",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
        timeout=300,
    )  # fmt: skip

    # The saved model is complete (ZeRO-3 gathered every partition) and loads with the Auto classes.
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
    changed = {k.split(".")[1] for k in before if k.startswith("model.") and not torch.equal(before[k], after[k])}
    assert changed == {"vision_projector", "audio_projector", "language_model"}
    assert all(torch.isfinite(tensor).all() for tensor in after.values())
    model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, after[name], msg=name)
    assert (out / "trainer_state.json").is_file() and (out / "processor_config.json").is_file()
