"""Media loading, spec parsing, dataset loading and mixing, on tiny files written to tmp dirs."""

import io
import json

import datasets
import numpy as np
import PIL.Image
import pytest
import soundfile as sf

from any2text.data import (
    BadRowError,
    DatasetSpec,
    MultimodalDataset,
    get_template,
    load_audio,
    load_image,
    load_spec,
    parse_dataset_specs,
)

# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def png_bytes(color=(255, 0, 0), size=(8, 6), mode="RGB"):
    buffer = io.BytesIO()
    PIL.Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def sine(rate, seconds=0.25, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(data, rate, subtype="FLOAT"):
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def dominant_frequency(waveform, rate):
    spectrum = np.abs(np.fft.rfft(waveform))
    return np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]


def llava_json(tmp_path, rows=None):
    (tmp_path / "images" / "coco").mkdir(parents=True)
    (tmp_path / "images" / "coco" / "1.png").write_bytes(png_bytes((0, 255, 0)))
    rows = rows or [
        # text-only first: the `image` column must still exist (from_list would only look at this row)
        {"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {
            "id": "000000033471",
            "image": "coco/1.png",
            "conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "Green"}],
        },
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# media.py


def test_load_image_from_every_kind_of_ref(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(mode="RGBA", color=(1, 2, 3, 4)))
    expected = (1, 2, 3)
    assert load_image("a.png", media_root=tmp_path).getpixel((0, 0)) == expected
    assert load_image(str(tmp_path / "a.png")).mode == "RGB"
    assert load_image({"bytes": png_bytes(color=expected), "path": "ignored.png"}).getpixel((0, 0)) == expected
    assert load_image({"bytes": None, "path": "a.png"}, media_root=tmp_path).getpixel((0, 0)) == expected
    assert load_image(PIL.Image.new("L", (2, 2), 9)).getpixel((0, 0)) == (9, 9, 9)
    assert load_image(np.full((3, 4, 3), 5, dtype=np.uint8)).size == (4, 3)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png.*media_root"):
        load_image("missing.png", media_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no `media_root` was given"):
        load_image("relative/missing.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"`.*broken\.png` could not be decoded"):
        load_image("broken.png", media_root=tmp_path)
    with pytest.raises(ValueError, match="is a URL"):
        load_image("https://example.com/a.png")
    with pytest.raises(TypeError, match="Unsupported image reference"):
        load_image(42)


@pytest.mark.parametrize(
    "rate, channels, subtype",
    [(16000, 1, "FLOAT"), (44100, 1, "PCM_16"), (44100, 2, "FLOAT"), (16000, 2, "PCM_16"), (48000, 1, "PCM_24")],
)
def test_load_audio_file_to_mono_48k(tmp_path, rate, channels, subtype):
    mono = sine(rate)
    data = mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)  # mean of channels = 0.75 * mono
    (tmp_path / "a.wav").write_bytes(wav_bytes(data, rate, subtype))
    for ref in ({"bytes": (tmp_path / "a.wav").read_bytes(), "path": "a.wav"}, "a.wav"):
        waveform = load_audio(ref, sampling_rate=48000, media_root=tmp_path)
        assert waveform.dtype == np.float32 and waveform.ndim == 1
        assert len(waveform) == 12000  # 0.25 s at 48 kHz
        assert dominant_frequency(waveform, 48000) == pytest.approx(440, abs=4)
        peak = 0.5 if channels == 1 else 0.375
        assert np.abs(waveform[1000:-1000]).max() == pytest.approx(peak, rel=0.02)


def test_load_audio_arrays():
    int16 = (sine(16000) * 32767).astype(np.int16)
    out = load_audio({"array": int16, "sampling_rate": 16000}, sampling_rate=48000)
    assert out.dtype == np.float32 and len(out) == 12000
    assert np.abs(out).max() == pytest.approx(0.5, rel=0.02)
    # channels-first stereo (the HF / torchaudio layout), already at the target rate
    stereo = np.stack([sine(48000), sine(48000)])
    np.testing.assert_allclose(load_audio(stereo, sampling_rate=48000), sine(48000), atol=1e-6)

    class Decoder:  # torchcodec's AudioDecoder answers ["array"] / ["sampling_rate"] like a dict
        def __getitem__(self, key):
            return {"array": sine(44100), "sampling_rate": 44100}[key]

    assert len(load_audio(Decoder(), sampling_rate=48000)) == 12000


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.wav"):
        load_audio("nope.wav", 48000, media_root=tmp_path)
    with pytest.raises(ValueError, match=r"`bad\.wav` \(embedded bytes\) could not be decoded"):
        load_audio({"bytes": b"garbage", "path": "bad.wav"}, 48000)
    with pytest.raises(ValueError, match="is empty"):
        load_audio(np.zeros(0, dtype=np.float32), 48000)
    with pytest.raises(ValueError, match="`sampling_rate` must be a positive integer"):
        load_audio(np.zeros(4, dtype=np.float32), 0)
    with pytest.raises(TypeError, match="Unsupported audio reference"):
        load_audio(3.5, 48000)


# ---------------------------------------------------------------------------------------------------------------------
# parse_dataset_specs


def test_parse_comma_lists_trailing_comma_and_broadcast():
    specs = parse_dataset_specs(
        "a.json,b.parquet,c,",
        templates="llava,audiocaps,librispeech,",
        splits="train",
        data_files=",,c.json,",
        sizes="100,,none,",
        weights="1,2,0.5,",
        media_roots="/media",
    )
    assert [s.path for s in specs] == ["a.json", "b.parquet", "c"]
    assert [s.template for s in specs] == ["LLaVA", "AudioCaps", "LibriSpeech"]
    assert [s.split for s in specs] == ["train"] * 3
    assert [s.data_files for s in specs] == [None, None, "c.json"]
    assert [s.size for s in specs] == [100, None, None]
    assert [s.weight for s in specs] == [1.0, 2.0, 0.5]
    assert [s.media_root for s in specs] == ["/media"] * 3
    assert parse_dataset_specs(["x", "y"], ["VQAv2"], sizes=5) == [
        DatasetSpec("x", "VQAv2", size=5),
        DatasetSpec("y", "VQAv2", size=5),
    ]


def test_parse_errors():
    with pytest.raises(ValueError, match=r"`splits` has 2 values .* but there are 3 datasets"):
        parse_dataset_specs("a,b,c", "LLaVA", splits="train,test")
    with pytest.raises(ValueError, match="Unknown template `nope`"):
        parse_dataset_specs("a", "nope")
    with pytest.raises(ValueError, match="`weights` value `-1` must be a positive float"):
        parse_dataset_specs("a", "LLaVA", weights="-1")
    with pytest.raises(ValueError, match="`sizes` value `1.5` must be a positive int"):
        parse_dataset_specs("a", "LLaVA", sizes="1.5")
    with pytest.raises(ValueError, match="no empty ones"):
        parse_dataset_specs("a,,b", "LLaVA")


# ---------------------------------------------------------------------------------------------------------------------
# load_spec + MultimodalDataset


def test_llava_json_with_mixed_ids_and_text_only_rows(tmp_path):
    path = llava_json(tmp_path)
    spec = DatasetSpec(str(path), "LLaVA", media_root=str(tmp_path / "images"))
    loaded = load_spec(spec)
    assert loaded["id"] == ["7", "000000033471"] and "image" in loaded.column_names

    dataset = MultimodalDataset(spec)
    assert len(dataset) == 2
    assert dataset[0]["messages"][0] == {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    first_turn = dataset[1]["messages"][0]["content"]
    assert first_turn[0]["type"] == "image" and first_turn[0]["image"].getpixel((0, 0)) == (0, 255, 0)
    assert first_turn[1] == {"type": "text", "text": "Color?"}

    undecoded = MultimodalDataset(spec, decode_media=False)[1]["messages"][0]["content"][0]["image"]
    assert undecoded == str(tmp_path / "images" / "coco" / "1.png")


def test_folder_with_data_files_uses_folder_as_media_root(tmp_path):
    llava_json(tmp_path, rows=[{"id": 1, "image": "images/coco/1.png", "conversations": [
        {"from": "human", "value": "Color?\n<image>"}, {"from": "gpt", "value": "Green"}]}])  # fmt: skip
    specs = parse_dataset_specs(str(tmp_path), "LLaVA", data_files="llava.json")
    content = MultimodalDataset(specs)[0]["messages"][0]["content"]
    assert [item["type"] for item in content] == ["text", "image"]


def test_missing_media_file_names_dataset_and_row(tmp_path):
    rows = [
        {
            "id": 1,
            "image": "coco/1.png",
            "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}],
        },
        {
            "id": 2,
            "image": "coco/gone.png",
            "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}],
        },
    ]
    spec = DatasetSpec(str(llava_json(tmp_path, rows)), "LLaVA", media_root=str(tmp_path / "images"))
    dataset = MultimodalDataset(spec)
    with pytest.raises(BadRowError, match=r"Row 1 of dataset `.*llava\.json`.*coco/gone\.png.*skip_bad_rows") as info:
        dataset[1]
    assert isinstance(info.value.__cause__, FileNotFoundError) and info.value.index == 1

    with pytest.raises(BadRowError, match="Row 1 of dataset"):
        MultimodalDataset(spec, validate_rows=True)


def test_skip_bad_rows_counts_and_logs(tmp_path):
    rows = [
        {
            "id": 1,
            "image": "coco/1.png",
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
        },
        {
            "id": 2,
            "image": "coco/1.png",
            "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "b"}],
        },
    ]
    spec = DatasetSpec(str(llava_json(tmp_path, rows)), "LLaVA", media_root=str(tmp_path / "images"))
    dataset = MultimodalDataset(spec, skip_bad_rows=True, max_bad_rows=1)
    assert dataset[1]["messages"][0]["content"][1] == {"type": "text", "text": "a"}  # fell through to row 0
    assert dataset.num_skipped == 1 and dataset.skipped == {str(spec): 1}

    validated = MultimodalDataset(spec, skip_bad_rows=True, validate_rows=True, max_bad_rows=1)
    assert len(validated) == 1 and validated.num_skipped == 1


def test_parquet_with_image_column_decodes_lazily(tmp_path):
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "question_id": datasets.Value("int64"),
            "multiple_choice_answer": datasets.Value("string"),
        }
    )
    rows = {
        "image": [{"bytes": png_bytes((10 * i, 0, 0)), "path": f"{i}.png"} for i in range(5)],
        "question": [f"q{i}?" for i in range(5)],
        "question_id": list(range(5)),
        "multiple_choice_answer": [f"a{i}" for i in range(5)],
    }
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "vqa.parquet")

    spec = DatasetSpec(str(tmp_path / "vqa.parquet"), "VQAv2", size=3)
    loaded = load_spec(spec)
    assert loaded.features["image"] == datasets.Image(decode=False)
    assert len(loaded) == 3 and isinstance(loaded[0]["image"]["bytes"], bytes)

    sample = MultimodalDataset(spec)[0]["messages"]
    pixel = sample[0]["content"][0]["image"].getpixel((0, 0))
    assert pixel == (10 * loaded[0]["question_id"], 0, 0)
    assert sample[1] == {"role": "assistant", "content": [{"type": "text", "text": f"a{loaded[0]['question_id']}"}]}


