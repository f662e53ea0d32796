"""The training entry point end to end on tiny checkpoints: arguments, stages, LoRA + merge, stock Llava, resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from any2text.training.merge import merge_lora, merge_lora_main
from any2text.training.train import main, parse_args
from conftest import train_args, write_llava_data


@pytest.fixture(scope="module")
def workdir(train_workdir) -> Path:
    return train_workdir


def common_args(root: Path, **overrides) -> list[str]:
    return train_args(root, **overrides)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def changed_prefixes(before: dict, after: dict, prefixes: tuple[str, ...]) -> dict[str, bool]:
    """For each component prefix: did any of its tensors change?"""
    assert before.keys() == after.keys()
    return {
        prefix: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))
        for prefix in prefixes
    }


PARTS = ("model.vision_tower.", "model.audio_tower.", "model.vision_projector.", "model.audio_projector.")
LM = ("model.language_model.", "lm_head.")


def losses(folder: Path) -> list[float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


# ---------------------------------------------------------------------------------------------------------------------
# Arguments


def test_unknown_or_abbreviated_flag_is_an_error(workdir):
    base = ["--model_name_or_path", str(workdir / "base"), "--output_dir", str(workdir / "x")]
    with pytest.raises(ValueError, match="did you mean `--freeze_language_model`"):
        parse_args(base + ["--freeze_languge_model", "False"])
    with pytest.raises(ValueError, match="--lora_alph"):  # an abbreviation of `--lora_alpha` is not accepted either
        parse_args(base + ["--lora_alph", "8"])


def test_config_file_is_the_single_argument(workdir, tmp_path):
    config = {
        "model_name_or_path": str(workdir / "base"),
        "output_dir": str(tmp_path / "out"),
        "train_datasets": "a.json,b.json,",
        "train_template": "LLAVA,A-OKVQA,",
        "freeze_mm_proj": True,
        "freeze_audio_proj": False,
        "use_peft": True,
        "lora_target_modules": ["q_proj", "v_proj"],
        "bf16": False,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    model_args, data_args, lora_args, training_args = parse_args([str(path)])
    assert model_args.vision_proj_frozen and not model_args.audio_proj_frozen
    assert data_args.train_template == "LLAVA,A-OKVQA,"
    assert lora_args.lora_target_modules == ["q_proj", "v_proj"]
    assert training_args.output_dir == str(tmp_path / "out")
    (tmp_path / "bad.json").write_text(json.dumps({**config, "lora_rank": 8}))
    with pytest.raises(ValueError, match="lora_rank"):
        parse_args([str(tmp_path / "bad.json")])


def test_datasets_without_template_is_an_error(workdir):
    with pytest.raises(ValueError, match="--train_template"):
        parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--train_datasets", "a.json"])


# ---------------------------------------------------------------------------------------------------------------------
# Stages


@pytest.mark.slow
def test_stage1_then_stage2_from_its_output(stage1_output, tmp_path):
    workdir = stage1_output.workdir
    base, stage1, stage2 = workdir / "base", stage1_output.path, tmp_path / "stage2"
    table = next(message for message in stage1_output.log if message.startswith("Parameters per component"))
    rows = {line.split()[0]: line.split()[1:3] for line in table.splitlines()[2:]}
    assert rows["vision_tower"][0] == "0" and rows["language_model"][0] == "0"
    assert rows["vision_projector"][0] == rows["vision_projector"][1] != "0"
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "trainer_state.json"):
        assert (stage1 / name).is_file(), name
    changed = changed_prefixes(weights(base), weights(stage1), PARTS + LM)
    assert changed == {
        "model.vision_tower.": False,
        "model.audio_tower.": False,
        "model.vision_projector.": True,
        "model.audio_projector.": True,
        "model.language_model.": False,
        "lm_head.": False,
    }

    main(
        ["--model_name_or_path", str(stage1), "--output_dir", str(stage2), "--freeze_language_model", "False"]
        + common_args(workdir)
    )
    changed = changed_prefixes(weights(stage1), weights(stage2), PARTS + LM)
    assert changed == {
        "model.vision_tower.": False,
        "model.audio_tower.": False,
        "model.vision_projector.": True,
        "model.audio_projector.": True,
        "model.language_model.": True,
        "lm_head.": True,
    }
    for folder in (stage1, stage2):
        history = losses(folder)
        assert len(history) == 6
        assert sum(history[-2:]) < sum(history[:2]), (folder.name, history)
    assert losses(stage2)[-1] < losses(stage1)[-1]
    # The result loads with the Auto classes.
    assert AutoModelForImageTextToText.from_pretrained(stage2).config.model_type == "llama_vision_audio"
    assert AutoProcessor.from_pretrained(stage2).audio_seq_length == 16
    # The model card says where the stage started, what trained and on what, and keeps stage 1's card below.
    card = (stage2 / "README.md").read_text()
    assert f"base_model:\n- {stage1}" in card
    trained = card.split("## What trained")[1].split("## Data")[0]
    assert "language_model" in trained and "vision_projector" in trained
    assert str(workdir / "data" / "data.json") in card
    assert "## Starting checkpoint" in card and "training loss:" in card
    assert f"base_model:\n- {base}" in (stage1 / "README.md").read_text()


@pytest.mark.slow
def test_per_modality_projector_flags(workdir, tmp_path):
    out = tmp_path / "vision-proj-only"
    main(
        ["--model_name_or_path", str(workdir / "base"), "--output_dir", str(out), "--freeze_audio_proj", "True"]
        + common_args(workdir, num_train_epochs="1", max_steps="2")
    )
    changed = changed_prefixes(weights(workdir / "base"), weights(out), PARTS + LM)
    assert [prefix for prefix, was_changed in changed.items() if was_changed] == ["model.vision_projector."]


@pytest.mark.slow
def test_lora_stage2_and_merge(workdir, tmp_path):
    base, lora_out, merged = workdir / "base", tmp_path / "lora", tmp_path / "merged"
    main(
        [
            "--model_name_or_path", str(base), "--output_dir", str(lora_out), "--freeze_language_model", "False",
            "--use_peft", "True", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        ]
        + common_args(workdir, max_steps="3")
    )  # fmt: skip
    adapter = load_file(str(lora_out / "adapter_model.safetensors"))
    lora_keys = [key for key in adapter if "lora_" in key]
    assert lora_keys and all(".language_model." in key for key in lora_keys)
    assert all(key.rsplit(".", 3)[-3] in ("q_proj", "v_proj") for key in lora_keys)
    assert not any("tower" in key for key in adapter), "no LoRA or saved module inside an encoder"
    # The projectors are trained fully and saved beside the adapter.
    assert any("vision_projector" in key for key in adapter) and any("audio_projector" in key for key in adapter)

    assert merge_lora_main(["--model", str(lora_out), "--output", str(merged)]) == 0
    model = AutoModelForImageTextToText.from_pretrained(merged)
    assert not any("lora" in name for name, _ in model.named_parameters())
    changed = changed_prefixes(weights(base), weights(merged), PARTS + LM + ("model.language_model.embed_tokens.",))
    assert changed == {
        "model.vision_tower.": False,
        "model.audio_tower.": False,
        "model.vision_projector.": True,
        "model.audio_projector.": True,
        "model.language_model.": True,  # the merged q_proj / v_proj
        "lm_head.": False,
        "model.language_model.embed_tokens.": False,
    }
    before, after = weights(base), weights(merged)
    lm_changed = {k.split(".")[-2] for k in before if k.startswith(LM[0]) and not torch.equal(before[k], after[k])}
    assert lm_changed == {"q_proj", "v_proj"}
    AutoProcessor.from_pretrained(merged)
    with pytest.raises(ValueError, match="not a LoRA output"):
        merge_lora(str(base), str(tmp_path / "nope"))


@pytest.mark.slow
def test_lora_with_frozen_language_model_is_an_error(workdir, tmp_path):
    with pytest.raises(ValueError, match="--freeze_language_model False"):
        main(
            ["--model_name_or_path", str(workdir / "base"), "--output_dir", str(tmp_path), "--use_peft", "True"]
            + common_args(workdir, max_steps="1")
        )


@pytest.mark.slow
def test_stock_llava_checkpoint_trains(workdir, tiny_llava_checkpoint, tmp_path):
    base, out = tiny_llava_checkpoint, tmp_path / "llava-stage1"
    data = write_llava_data(tmp_path / "images", ["image", "text", "image", "image"] * 2)
    main(
        ["--model_name_or_path", str(base), "--output_dir", str(out)]
        + common_args(workdir, train_datasets=str(data), max_steps="2")
    )
    before, after = weights(base), weights(out)
    changed = {
        k.split(".")[1] if k.startswith("model.") else k.split(".")[0]
        for k in before
        if not torch.equal(before[k], after[k])
    }
    assert changed == {"multi_modal_projector"}
    assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == "llava"


@pytest.mark.slow
def test_group_by_length_checks_lengths_before_training(workdir, tmp_path):
    # Named by dataset row (and id), before the first step.
    with pytest.raises(
        ValueError, match=r"Row 0 of dataset .*data\.json.* \(id `0`.*more than `max_length=20`.*truncation"
    ):
        main(
            ["--model_name_or_path", str(workdir / "base"), "--output_dir", str(tmp_path)]
            + common_args(workdir, train_sampling_strategy="group_by_length", max_length="20")
        )


# ---------------------------------------------------------------------------------------------------------------------
# Resume


@pytest.mark.slow
def test_resume_from_checkpoint_matches_an_uninterrupted_run(workdir, tmp_path):
    args = common_args(workdir, max_steps="4", per_device_train_batch_size="2", save_strategy="steps", save_steps="2")
    stage = ["--model_name_or_path", str(workdir / "base"), "--freeze_language_model", "False"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(stage + ["--output_dir", str(full)] + args)
    # "Stopped" after step 2: only the step-2 checkpoint exists; resume it to the end.
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    main(stage + ["--output_dir", str(resumed), "--resume_from_checkpoint", "True"] + args)
    a, b = weights(full), weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert losses(full)[2:] == pytest.approx(losses(resumed)[2:], rel=1e-5)
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 4
