"""The reward stage under DeepSpeed ZeRO-3 on two CPU processes, one rank seeing image pairs and the other audio."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from test_dpo_deepspeed import write_pairs


@pytest.mark.slow
def test_zero3_two_ranks_mixed_modality_reward_model(torchrun, tiny_checkpoint, tmp_path):
    # Sequential sampling, 2 pairs per device: rank 0 gets image (and text) pairs, rank 1 audio (and text) pairs; both
    # must run the same towers every step or the parameter gathers stop matching and the run hangs.
    data = write_pairs(tmp_path / "data", ["image", "text", "audio", "text", "image", "image", "audio", "audio"])
    out = tmp_path / "out"
    torchrun(
        "any2text.reward",
        "--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(out),
        "--train_datasets", str(data), "--train_template", "TRL-Preference", "--train_sampling_strategy", "sequential",
        "--per_device_train_batch_size", "2", "--num_train_epochs", "1", "--learning_rate", "1e-3",
        "--freeze_language_model", "False",
        "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True",
    )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("accuracy" in h and "max_reward" in h for h in history) == 2
    # Saved from ZeRO-3 shards: every weight back under its own name, the trained `score` head included.
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.score.weight.abs().sum() > 0
