"""The evaluation runner end to end on a tiny stock Llava checkpoint and real-schema fixture datasets."""

import io
import json
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import soundfile
import torch
from transformers import BatchFeature

import any2text.evaluation.evaluate as runner
import any2text.evaluation.predictors as predictors
from any2text.evaluation.evaluate import EvalArguments, main, read_predictions, run_evaluation, score_predictions
from any2text.inference import generate_batch
from any2text.models.llama_vision_audio.processing_llama_vision_audio import DEFAULT_CHAT_TEMPLATE
from conftest import tiny_models


@pytest.fixture(scope="module")
def tiny_llava(tiny_llava_checkpoint):
    """A 2-layer Llava (8x8 images, 2x2 patches, hidden 32) saved with its processor, like a built checkpoint."""
    return tiny_llava_checkpoint


def _image(seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (10 + seed, 12, 3), dtype=np.uint8))


def _write_mme(path: Path, image_of) -> Path:
    """Six MME rows (three images, two questions each) in lmms-lab/MME's schema; `image_of(row, i)` gives row's image."""
    rows = []
    for i, category in enumerate(["existence", "count", "code_reasoning"]):
        for answer in ("Yes", "No"):
            rows.append(
                {
                    "question_id": f"{category}/{i:04d}.png",
                    "image": image_of(len(rows), i),
                    "question": f"Is there {'a' * (i + 1)} thing? Please answer yes or no.",
                    "answer": answer,
                    "category": category,
                }
            )
    features = datasets.Features(
        {
            "question_id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "category": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


@pytest.fixture
def mme_parquet(tmp_path):
    """Six MME rows (three images, two questions each) in lmms-lab/MME's schema."""
    return _write_mme(tmp_path / "mme.parquet", lambda row, i: _image(i))


def _argv(model, data, out, *extra):
    return ["--model", str(model), "--benchmark", "mme", "--data", str(data), "--output_dir", str(out)] + list(extra)


def test_generate_batch_left_pads_and_matches_one_by_one(tiny_llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava)
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": _image(i)}, {"type": "text", "text": "q " * (i * 3)}],
            }
        ]
        for i in range(3)
    ]
    batched = generate_batch(model, processor, conversations, max_new_tokens=4, batch_size=3)
    single = [generate_batch(model, processor, [c], max_new_tokens=4, batch_size=1)[0] for c in conversations]
    assert batched == single
    assert processor.tokenizer.padding_side == "right"  # left padding is asked per call, not set on the tokenizer


def test_runner_writes_predictions_and_scores(tiny_llava, mme_parquet, tmp_path):
    out = tmp_path / "out"
    result = main(_argv(tiny_llava, mme_parquet, out, "--batch_size", "4", "--max_new_tokens", "3"))

    bench_dir = out / "mme"
    records = read_predictions(bench_dir / "predictions.jsonl")
    assert [r["id"] for r in records] == [str(i) for i in range(6)]
    assert set(records[0]) == {"id", "prompt", "prediction", "references", "meta"}
    assert records[0]["prompt"] == "Is there a thing?\nAnswer the question using a single word or phrase."
    assert records[1]["references"] == ["No"]
    assert records[2]["meta"] == {"question_id": "count/0001.png", "category": "count"}

    scores = json.loads((bench_dir / "scores.json").read_text())
    assert scores == json.loads(json.dumps(result))
    assert scores["num_items"] == 6 and scores["metric"] == "mme"
    # Scores are a pure function of predictions.jsonl.
    assert scores["scores"] == pytest.approx(score_predictions("mme", records))
    assert set(scores["scores"]) >= {"perception", "cognition", "total", "existence/acc_plus"}
    markdown = (bench_dir / "scores.md").read_text()
    assert markdown.startswith("# mme (mme, 6 items)") and "| total |" in markdown