def test_saved_dataset_folder_with_audio_column(tmp_path):
    clips = [
        wav_bytes(sine(16000), 16000, "PCM_16"),
        wav_bytes(np.stack([sine(44100)] * 2, axis=1), 44100),
    ]
    rows = {"audio": [{"bytes": b, "path": f"{i}.wav"} for i, b in enumerate(clips)], "text": ["HELLO", "WORLD"]}
    # Encoding through `Audio` needs torchcodec; casting a bytes/path struct does not. The result is an `Audio()`
    # column (decode=True), like openslr/librispeech_asr's parquet files.
    table = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(sampling_rate=16000))
    assert table.features["audio"].decode
    datasets.DatasetDict({"train": table}).save_to_disk(tmp_path / "libri")
    table.to_parquet(tmp_path / "libri.parquet")

    for path in (tmp_path / "libri", tmp_path / "libri.parquet"):
        assert load_spec(DatasetSpec(str(path), "LibriSpeech")).features["audio"] == datasets.Audio(decode=False)
        dataset = MultimodalDataset(DatasetSpec(str(path), "LibriSpeech"), sampling_rate=48000)
        for i in range(2):
            user, answer = dataset[i]["messages"]
            waveform = user["content"][0]["audio"]
            assert waveform.dtype == np.float32 and waveform.shape == (12000,)
            assert answer["content"][0]["text"] == ["hello", "world"][i]

    with pytest.raises(RuntimeError, match="needs `sampling_rate`"):
        MultimodalDataset(DatasetSpec(str(tmp_path / "libri"), "LibriSpeech"))[0]
    with pytest.raises(ValueError, match="no split `test`"):
        load_spec(DatasetSpec(str(tmp_path / "libri"), "LibriSpeech", split="test"))


