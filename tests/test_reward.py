"""The reward stage: TRL's loss and metrics, rewards of a pair row, the `margin` column, LoRA, and the entry point."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoProcessor

from any2text.data.collator import EMPTY_BATCH_KEY, MultimodalCollator
from any2text.data.preference import PreferenceMessages, pair_rows
from any2text.data.templates import get_template
from any2text.training.reward import (
    REWARD,
    RewardCollator,
    RewardConfig,
    RewardTrainer,
    answer_end_columns,
    load_reward_model,
    pair_rewards,
    parse_args,
    reward_loss,
    reward_metrics,
)
from any2text.training.stage import build_stage
from conftest import REPO

RATE = 16000


def _tone(freq: float = 440.0, seconds: float = 0.5) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def _pairs() -> list[PreferenceMessages]:
    template = get_template("TRL-Preference")
    rows = [
        {"prompt": "What colour?", "images": [Image.new("RGB", (16, 16), (255, 0, 0))], "chosen": "red it is",
         "rejected": "blue"},
        {"prompt": "Pitch?", "audios": [{"array": _tone(), "sampling_rate": RATE}], "chosen": "low",
         "rejected": "high and loud"},
        {"prompt": "Hello there, how are you today?", "chosen": "fine", "rejected": "bad, thanks for asking"},
        {"prompt": "Both?", "images": [Image.new("RGB", (16, 16), (0, 0, 255))],
         "audios": [{"array": _tone(3000.0, 0.3), "sampling_rate": RATE}], "chosen": "yes", "rejected": "no"},
    ]  # fmt: skip
    return [template(row) for row in rows]


@pytest.fixture(scope="module")
def reward_model(tiny_checkpoint):
    model = load_reward_model(str(tiny_checkpoint)).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)
    return model, AutoProcessor.from_pretrained(tiny_checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# Loss and metrics


def test_reward_loss_and_metrics_equal_hand_computation():
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    margin = torch.tensor([0.5, 0.0, 1.0])

    def logsig(x):
        return -math.log1p(math.exp(-x))

    plain = -(logsig(1.0) + logsig(-1.0) + logsig(-0.5)) / 3
    torch.testing.assert_close(reward_loss(chosen, rejected), torch.tensor(plain))
    with_margin = -(logsig(0.5) + logsig(-1.0) + logsig(-1.5)) / 3
    torch.testing.assert_close(reward_loss(chosen, rejected, margin), torch.tensor(with_margin))
    centred = with_margin + 0.01 * (1.0**2 + 0.0**2 + 4.5**2) / 3
    torch.testing.assert_close(reward_loss(chosen, rejected, margin, 0.01), torch.tensor(centred))

    metrics = {key: value.item() for key, value in reward_metrics(chosen, rejected).items()}
    assert metrics == pytest.approx(
        {
            "accuracy": 1 / 3,
            "margin": (1.0 - 1.0 - 0.5) / 3,
            "min_reward": -0.5,
            "mean_reward": 5.5 / 6,
            "max_reward": 2.5,
        }  # fmt: skip
    )


def test_reward_config_keeps_trl_names_and_data_flags(tiny_checkpoint, tmp_path):
    _, data_args, _, args = parse_args(["--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(tmp_path),
                             "--train_datasets", "x.json", "--train_template", "RLAIF-V", "--max_length", "512",
                             "--center_rewards_coefficient", "0.01", "--packing", "True", "--use_cpu", "True"])  # fmt: skip
    assert (args.max_length, args.center_rewards_coefficient, args.packing, args.disable_dropout) == (
        512,
        0.01,
        True,
        True,
    )
    assert data_args.dataset_specs("train")[0].template == "RLAIF-V"
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--center_rewards_coefficient", "-1"])


def test_any2text_reward_command(capsys):
    from any2text.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reward", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--center_rewards_coefficient", "--train_template", "--use_peft", "--packing", "--learning_rate"):
        assert flag in help_text, flag


# ---------------------------------------------------------------------------------------------------------------------
# Rewards of one pair row


def _alone(model, processor, conversation) -> torch.Tensor:
    single = MultimodalCollator(processor)([{"messages": conversation}])
    single.pop("labels")
    with torch.no_grad():
        return model(**single).logits[0, 0]


@pytest.mark.parametrize("layout", ["padded", "padding_free", "packed"])
def test_pair_rewards_from_one_row_equal_two_separate_sequences(reward_model, layout):
    model, processor = reward_model
    pairs = _pairs()
    samples = [{"messages": pair, "index": i} for i, pair in enumerate(pairs)]
    if layout == "padded":
        batch = RewardCollator(processor)(samples)
    elif layout == "padding_free":
        batch = RewardCollator(processor, padding_free=True)(samples)
    else:  # two packed rows (bins), as `PackedDataset` items give them
        batch = RewardCollator(processor, padding_free=True)([{"packed": samples[:1]}, {"packed": samples[1:]}])
    encoded = {"vision": 0, "audio": 0}
    hooks = [
        tower.register_forward_pre_hook(lambda m, a, k, name=name: encoded.__setitem__(name, encoded[name] + (a[0] if a else k["input_features"]).shape[0]), with_kwargs=True)
        for name, tower in (("vision", model.model.vision_tower), ("audio", model.model.audio_tower))
    ]  # fmt: skip
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, batch)
    for hook in hooks:
        hook.remove()
    assert encoded == {"vision": 2, "audio": 2}  # each pair's image and clip once, not once per answer
    assert chosen.shape == rejected.shape == (4,)
    for i, pair in enumerate(pairs):
        torch.testing.assert_close(chosen[i], _alone(model, processor, list(pair)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            rejected[i], _alone(model, processor, [*pair.prompt, *pair.rejected]), rtol=1e-4, atol=1e-4
        )
    assert not torch.equal(chosen, rejected)


def test_answer_end_columns_read_the_pair_batch_and_skip_padding():
    def pair(prompt, chosen, rejected):
        chosen, rejected = torch.tensor(chosen), torch.tensor(rejected)
        return {"prompt": {"input_ids": torch.tensor(prompt)}, "chosen_ids": chosen, "rejected_ids": rejected,
                "chosen_labels": chosen, "rejected_labels": rejected, "media": {}}  # fmt: skip

    # Row 0: prompt (0, 1), chosen (2, 3), rejected (4-6); row 1 packed: two pairs, each [prompt | chosen | rejected].
    rows = [[pair([5, 6], [7, 8], [9, 9, 9])], [pair([5], [7], [9]), pair([5, 6], [7], [9, 9])]]
    batch = pair_rows(rows, pad_token_id=0)
    got = answer_end_columns(batch, pad_token_id=0)
    assert [t.tolist() for t in got] == [[0, 1, 1], [3, 1, 5], [6, 2, 7]]
    # A pad token ending an answer (pad = eos) is not read, as `AutoModelForSequenceClassification` does; a rejected
    # answer of pad tokens only is read at its own end, never inside the chosen answer.
    rows[0][0] = pair([5, 6], [7, 0], [0, 0, 0])
    got = answer_end_columns(pair_rows(rows, pad_token_id=0), pad_token_id=0)
    assert [t.tolist() for t in got] == [[0, 1, 1], [2, 1, 5], [6, 2, 7]]


def test_margin_column_reaches_the_batch_per_pair(reward_model):
    _, processor = reward_model
    pairs = _pairs()[:3]
    samples = [
        {"messages": pair, "index": i, "source": {"dataset": "d", "index": 10 + i}} for i, pair in enumerate(pairs)
    ]
    collator = RewardCollator(processor, margins={("d", 10): 0.5, ("d", 12): 2.0})
    assert collator(samples)["margin"].tolist() == [0.5, 0.0, 2.0]
    packed = RewardCollator(processor, padding_free=True, margins={("d", 11): 1.5})([{"packed": samples[1:]}])
    assert packed["margin"].tolist() == [1.5, 0.0]


def test_a_batch_without_a_real_pair_is_a_zero_loss_that_still_runs_backward(reward_model, tmp_path):
    """What a rank whose pairs were all dropped runs beside the others (DeepSpeed / several processes), and what
    evaluation does with such a batch; the metrics count real pairs only."""
    model, processor = reward_model
    collator = RewardCollator(processor)
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = RewardTrainer(model=model, args=args, data_collator=collator)
    empty = collator.empty_batch()
    assert trainer.prediction_step(model, empty, prediction_loss_only=True) == (None, None, None)
    empty.pop(EMPTY_BATCH_KEY)
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, empty)
    loss.backward()
    assert loss.item() == 0.0 and model.score.weight.grad is not None and not model.score.weight.grad.any()
    assert not any(trainer._metrics["eval"].values())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        trainer.compute_loss(model, collator([{"messages": pair, "index": i} for i, pair in enumerate(_pairs()[:2])]))
    assert trainer._metrics["eval"]["accuracy"][0] in (0.0, 0.5, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Training: every preference template, mixed media, the entry point, LoRA


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory) -> Path:
    """One small dataset per preference template: AA_TI2T (image), AA_TA2T (audio), RLAIF-V (image), TRL-Preference
    (text, with a `margin` column)."""
    root = tmp_path_factory.mktemp("reward_data")
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for name, rgb in colours.items():
        Image.new("RGB", (16, 16), rgb).save(root / f"{name}.png")
    for name, freq in (("low", 300.0), ("high", 5000.0)):
        sf.write(root / f"{name}.wav", _tone(freq), RATE)
    files = {
        "ti2t.json": [{"question": "What colour?", "image": f"{c}.png", "response_1": c, "response_2": o,
                       "overall_response": 1} for c, o in (("red", "blue"), ("blue", "red"))],
        "ta2t.json": [{"prompt": "What pitch?", "audio_path": f"{p}.wav", "response_1": o, "response_2": p,
                       "overall_response": 2} for p, o in (("low", "high"), ("high", "low"))],
        "rlaif.json": [{"image": f"{c}.png", "question": "Colour?", "chosen": c, "rejected": o}
                       for c, o in (("red", "blue"), ("blue", "red"))],
        "trl.json": [{"prompt": "Two plus two?", "chosen": "four", "rejected": "five", "margin": 1.0},
                     {"prompt": "Sky colour?", "chosen": "blue", "rejected": "green", "margin": 0.5}],
    }  # fmt: skip
    for name, rows in files.items():
        (root / name).write_text(json.dumps(rows))
    return root


def _reward_args(checkpoint: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(checkpoint), "--output_dir", str(output),
        "--train_datasets", ",".join(str(data / f) for f in ("ti2t.json", "ta2t.json", "rlaif.json", "trl.json")),
        "--train_template", "AA_TI2T,AA_TA2T,RLAIF-V,TRL-Preference",
        "--eval_datasets", str(data / "trl.json"), "--eval_template", "TRL-Preference", "--eval_split", "train",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--logging_steps", "1",
        "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True", "--seed", "0",
        "--freeze_language_model", "False", "--center_rewards_coefficient", "0.01", *extra,
    ]  # fmt: skip


def test_python_m_any2text_reward_trains_saves_and_scores(tiny_checkpoint, preference_data, tmp_path):
    out = tmp_path / "rm"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "any2text.reward", *_reward_args(tiny_checkpoint, preference_data, out,
                                                                "--max_steps", "2", "--save_strategy", "no")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "newly initialised" in result.stdout + result.stderr
    for name in ("config.json", "model.safetensors", "processor_config.json", "trainer_state.json", "README.md",
                 "train_results.json", "eval_results.json"):  # fmt: skip
        assert (out / name).exists(), name
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    assert len(train_logs) == 2 and all(math.isfinite(h["loss"]) for h in train_logs)
    for key in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert all(key in h for h in train_logs), key
        assert f"eval_{key}" in json.loads((out / "eval_results.json").read_text()), key
    assert all(h["min_reward"] <= h["mean_reward"] <= h["max_reward"] for h in train_logs)

    # The saved reward model (its `score` head, no `lm_head`) scores one answer with the stock Auto class.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    saved = load_file(out / "model.safetensors")
    assert "score.weight" in saved and "lm_head.weight" not in saved
    assert "## Reward model" in (out / "README.md").read_text()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]  # fmt: skip
    image = Image.open(preference_data / "red.png").convert("RGB")
    inputs = processor(text=processor.apply_chat_template(messages), images=[image], add_special_tokens=False,
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, 1) and torch.isfinite(logits).all()
    # ... and it is the reward the stage trained: that answer as the chosen one of an AA_TI2T pair.
    pair = get_template("AA_TI2T")({"question": "What colour?", "image": image, "response_1": "red",
                                    "response_2": "blue", "overall_response": 1})  # fmt: skip
    with torch.no_grad():
        chosen, _ = pair_rewards(model, RewardCollator(processor)([{"messages": pair, "index": 0}]))
    torch.testing.assert_close(chosen, logits[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("flag", [None, "--packing"])
def test_lora_reward_model_trains_the_head_and_saves_it_beside_the_adapter(
    tiny_checkpoint, preference_data, tmp_path, flag
):
    from peft import PeftModel

    extra = ["--packing", "True", "--max_length", "600"] if flag else []
    groups = parse_args(_reward_args(tiny_checkpoint, preference_data, tmp_path / "out", "--use_peft", "True",
                                     "--max_steps", "2", "--save_strategy", "no", *extra))  # fmt: skip
    trainer = build_stage(REWARD, *groups)
    named = dict(trainer.model.named_parameters())
    assert any("score" in name and p.requires_grad for name, p in named.items())
    assert not any(p.requires_grad for name, p in named.items() if "tower" in name)
    if flag:
        assert len(trainer.train_dataset) < 8  # pairs share packed rows
    # The TRL-Preference rows' `margin` column reaches the batches, one value per pair (0 for the other templates).
    margins = [m for batch in trainer.get_train_dataloader() for m in batch["margin"].tolist()]
    assert len(margins) == 8 and sorted(m for m in margins if m) == [0.5, 1.0]
    score_before = trainer.model.get_base_model().score.weight.detach().clone()
    trainer.train()
    trainer.save_model()
    assert not torch.equal(trainer.model.get_base_model().score.weight, score_before)
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("score" in key for key in saved) and any("lora_" in key for key in saved)

    # Base + adapter (the score head included) reproduces the trained model's rewards.
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    batch.pop("row_ids", None)
    trainer.model.eval()
    with torch.no_grad():
        expected = pair_rewards(trainer.model, batch)
        reloaded = PeftModel.from_pretrained(load_reward_model(str(tiny_checkpoint)), tmp_path / "out").eval()
        got = pair_rewards(reloaded, batch)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_reward_model_trains_from_a_stock_llava_checkpoint(tiny_llava_checkpoint, preference_data, tmp_path):
    out = tmp_path / "rm"
    files = ("ti2t.json", "rlaif.json", "trl.json")  # image and text pairs: Llava has no audio encoder
    args = _reward_args(tiny_llava_checkpoint, preference_data, out, "--max_steps", "1", "--save_strategy", "no")
    args[args.index("--train_datasets") + 1] = ",".join(str(preference_data / f) for f in files)
    args[args.index("--train_template") + 1] = "AA_TI2T,RLAIF-V,TRL-Preference"
    trainer = build_stage(REWARD, *parse_args(args))
    trainer.train()
    trainer.save_model()
    # Saved under LlamaVisionAudio's own names (not Llava's), so the stock Auto class loads every weight.
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    assert model.config.audio_config is None and model.config.vision_config is not None
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    batch.pop("row_ids", None)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(pair_rewards(model, batch), pair_rewards(trainer.model, batch))


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_video_pair_rewards_equal_two_separate_sequences(tiny_checkpoint, tmp_path, layout):
    checkpoint = tiny_checkpoint  # built as the builders build: `<video>` and `video_token_id` included
    model = load_reward_model(str(checkpoint)).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)
    processor = AutoProcessor.from_pretrained(checkpoint)
    clip = np.stack([np.full((16, 16, 3), 25 * i, np.uint8) for i in range(8)])  # the processor's 8 frames
    template = get_template("TRL-Preference")
    pairs = [
        template({"prompt": "Brighter?", "videos": [clip], "chosen": "yes", "rejected": "no it gets darker"}),
        template({"prompt": "<video> or <image>?", "videos": [clip[::-1].copy()], "chosen": "the video",
                  "images": [Image.new("RGB", (16, 16), (0, 255, 0))], "rejected": "the image"}),
    ]  # fmt: skip
    samples = [{"messages": pair, "index": i} for i, pair in enumerate(pairs)]
    if layout == "padded":
        batch = RewardCollator(processor)(samples)
    else:
        batch = RewardCollator(processor, padding_free=True)([{"packed": samples[:1]}, {"packed": samples[1:]}])
    frames = []
    model.model.vision_tower.register_forward_pre_hook(lambda module, args: frames.append(args[0].shape[0]))
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, batch)
    assert sum(frames) == 8 + 8 + 1  # each pair's video (and image) once, not once per answer
    for i, pair in enumerate(pairs):
        torch.testing.assert_close(chosen[i], _alone(model, processor, list(pair)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            rejected[i], _alone(model, processor, [*pair.prompt, *pair.rejected]), rtol=1e-4, atol=1e-4
        )