def test_runner_resumes_after_a_crash(tiny_llava, mme_parquet, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def crash_on_second_batch(model, processor, batch_of_messages, **kwargs):
        calls.append(len(batch_of_messages))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return generate_batch(model, processor, batch_of_messages, **kwargs)

    monkeypatch.setattr(predictors, "generate_batch", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(_argv(tiny_llava, mme_parquet, out, "--batch_size", "2", "--max_new_tokens", "3"))
    path = out / "mme" / "predictions.jsonl"
    first_lines = path.read_text().splitlines()
    assert len(first_lines) == 2  # the finished batch was flushed before the crash

    # A crash in the middle of a write leaves a torn line: it is dropped and regenerated.
    with path.open("a") as handle:
        handle.write('{"id": "2", "predic')
    calls.clear()
    monkeypatch.setattr(
        predictors, "generate_batch", lambda m, p, b, **kw: (calls.append(len(b)), ["Yes"] * len(b))[1]
    )
    main(_argv(tiny_llava, mme_parquet, out, "--batch_size", "2", "--max_new_tokens", "3"))

    assert calls == [2, 2]  # only the four missing items were generated
    lines = path.read_text().splitlines()
    assert lines[:2] == first_lines
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == [str(i) for i in range(6)] and len(ids) == len(set(ids))


def test_limit_then_full_run_only_generates_the_rest(tiny_llava, mme_parquet, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(predictors, "generate_batch", lambda m, p, b, **kw: (calls.append(len(b)), ["No"] * len(b))[1])
    out = tmp_path / "out"
    first = main(_argv(tiny_llava, mme_parquet, out, "--limit", "4", "--batch_size", "8"))
    assert first["num_items"] == 4 and calls == [4]
    second = main(_argv(tiny_llava, mme_parquet, out, "--batch_size", "8"))
    assert second["num_items"] == 6 and calls == [4, 2]
    # Every answer is "No": half the questions right, no image has both right.
    assert second["scores"]["existence/acc"] == 50.0 and second["scores"]["existence/acc_plus"] == 0.0
    # A smaller --limit afterwards scores only the selected rows, from the file, without generating.
    third = main(_argv(tiny_llava, mme_parquet, out, "--limit", "2"))
    assert third["num_items"] == 2 and calls == [4, 2]


def test_runner_rejects_wrong_dataset(tiny_llava, mme_parquet, tmp_path):
    with pytest.raises(ValueError, match=r"Benchmark `mmbench` needs columns \['index', 'A', 'B'\]"):
        main(_argv(tiny_llava, mme_parquet, tmp_path, "--benchmark", "mmbench"))
    with pytest.raises(ValueError, match="Unknown `--benchmark nope`"):
        main(_argv(tiny_llava, mme_parquet, tmp_path, "--benchmark", "nope"))


# ------------------------------------------------------------------------------------------------------- bad items


@pytest.fixture
def mme_with_a_corrupt_image(tmp_path):
    """The six MME rows, row 3's image replaced by 12 bytes that are not an image."""

    def image_of(row: int, i: int) -> dict:
        buffer = io.BytesIO()
        _image(i).save(buffer, format="PNG")
        return {"bytes": b"not an image" if row == 3 else buffer.getvalue(), "path": None}

    return _write_mme(tmp_path / "mme_bad.parquet", image_of)


def test_corrupt_image_names_the_item_and_can_be_skipped(tiny_llava, mme_with_a_corrupt_image, tmp_path):
    out = tmp_path / "out"
    argv = _argv(tiny_llava, mme_with_a_corrupt_image, out, "--batch_size", "2", "--max_new_tokens", "2")
    # Every rerun stops at the same item, with its id, and keeps the good items of the bad item's batch (rows 2, 4).
    for expected in (["0", "1", "2"], ["0", "1", "2", "4"]):
        with pytest.raises(runner.BadItemError, match=r"Benchmark `mme`: item `3` \(row 3\) cannot be evaluated: Image "
                           r"<12 embedded bytes> could not be decoded.*--skip_bad_items True") as error:  # fmt: skip
            main(argv)
        assert (error.value.item_id, error.value.row) == ("3", 3)
        ids = [record["id"] for record in read_predictions(out / "mme" / "predictions.jsonl")]
        assert ids == expected

    result = main(argv + ["--skip_bad_items", "True"])
    assert result["num_items"] == 5 and result["num_skipped"] == 1
    [skipped] = result["skipped_items"]
    assert skipped["id"] == "3" and skipped["row"] == 3 and "<12 embedded bytes>" in skipped["error"]
    assert json.loads((out / "mme" / "scores.json").read_text())["skipped_items"] == [skipped]
    assert "1 bad item(s) skipped" in (out / "mme" / "scores.md").read_text()
    ids = [record["id"] for record in read_predictions(out / "mme" / "predictions.jsonl")]
    assert sorted(ids) == ["0", "1", "2", "4", "5"]


def test_item_failing_in_the_processor_is_found_in_its_batch(tiny_llava, mme_parquet, tmp_path, monkeypatch):
    calls = []

    def fails_on_a_prompt(model, processor, batch_of_messages, **kwargs):
        calls.append(len(batch_of_messages))
        if any("aaa thing" in m[-1]["content"][-1]["text"] for m in batch_of_messages):
            raise ValueError("audio holds NaN")  # e.g. the processor refusing one item's media
        return ["Yes"] * len(batch_of_messages)

    monkeypatch.setattr(predictors, "generate_batch", fails_on_a_prompt)
    with pytest.raises(runner.BadItemError, match=r"item `4` \(row 4\) cannot be evaluated: audio holds NaN\. Fix"):
        main(_argv(tiny_llava, mme_parquet, tmp_path / "a", "--batch_size", "4"))
    calls.clear()
    result = main(_argv(tiny_llava, mme_parquet, tmp_path / "b", "--batch_size", "4", "--skip_bad_items", "True"))
    assert calls == [4, 2, 1, 1]  # the second batch failed, then its items one by one
    assert [item["id"] for item in result["skipped_items"]] == ["4", "5"] and result["num_items"] == 4


# ----------------------------------------------------------------------------------------------------------- audio


def _wav_bytes(seconds: float, rate: int, channels: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.1 * np.sin(2 * np.pi * 440 * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([wave] * channels, axis=1), rate, format="WAV")
    return buffer.getvalue()


class _AudioProcessor:
    """Stands in for the any2text processor: records what it is called with; text goes to the real tokenizer."""

    audio_token = "<audio>"  # it takes audio (the modality table asks a processor for its placeholder)

    def __init__(self):
        self.tokenizer = tiny_models().get_llava_processor().tokenizer
        self.tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        self.feature_extractor = type("FeatureExtractor", (), {"sampling_rate": 16000})()
        self.calls = []

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text, audio, sampling_rate, padding, return_tensors, **text_kwargs):
        self.calls.append({"audio": audio, "sampling_rate": sampling_rate})
        return BatchFeature(dict(self.tokenizer(text, padding=padding, return_tensors=return_tensors, **text_kwargs)))


class _EchoModel:
    """Generates a fixed transcript after every prompt."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, tokenizer, answer):
        self.answer = torch.tensor(tokenizer.encode(answer, add_special_tokens=False))

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert (attention_mask[:, -1] == 1).all()  # left padded
        return torch.cat([input_ids, self.answer.expand(len(input_ids), -1)], dim=1)


def test_audio_benchmark_decodes_resamples_and_scores(tmp_path):
    # LibriSpeech schema; stereo 8 kHz clips stored raw (Audio(decode=False)) must reach the processor mono 16 kHz.
    rows = [
        {"file": f"{i}.flac", "audio": {"bytes": _wav_bytes(0.25 + 0.1 * i, 8000, 2), "path": f"{i}.wav"},
         "text": text, "speaker_id": 1, "chapter_id": 2, "id": f"1-2-{i:04d}"}
        for i, text in enumerate(["HE HOPED THERE", "HE HOPED", "SHE HOPED THERE WOULD BE"])
    ]  # fmt: skip
    features = datasets.Features(
        {
            "file": datasets.Value("string"),
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "text": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
            "chapter_id": datasets.Value("int64"),
            "id": datasets.Value("string"),
        }
    )
    data_dir = tmp_path / "librispeech"
    data_dir.mkdir()
    # Raw bytes cast to Audio on the Arrow side: encoding through datasets would need torchcodec.
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset = dataset.cast_column("audio", datasets.Audio(sampling_rate=16000, decode=False))
    dataset.to_parquet(str(data_dir / "test-00000-of-00001.parquet"))

    processor = _AudioProcessor()
    model = _EchoModel(processor.tokenizer, "he hoped there")
    args = EvalArguments(model="unused", benchmark="librispeech", data=str(data_dir), split="test", output_dir=str(tmp_path / "out"), batch_size=2)  # fmt: skip
    result = run_evaluation(args, model=model, processor=processor)

    audio = [a for call in processor.calls for a in call["audio"]]
    assert [call["sampling_rate"] for call in processor.calls] == [16000, 16000]
    assert all(a.dtype == np.float32 and a.ndim == 1 for a in audio)
    assert [len(a) for a in audio] == [4000, 5600, 7200]  # 8 kHz durations at 16 kHz
    # edits: 0 + 1 (insertion) + 3 (she->he, 2 deletions) over 3 + 2 + 5 reference words
    assert result["scores"]["wer"] == pytest.approx(4 / 10)
    records = read_predictions(tmp_path / "out" / "librispeech" / "predictions.jsonl")
    assert [r["id"] for r in records] == ["1-2-0000", "1-2-0001", "1-2-0002"]
    assert records[0]["prediction"] == "he hoped there"


def test_runner_on_an_any2text_audio_checkpoint(tmp_path, tester):
    """Clotho-AQA rows (raw 44.1 kHz stereo bytes) through the real LlamaVisionAudio model and processor."""
    checkpoint = tmp_path / "model"
    tester.get_model(seed=5).save_pretrained(checkpoint)
    tester.get_processor().save_pretrained(checkpoint)
    rows = [
        {"audio": {"bytes": _wav_bytes(0.3 + 0.1 * i, 44100, 2), "path": f"{i}.wav"}, "question": q, "answer": a}
        for i, (q, a) in enumerate([("Is a dog barking?", "yes"), ("Is it raining?", "no"), ("Any birds?", "yes")])
    ]
    features = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    data_dir = tmp_path / "clotho_aqa"
    data_dir.mkdir()
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.cast_column("audio", datasets.Audio(decode=False)).to_parquet(str(data_dir / "test.parquet"))

    args = EvalArguments(
        model=str(checkpoint), benchmark="clotho_aqa", data=str(data_dir), split="test", batch_size=2,
        max_new_tokens=3, output_dir=str(tmp_path / "out"), device="cpu",
    )  # fmt: skip
    result = run_evaluation(args)
    records = read_predictions(tmp_path / "out" / "clotho_aqa" / "predictions.jsonl")
    assert len(records) == 3 and [r["references"] for r in records] == [["yes"], ["no"], ["yes"]]
    assert result["scores"] == score_predictions("clotho_aqa", records)
    assert all(isinstance(r["prediction"], str) for r in records)


def test_resume_refuses_predictions_of_another_run(tiny_llava, mme_parquet, tmp_path, monkeypatch):
    monkeypatch.setattr(predictors, "generate_batch", lambda m, p, b, **kw: ["Yes"] * len(b))
    out = tmp_path / "out"
    main(_argv(tiny_llava, mme_parquet, out, "--max_new_tokens", "3"))
    path = out / "mme" / "predictions.jsonl"
    # A record cut just before its newline is complete; the next append must not glue a record to it.
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert len(read_predictions(path)) == 6 and path.read_bytes().endswith(b"\n")
    with pytest.raises(ValueError, match=r"another run.*max_new_tokens.*--overwrite"):
        main(_argv(tiny_llava, mme_parquet, out, "--max_new_tokens", "5"))
    monkeypatch.setattr(predictors, "generate_batch", lambda m, p, b, **kw: ["No"] * len(b))
    main(_argv(tiny_llava, mme_parquet, out, "--max_new_tokens", "5", "--overwrite", "True"))
    assert {r["prediction"] for r in read_predictions(path)} == {"No"}


def test_audiocaps_rows_of_one_clip_become_one_item_with_every_caption(tmp_path):
    """AudioCaps lists one caption per row (5 per clip on val/test): one generation and 5 references per clip."""
    rows = [
        {"audiocap_id": 10 * clip + k, "youtube_id": f"yt{clip}", "start_time": 30, "caption": f"clip {clip} caption {k}",
         "audio": {"bytes": _wav_bytes(0.3, 16000, 1), "path": f"{clip}.wav"}}
        for clip in range(2) for k in range(5)
    ]  # fmt: skip
    features = datasets.Features(
        {
            "audiocap_id": datasets.Value("int64"),
            "youtube_id": datasets.Value("string"),
            "start_time": datasets.Value("int64"),
            "caption": datasets.Value("string"),
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        }
    )
    data_dir = tmp_path / "audiocaps"
    data_dir.mkdir()
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.cast_column("audio", datasets.Audio(decode=False)).to_parquet(str(data_dir / "test.parquet"))
    processor = _AudioProcessor()
    model = _EchoModel(processor.tokenizer, "clip 0 caption 1")
    args = EvalArguments(model="unused", benchmark="audiocaps", data=str(data_dir), split="test", output_dir=str(tmp_path / "out"))  # fmt: skip
    run_evaluation(args, model=model, processor=processor)
    records = read_predictions(tmp_path / "out" / "audiocaps" / "predictions.jsonl")
    assert len(records) == 2 and sum(len(call["audio"]) for call in processor.calls) == 2
    assert records[0]["references"] == [f"clip 0 caption {k}" for k in range(5)]
    assert records[1]["references"] == [f"clip 1 caption {k}" for k in range(5)]