def test_missing_column_names_dataset_column_and_available(tmp_path):
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(
        ValueError,
        match=r"Dataset `.*x\.parquet` \[train\] has no column `image`, `multiple_choice_answer` required by template "
        r"`VQAv2`\. Available columns: `question`, `answer`",
    ):
        load_spec(DatasetSpec(str(tmp_path / "x.parquet"), "VQAv2"))
    with pytest.raises(ValueError, match=r"has no column `audio` required by template `Clotho-AQA`"):
        load_spec(DatasetSpec(str(tmp_path / "x.parquet"), "Clotho-AQA"))
    assert get_template("Clotho-AQA").missing_columns(["answer"]) == ["audio", "question|text"]


def _text_dataset(prefix, n):
    conversations = [[{"from": "human", "value": f"{prefix}{i}"}, {"from": "gpt", "value": "ok"}] for i in range(n)]
    return datasets.Dataset.from_dict({"conversations": conversations})


def _first_texts(dataset):
    return [dataset[i]["messages"][0]["content"][0]["text"] for i in range(len(dataset))]


def test_concatenation_without_weights():
    specs = [DatasetSpec("a", "LLaVA"), DatasetSpec("b", "LLaVA")]
    dataset = MultimodalDataset(specs, loaded=[_text_dataset("a", 2), _text_dataset("b", 3)])
    assert _first_texts(dataset) == ["a0", "a1", "b0", "b1", "b2"]


