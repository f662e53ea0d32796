"""`any2text eval --benchmark reward` on the multimodal reward model (`LlamaVisionAudioForSequenceClassification`).

Pairs with images and audio in align-anything's `AA_TI2T` / `AA_TA2T` schemas, RLAIF-V's and TRL's preference formats:
every recorded reward is the stock `AutoModelForSequenceClassification.from_pretrained(rm)(**inputs).logits` of that
answer (inputs made by hand with the processor), the media-withheld (`blind_`) rewards are those of the text-only
prompt, and the accuracies are the ones the records give. Then `--skip_bad_items`, resume and `--overwrite` on the
same benchmark, and a LoRA reward adapter as `--model`.
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoProcessor

from any2text.cli import main as cli_main
from any2text.evaluation.evaluate import BadItemError, read_predictions
from any2text.training.reward import load_reward_model

RATE = 16000  # the tiny checkpoint's (cheap CLAP) sampling rate: the files need no resampling
COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0)]
PITCHES = [300.0, 1200.0, 3000.0, 5000.0]


@pytest.fixture(scope="module")
def reward_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """A reward checkpoint as `any2text reward` saves it: the stage-2 model with a (visible, random) `score` head."""
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_checkpoint)).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)
    path = tmp_path_factory.mktemp("reward") / "rm"
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(tiny_checkpoint).save_pretrained(path)
    return path


def _media(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (colour, pitch) in enumerate(zip(COLOURS, PITCHES)):
        PIL.Image.new("RGB", (16, 16), colour).save(folder / f"img{i}.png")
        t = np.arange(RATE // 2) / RATE
        sf.write(folder / f"snd{i}.wav", (0.5 * np.sin(2 * np.pi * pitch * t)).astype(np.float32), RATE)


# Per template: the rows (align-anything's / TRL's columns) and, per row, what a user would score by hand:
# (question, chosen, rejected, image files, audio files).
def _rows(template: str) -> tuple[list[dict], list[tuple[str, str, str, list[str], list[str]]]]:
    answers = [("red", "it is a deep blue"), ("green, I think", "red"), ("blue", "yellow and green"), ("yellow", "no")]
    if template == "AA_TI2T":
        rows, expected = [], []
        for i, (good, bad) in enumerate(answers):
            # `overall_response` names the preferred one of `response_1` / `response_2`.
            first, second, choice = (good, bad, 1) if i % 2 == 0 else (bad, good, 2)
            question = f"What colour is shape {i}?"
            rows.append({"question": question, "image": f"img{i}.png", "response_1": first, "response_2": second,
                         "overall_response": choice})  # fmt: skip
            expected.append((question, good, bad, [f"img{i}.png"], []))
        return rows, expected
    if template == "AA_TA2T":
        rows, expected = [], []
        for i, (good, bad) in enumerate(answers):
            first, second, choice = (bad, good, 2) if i % 2 == 0 else (good, bad, 1)
            question = "How high is this tone?" + " Tell me." * i
            rows.append({"prompt": question, "audio_path": f"snd{i}.wav", "response_1": first, "response_2": second,
                         "overall_response": choice})  # fmt: skip
            expected.append((question, good, bad, [], [f"snd{i}.wav"]))
        return rows, expected
    if template == "RLAIF-V":
        rows = [{"image": f"img{i}.png", "question": f"Colour {i}?", "chosen": good, "rejected": bad}
                for i, (good, bad) in enumerate(answers)]  # fmt: skip
        return rows, [(f"Colour {i}?", good, bad, [f"img{i}.png"], []) for i, (good, bad) in enumerate(answers)]
    # TRL-Preference: image, audio, both (image first, then audio), and a text-only row.
    media = [(["img0.png"], []), ([], ["snd1.wav"]), (["img2.png"], ["snd2.wav"]), ([], [])]
    rows, expected = [], []
    for i, ((good, bad), (images, audios)) in enumerate(zip(answers, media)):
        question = f"Describe item {i}."
        rows.append({"id": f"trl{i}", "prompt": question, "images": images, "audios": audios, "chosen": good,
                     "rejected": bad})  # fmt: skip
        expected.append((question, good, bad, images, audios))
    return rows, expected


def _hand_reward(model, processor, folder: Path, question: str, answer: str, images, audios) -> float:
    """What a user computes: the chat template of `prompt + answer`, the processor, the Auto model's logit."""
    content = [{"type": "image"}] * len(images) + [{"type": "audio"}] * len(audios)
    messages = [
        {"role": "user", "content": [*content, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    loaded_images = [PIL.Image.open(folder / name).convert("RGB") for name in images]
    loaded_audio = [sf.read(folder / name, dtype="float32")[0] for name in audios]
    inputs = processor(text=processor.apply_chat_template(messages), images=loaded_images or None,
                       audio=loaded_audio or None, sampling_rate=RATE, add_special_tokens=False,
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, 1)
    return logits[0, 0].item()


def _run(model: Path, data: Path, out: Path, *extra: str) -> dict:
    argv = ["eval", "--benchmark", "reward", "--model", str(model), "--data", str(data), "--output_dir", str(out),
            "--batch_size", "3", *extra]  # fmt: skip
    assert cli_main(argv) == 0
    return json.loads((out / "reward" / "scores.json").read_text())


@pytest.mark.parametrize("template", ["AA_TI2T", "AA_TA2T", "RLAIF-V", "TRL-Preference"])
def test_reward_benchmark_scores_image_and_audio_pairs_as_the_auto_model_does(reward_checkpoint, tmp_path, template):
    folder = tmp_path / "data"
    _media(folder)
    rows, expected = _rows(template)
    data = folder / "pairs.json"
    data.write_text(json.dumps(rows))
    # Batches of 3 then 1: padding inside a batch must not reach the score.
    result = _run(reward_checkpoint, data, tmp_path / "out", "--template", template)
    records = read_predictions(tmp_path / "out" / "reward" / "predictions.jsonl")
    assert len(records) == 4 and result["num_items"] == 4 and result["primary_score"] == "accuracy"

    model = AutoModelForSequenceClassification.from_pretrained(reward_checkpoint).eval()
    assert type(model).__name__ == "LlamaVisionAudioForSequenceClassification"
    processor = AutoProcessor.from_pretrained(reward_checkpoint)
    for record, (question, good, bad, images, audios) in zip(records, expected):
        for side, answer in (("chosen", good), ("rejected", bad)):
            with_media = _hand_reward(model, processor, folder, question, answer, images, audios)
            text_only = _hand_reward(model, processor, folder, question, answer, [], [])
            assert record[f"{side}_reward"] == pytest.approx(with_media, rel=1e-4, abs=1e-4), (record["id"], side)
            assert record[f"blind_{side}_reward"] == pytest.approx(text_only, rel=1e-4, abs=1e-4), (record["id"], side)
            if images or audios:  # the tiny random model does read the media: withholding them changes the score
                assert abs(record[f"{side}_reward"] - record[f"blind_{side}_reward"]) > 1e-3, (record["id"], side)
            else:
                assert record[f"blind_{side}_reward"] == pytest.approx(record[f"{side}_reward"], abs=1e-4)
        assert record["correct"] == (record["chosen_reward"] > record["rejected_reward"])
        assert record["blind_correct"] == (record["blind_chosen_reward"] > record["blind_rejected_reward"])

    scores = result["scores"]
    assert scores["accuracy"] == pytest.approx(np.mean([r["chosen_reward"] > r["rejected_reward"] for r in records]))
    assert scores["blind_accuracy"] == pytest.approx(
        np.mean([r["blind_chosen_reward"] > r["blind_rejected_reward"] for r in records])
    )
    assert scores["margin"] == pytest.approx(np.mean([r["chosen_reward"] - r["rejected_reward"] for r in records]))
    assert scores["blind_margin"] == pytest.approx(
        np.mean([r["blind_chosen_reward"] - r["blind_rejected_reward"] for r in records])
    )


def test_reward_benchmark_skips_bad_items_resumes_and_overwrites(reward_checkpoint, tmp_path):
    folder = tmp_path / "data"
    _media(folder)
    rows, _ = _rows("TRL-Preference")
    rows.insert(2, {**rows[0], "id": "bad", "images": ["missing.png"]})
    data = folder / "pairs.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "out"
    predictions = out / "reward" / "predictions.jsonl"
    with pytest.raises(BadItemError, match=r"Benchmark `reward`: item `bad` \(row 2\).*--skip_bad_items True"):
        _run(reward_checkpoint, data, out)
    assert [r["id"] for r in read_predictions(predictions)] == ["trl0", "trl1"]  # the good items before it are kept

    result = _run(reward_checkpoint, data, out, "--skip_bad_items", "True")
    assert result["num_items"] == 4 and result["num_skipped"] == 1
    assert result["skipped_items"][0]["id"] == "bad" and "missing.png" in result["skipped_items"][0]["error"]
    complete = read_predictions(predictions)
    assert [r["id"] for r in complete] == ["trl0", "trl1", "trl2", "trl3"]

    # A crash after the first record: the rerun scores only the missing items, to the same rewards.
    predictions.write_text(predictions.read_text().splitlines(keepends=True)[0])
    resumed = _run(reward_checkpoint, data, out, "--skip_bad_items", "True")
    again = read_predictions(predictions)
    assert again[0] == complete[0] and [r["id"] for r in again] == ["trl0", "trl1", "trl2", "trl3"]
    for old, new in zip(complete, again):  # (rescored in other batches: equal up to float noise)
        assert new["chosen_reward"] == pytest.approx(old["chosen_reward"], abs=1e-4)
        assert new["blind_rejected_reward"] == pytest.approx(old["blind_rejected_reward"], abs=1e-4)
    assert resumed["num_items"] == 4 and resumed["num_skipped"] == 1
    assert resumed["scores"]["accuracy"] == result["scores"]["accuracy"]

    # Another run's settings do not mix into the file; `--overwrite True` starts over.
    with pytest.raises(ValueError, match=r"another run \(`score_blind` True -> False\).*--overwrite True"):
        _run(reward_checkpoint, data, out, "--skip_bad_items", "True", "--score_blind", "False")
    fresh = _run(reward_checkpoint, data, out, "--skip_bad_items", "True", "--score_blind", "False",
                 "--overwrite", "True")  # fmt: skip
    records = read_predictions(predictions)
    assert [r["id"] for r in records] == ["trl0", "trl1", "trl2", "trl3"]
    assert not any(key.startswith("blind_") for r in records for key in r)
    assert (
        set(fresh["scores"]) == {"accuracy", "margin"} and fresh["scores"]["accuracy"] == result["scores"]["accuracy"]
    )
    for old, new in zip(complete, records):
        assert new["chosen_reward"] == pytest.approx(old["chosen_reward"], abs=1e-4)


def test_reward_benchmark_loads_a_lora_reward_adapter(tiny_checkpoint, tmp_path):
    """`any2text reward --use_peft True` saves an adapter (the `score` head beside it): `--model` takes that folder."""
    from peft import PeftModel

    from any2text.training.arguments import LoraArguments, ModelArguments
    from any2text.training.freezing import apply_freezing
    from any2text.training.lora import apply_lora

    torch.manual_seed(0)
    model = load_reward_model(str(tiny_checkpoint))
    model_args = ModelArguments(model_name_or_path=str(tiny_checkpoint), freeze_language_model=False)
    apply_freezing(model, model_args, use_peft=True)
    peft_model = apply_lora(model, LoraArguments(use_peft=True), model_args)
    with torch.no_grad():  # a "trained" adapter: non-zero LoRA updates and a head of its own
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(std=0.5)
    adapter = tmp_path / "rm"
    peft_model.save_pretrained(adapter)
    AutoProcessor.from_pretrained(tiny_checkpoint).save_pretrained(adapter)
    assert not (adapter / "model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    assert any(key.startswith("base_model.model.score.") for key in load_file(adapter / "adapter_model.safetensors"))

    folder = tmp_path / "data"
    _media(folder)
    rows, expected = _rows("TRL-Preference")
    data = folder / "pairs.json"
    data.write_text(json.dumps(rows))
    _run(adapter, data, tmp_path / "out", "--score_blind", "False")
    records = read_predictions(tmp_path / "out" / "reward" / "predictions.jsonl")

    reloaded = PeftModel.from_pretrained(load_reward_model(str(tiny_checkpoint)), adapter).eval()
    processor = AutoProcessor.from_pretrained(adapter)
    for record, (question, good, bad, images, audios) in zip(records, expected):
        for side, answer in (("chosen", good), ("rejected", bad)):
            by_hand = _hand_reward(reloaded, processor, folder, question, answer, images, audios)
            assert record[f"{side}_reward"] == pytest.approx(by_hand, rel=1e-4, abs=1e-4), (record["id"], side)
