import hashlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from any2text.demo.synthetic import (
    BEEP_COUNTS,
    COLOR_NAMES,
    POSITIONS,
    QUESTION_TYPES,
    SHAPES,
    generate_demo_data,
    main,
    make_audio,
    make_image,
)

N_TRAIN, N_TEST, SR, SIZE = 150, 50, 16000, 32


def _color_of(image: Image.Image) -> str:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    lit = pixels[pixels.max(axis=1) > 0]
    on = tuple(int(v > 100) for v in lit.mean(axis=0))
    return {(1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow"}[on]


def _shape_of(image: Image.Image) -> str:
    # Fraction of the bounding box the shape fills: square ~1, circle ~pi/4, triangle ~1/2.
    mask = np.asarray(image.convert("RGB")).max(axis=2) > 0
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.92 else "circle" if fill > 0.68 else "triangle"


def _position_of(image: Image.Image) -> str:
    mask = np.asarray(image.convert("RGB")).max(axis=2) > 0
    return "left" if np.nonzero(mask)[1].mean() < mask.shape[1] / 2 else "right"


def _pitch_of(wave: np.ndarray, sampling_rate: int) -> str:
    spectrum = np.abs(np.fft.rfft(wave))
    peak = np.fft.rfftfreq(len(wave), 1 / sampling_rate)[spectrum.argmax()]
    return "low" if peak < 1000 else "high"


def _beeps_of(wave: np.ndarray, sampling_rate: int) -> str:
    frame = sampling_rate // 100
    energy = np.sqrt((wave[: len(wave) // frame * frame].reshape(-1, frame) ** 2).mean(axis=1))
    on = (energy > 0.1 * energy.max()).astype(int)
    return BEEP_COUNTS[int((np.diff(np.concatenate([[0], on])) == 1).sum()) - 1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate_demo_data(out, n_train=N_TRAIN, n_test=N_TEST, seed=3, image_size=SIZE, sampling_rate=SR)
    return out


def _load_json(data_dir: Path, split: str) -> list[dict]:
    with open(data_dir / "llava" / f"{split}.json") as f:
        return json.load(f)


def test_make_image_draws_what_it_is_told():
    rng = np.random.default_rng(0)
    for color, shape, position in itertools.product(COLOR_NAMES, SHAPES, POSITIONS):
        for size in (28, 32):
            image = make_image(color, shape, position, size, rng)
            assert image.size == (size, size) and image.mode == "RGB"
            assert (_color_of(image), _shape_of(image), _position_of(image)) == (color, shape, position)


def test_make_audio_pitch_and_beeps_are_measurable():
    rng = np.random.default_rng(0)
    for pitch, n_beeps, sr in itertools.product(("low", "high"), (1, 2, 3), (16000, 48000)):
        wave = make_audio(pitch, n_beeps, sr, 1.0, rng)
        assert wave.dtype == np.float32 and wave.shape == (sr,) and np.abs(wave).max() <= 1.0
        assert _pitch_of(wave, sr) == pitch
        assert _beeps_of(wave, sr) == BEEP_COUNTS[n_beeps - 1]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="color"):
        make_image("purple", "circle", "left")
    with pytest.raises(ValueError, match="sampling_rate"):
        make_audio("high", 1, sampling_rate=8000)
    with pytest.raises(ValueError, match="n_beeps"):
        make_audio("low", 4)
    with pytest.raises(ValueError, match="Unknown question types"):
        generate_demo_data("unused", weights={"image_colour": 1.0})


def test_llava_json_rows_match_their_media(data_dir):
    rows = _load_json(data_dir, "train") + _load_json(data_dir, "test")
    assert len(rows) == N_TRAIN + N_TEST
    seen_types = set()
    for row in rows:
        qtype = QUESTION_TYPES[row["question_type"]]
        seen_types.add(qtype.name)
        human, gpt = row["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        answer = gpt["value"]
        assert answer in qtype.answers
        if qtype.modality == "image":
            assert "audio" not in row and human["value"].startswith("<image>\n") and "<audio>" not in human["value"]
            image = Image.open(data_dir / "llava" / row["image"])
            measure = {"image_color": _color_of, "image_shape": _shape_of, "image_position": _position_of}
            assert measure[qtype.name](image) == answer, row
        elif qtype.modality == "audio":
            assert "image" not in row and human["value"].startswith("<audio>\n") and "<image>" not in human["value"]
            wave, sr = sf.read(data_dir / "llava" / row["audio"], dtype="float32")
            assert sr == SR and wave.ndim == 1
            measure = {"audio_pitch": _pitch_of, "audio_count": _beeps_of}
            assert measure[qtype.name](wave, sr) == answer, row
        else:
            assert "image" not in row and "audio" not in row and "<" not in human["value"]
    assert seen_types == set(QUESTION_TYPES)


def test_parquet_matches_json_and_decodes(data_dir):
    from datasets import load_dataset

    for split in ("train", "test"):
        ds = load_dataset(
            "parquet",
            data_files=str(data_dir / "parquet" / f"{split}.parquet"),
            split="train",
            cache_dir=str(data_dir / "hf_cache"),
        )
        rows = _load_json(data_dir, split)
        assert ds.column_names == ["id", "question_type", "conversations", "image", "audio"]
        assert ds.features["audio"].decode is False
        for row, pq_row in zip(rows, ds):
            assert pq_row["id"] == row["id"] and pq_row["conversations"] == row["conversations"]
            assert pq_row["question_type"] == row["question_type"]
            if "image" in row:
                # The Image() feature decodes to the very pixels of the PNG on disk.
                on_disk = np.asarray(Image.open(data_dir / "llava" / row["image"]))
                assert np.array_equal(np.asarray(pq_row["image"]), on_disk)
            else:
                assert pq_row["image"] is None
            if "audio" in row:
                assert pq_row["audio"]["path"] == row["audio"]
                wave, sr = sf.read(io.BytesIO(pq_row["audio"]["bytes"]), dtype="float32")
                assert sr == SR and np.array_equal(
                    wave, sf.read(data_dir / "llava" / row["audio"], dtype="float32")[0]
                )
            else:
                assert pq_row["audio"] is None


def test_meta_and_no_media_shared_between_rows(data_dir):
    with open(data_dir / "meta.json") as f:
        meta = json.load(f)
    assert meta["question_types"]["image_color"]["chance"] == 0.25
    assert meta["question_types"]["audio_count"]["answers"] == list(BEEP_COUNTS)
    assert sum(sum(c.values()) for c in meta["counts"]["test"].values()) == N_TEST
    # Answers are balanced within each media question type, so chance really is 1 / len(answers).
    for split in ("train", "test"):
        for name, per_answer in meta["counts"][split].items():
            if QUESTION_TYPES[name].modality != "text":
                assert set(per_answer) == set(QUESTION_TYPES[name].answers), (split, name)
                assert max(per_answer.values()) - min(per_answer.values()) <= 1, (split, name, per_answer)

    digests, ids = [], []
    for split in ("train", "test"):
        for row in _load_json(data_dir, split):
            ids.append(row["id"])
            for key in ("image", "audio"):
                if key in row:
                    digests.append(hashlib.sha1((data_dir / "llava" / row[key]).read_bytes()).hexdigest())
    assert len(set(ids)) == len(ids)
    assert len(set(digests)) == len(digests)


def test_deterministic_given_seed(tmp_path, data_dir):
    main(["--output_dir", str(tmp_path / "a"), "--n_train", str(N_TRAIN), "--n_test", str(N_TEST), "--seed", "3"])
    for rel in ("llava/train.json", "llava/test.json", "meta.json", "parquet/train.parquet"):
        assert (tmp_path / "a" / rel).read_bytes() == (data_dir / rel).read_bytes(), rel
    for rel in ("llava/images", "llava/audio"):
        names = sorted(p.name for p in (data_dir / rel).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "a" / rel).iterdir())
        assert all((data_dir / rel / n).read_bytes() == (tmp_path / "a" / rel / n).read_bytes() for n in names)

    generate_demo_data(tmp_path / "b", n_train=N_TRAIN, n_test=N_TEST, seed=4)
    assert (tmp_path / "b/llava/train.json").read_bytes() != (data_dir / "llava/train.json").read_bytes()