def test_weighted_mix_is_reproducible_and_proportional():
    specs = [DatasetSpec("a", "LLaVA", weight=3.0), DatasetSpec("b", "LLaVA", weight=1.0)]
    loaded = [_text_dataset("a", 5), _text_dataset("b", 50)]

    def mix(seed):
        return _first_texts(MultimodalDataset(specs, loaded=loaded, num_samples=40, seed=seed))

    first = mix(0)
    assert first == mix(0) and first != mix(1)
    assert len(first) == 40 and sum(t.startswith("a") for t in first) == 30
    # the small dataset is cycled: every row is used 6 times, none more
    assert {first.count(f"a{i}") for i in range(5)} == {6}
    assert len({t for t in first if t.startswith("b")}) == 10  # drawn without replacement

    with pytest.raises(ValueError, match="set a weight on every dataset"):
        MultimodalDataset([specs[0], DatasetSpec("b", "LLaVA")], loaded=loaded)


def test_size_subset_is_seeded(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": i, "conversations": [{"from": "human", "value": str(i)}, {"from": "gpt", "value": "x"}]})
            for i in range(20)
        )
    )
    spec = DatasetSpec(str(path), "LLaVA", size=5)
    ids = load_spec(spec, seed=3)["id"]
    assert len(ids) == 5 and ids == load_spec(spec, seed=3)["id"] != load_spec(spec, seed=4)["id"]
    assert ids == sorted(ids, key=int)  # original order kept


def test_unsupported_file_and_bad_json(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_spec(DatasetSpec(str(tmp_path / "x.txt"), "LLaVA"))
    (tmp_path / "d.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="must hold a JSON list of objects"):
        load_spec(DatasetSpec(str(tmp_path / "d.json"), "LLaVA"))


def test_nested_image_list_column_is_not_decoded(tmp_path):
    rows = {
        "images": [
            [{"bytes": png_bytes((1, 1, 1)), "path": "a.png"}, {"bytes": png_bytes((2, 2, 2)), "path": "b.png"}]
        ],
        "conversations": [[{"from": "human", "value": "<image> or <image>?"}, {"from": "gpt", "value": "first"}]],
    }
    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "conversations": datasets.List({"from": datasets.Value("string"), "value": datasets.Value("string")}),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "multi.parquet")
    spec = DatasetSpec(str(tmp_path / "multi.parquet"), "LLaVA")
    assert load_spec(spec).features["images"] == datasets.List(datasets.Image(decode=False))
    content = MultimodalDataset(spec)[0]["messages"][0]["content"]
    assert [item.get("text") or item["image"].getpixel((0, 0)) for item in content] == [
        (1, 1, 1),
        "or",
        (2, 2, 2),
        "?",
    ]
