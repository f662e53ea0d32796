"""Hostile data (issue 10, data side): every bad row is named (file, row, id) and skippable, counted once, capped."""

import io
import json
import logging
import os

import numpy as np
import PIL.Image
import pytest
import soundfile as sf

from any2text.data import (
    BadRowError,
    BadRowLog,
    DatasetSpec,
    MultimodalDataset,
    TooManyBadRowsError,
    image_to_rgb,
    load_audio,
    load_image,
    load_spec,
    resolve_path,
)
from any2text.data.bad_rows import check_max_bad_rows
from any2text.data.collator import IGNORE_INDEX, MultimodalCollator
from any2text.data.media import MediaOutsideRootError, NonFiniteMediaError
from conftest import SAMPLING_RATE, tiny_models, write_llava_data


@pytest.fixture(scope="module")
def processor():
    return tiny_models().get_cheap_processor()


def turns(question="Q?", answer="A."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def good_rows(n, start=0):
    return [{"id": f"r{i}", "conversations": turns(f"Q{i}?")} for i in range(start, start + n)]


def write_json(folder, rows, name="data.json"):
    path = folder / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "\n".join(json.dumps(r) for r in rows))
    return path


def png(path, color=(0, 255, 0)):
    PIL.Image.new("RGB", (8, 8), color).save(path)


def read_all(dataset):
    return [dataset[i] for i in range(len(dataset))]


# ---------------------------------------------------------------------------------------------------------------------
# 3. Wrongly typed rows, unreadable files


WRONG_ROWS = {
    "value_is_a_number": {
        "id": "bad",
        "conversations": [{"from": "human", "value": 123}, {"from": "gpt", "value": "A"}],
    },
    "turn_is_a_string": {"id": "bad", "conversations": ["hello", {"from": "gpt", "value": "A"}]},
    "conversations_is_a_string": {"id": "bad", "conversations": "hello"},
    "image_is_a_number": {"id": "bad", "image": 5, "conversations": turns("<image>\nColor?")},
}


@pytest.mark.parametrize("case", sorted(WRONG_ROWS))
def test_one_wrongly_typed_row_is_a_named_skippable_bad_row(tmp_path, case):
    png(tmp_path / "a.png")
    image_row = {"id": "img", "image": "a.png", "conversations": turns("<image>\nC?")}
    rows = [*good_rows(2), WRONG_ROWS[case], image_row, image_row]
    spec = DatasetSpec(str(write_json(tmp_path, rows)), "LLaVA")
    dataset = MultimodalDataset(spec)  # the file loads: no raw Arrow error
    assert len(dataset) == 5 and dataset[3]["messages"][0]["content"][0]["image"].size == (8, 8)
    with pytest.raises(BadRowError, match=r"Row 2 of dataset `.*data\.json` \[train\] \(id `bad`") as info:
        dataset[2]
    assert (info.value.dataset, info.value.index, info.value.row_id) == (str(spec), 2, "bad")

    skipping = MultimodalDataset(spec, skip_bad_rows=True, max_bad_rows=1)
    assert [item["source"]["id"] for item in read_all(skipping)] == ["r0", "r1", "img", "img", "img"]
    assert skipping.skipped == {str(spec): 1}


def test_invalid_json_and_jsonl_name_the_file_and_line(tmp_path):
    (tmp_path / "broken.json").write_text('[\n  {"id": 1},\n  {"id": 2,,}\n]')
    with pytest.raises(ValueError, match=r"`.*broken\.json` is not valid JSON: .* at line 3"):
        load_spec(DatasetSpec(str(tmp_path / "broken.json"), "LLaVA"))
    (tmp_path / "broken.jsonl").write_text('{"id": 1}\n\n{"id": 2\n')
    with pytest.raises(ValueError, match=r"`.*broken\.jsonl` line 3 is not valid JSON"):
        load_spec(DatasetSpec(str(tmp_path / "broken.jsonl"), "LLaVA"))
    (tmp_path / "lines.json").write_text('{"id": 1}\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"line 2.*name it `\.jsonl`"):
        load_spec(DatasetSpec(str(tmp_path / "lines.json"), "LLaVA"))


def test_a_file_that_is_not_parquet_names_the_file(tmp_path):
    (tmp_path / "fake.parquet").write_text('{"id": 1}')
    with pytest.raises(ValueError, match=r"`.*fake\.parquet` could not be read as parquet"):
        load_spec(DatasetSpec(str(tmp_path / "fake.parquet"), "VQAv2"))


@pytest.mark.parametrize("name, text", [("empty.json", "[]"), ("empty.jsonl", "\n")])
def test_a_file_without_rows_says_so(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"`.*{name}` has no rows"):
        load_spec(DatasetSpec(str(tmp_path / name), "LLaVA"))


# ---------------------------------------------------------------------------------------------------------------------
# 4. High-depth grayscale


def test_16_bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)
    PIL.Image.fromarray(levels).save(tmp_path / "deep.png")
    with PIL.Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode == "I;16"
    rgb = load_image("deep.png", media_root=tmp_path)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 64, 128, 255]


def test_32_bit_integer_and_float_images_are_scaled():
    as_int = PIL.Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))
    assert as_int.mode == "I" and np.asarray(image_to_rgb(as_int))[0, :, 0].tolist() == [0, 128, 255]
    as_float = PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert as_float.mode == "F" and np.asarray(load_image(as_float))[0, :, 1].tolist() == [0, 128, 255]
    with pytest.raises(NonFiniteMediaError, match="non-finite"):
        image_to_rgb(PIL.Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)))


# ---------------------------------------------------------------------------------------------------------------------
# 1 (data half). Non-finite media


def test_nan_audio_is_a_named_skippable_bad_row(tmp_path):
    sf.write(tmp_path / "nan.wav", np.full(1600, np.nan, dtype=np.float32), SAMPLING_RATE, subtype="FLOAT")
    sf.write(tmp_path / "ok.wav", np.zeros(1600, dtype=np.float32), SAMPLING_RATE, subtype="FLOAT")
    with pytest.raises(NonFiniteMediaError, match=r"`nan\.wav` holds 1600 non-finite samples"):
        load_audio("nan.wav", SAMPLING_RATE, media_root=tmp_path)
    with pytest.raises(NonFiniteMediaError):
        load_audio({"array": np.array([0.0, np.inf]), "sampling_rate": SAMPLING_RATE}, SAMPLING_RATE)

    rows = [
        {"id": "nan", "audio": "nan.wav", "conversations": turns("<audio>\nPitch?")},
        {"id": "ok", "audio": "ok.wav", "conversations": turns("<audio>\nPitch?")},
    ]
    spec = DatasetSpec(str(write_json(tmp_path, rows)), "LLaVA")
    with pytest.raises(BadRowError, match=r"Row 0 .*id `nan`.*non-finite") as info:
        MultimodalDataset(spec, sampling_rate=SAMPLING_RATE)[0]
    assert info.value.cause == "non_finite_media"
    skipping = MultimodalDataset(spec, sampling_rate=SAMPLING_RATE, skip_bad_rows=True, max_bad_rows=1)
    assert skipping[0]["source"]["id"] == "ok" and skipping.skipped == {str(spec): 1}


# ---------------------------------------------------------------------------------------------------------------------
# 5. Collator errors name the dataset row and are skippable


def _lazy_dataset(tmp_path, rows, **kwargs):
    spec = DatasetSpec(str(write_json(tmp_path, rows)), "LLaVA")
    return MultimodalDataset(spec, sampling_rate=SAMPLING_RATE, decode_media=False, **kwargs)


def test_collator_errors_name_the_dataset_row_and_can_be_skipped(tmp_path, processor):
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    png(tmp_path / "ok.png")
    rows = [
        {"id": "ok", "image": "ok.png", "conversations": turns("<image>\nC?")},
        {"id": "corrupt", "image": "corrupt.png", "conversations": turns("<image>\nC?")},
    ]
    samples = read_all(_lazy_dataset(tmp_path, rows))  # paths exist: the dataset cannot tell
    with pytest.raises(BadRowError, match=r"Row 1 of dataset `.*data\.json` \[train\] \(id `corrupt`.*decoded"):
        MultimodalCollator(processor)(samples)

    log = BadRowLog(max_bad_rows=1)
    collator = MultimodalCollator(processor, skip_bad_rows=True, bad_rows=log, return_sources=True)
    batch = collator(samples)
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    assert [source["id"] for source in batch["sources"]] == ["ok"]
    assert [(row.index, row.id, row.cause) for row in log.rows.values()] == [(1, "corrupt", "undecodable_media")]


def test_clip_too_long_for_the_feature_extractor_names_the_row(tmp_path, processor):
    # The cheap CLAP extractor has a 2 s window and 16 mel bins: it cannot fuse longer clips.
    sf.write(tmp_path / "long.wav", np.zeros(int(2.5 * SAMPLING_RATE), dtype=np.float32), SAMPLING_RATE)
    sf.write(tmp_path / "short.wav", np.zeros(SAMPLING_RATE, dtype=np.float32), SAMPLING_RATE)
    rows = [
        {"id": "long", "audio": "long.wav", "conversations": turns("<audio>\nP?")},
        {"id": "short", "audio": "short.wav", "conversations": turns("<audio>\nP?")},
    ]
    samples = read_all(_lazy_dataset(tmp_path, rows))
    with pytest.raises(BadRowError, match=r"Row 0 of dataset .*\(id `long`.*longer than this feature extractor"):
        MultimodalCollator(processor)(samples)
    log = BadRowLog(max_bad_rows=1)
    batch = MultimodalCollator(processor, skip_bad_rows=True, bad_rows=log)(samples)
    assert batch["input_features"].shape[0] == 1 and len(log.rows) == 1


def test_too_long_sample_is_a_bad_row_as_its_row_is_read(tmp_path, processor):
    rows = [*good_rows(2), {"id": "long", "conversations": turns(" ".join(["word"] * 80))}]
    collator = MultimodalCollator(processor, max_length=40, truncation="error")
    dataset = _lazy_dataset(tmp_path, rows, check_sample=collator.check_sample)
    with pytest.raises(BadRowError, match=r"Row 2 of dataset .*\(id `long`.*more than `max_length=40`") as info:
        dataset[2]
    assert info.value.cause == "too_long"
    # Before step 1: `validate` drops it (with skipping) and measures the others.
    skipping = _lazy_dataset(tmp_path, rows, check_sample=collator.check_sample, skip_bad_rows=True, max_bad_rows=1)
    lengths = skipping.validate(length_fn=collator.sample_length)
    assert len(skipping) == 2 and lengths == [collator.sample_length(skipping[i]["messages"]) for i in range(2)]
    assert max(lengths) <= 40


# ---------------------------------------------------------------------------------------------------------------------
# 6. `--truncation text` never keeps a sample without labels


def test_text_truncation_that_removes_every_label_drops_the_sample(processor):
    question = {"role": "user", "content": [{"type": "text", "text": " ".join(["word"] * 60)}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Done."}]}
    short = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, answer]
    collator = MultimodalCollator(processor, max_length=40, truncation="text")
    batch = collator([{"messages": [question, answer]}, {"messages": short}])
    assert collator.num_dropped == 1 and batch["input_ids"].shape[0] == 1
    assert (batch["labels"][0] != IGNORE_INDEX).any()


# ---------------------------------------------------------------------------------------------------------------------
# 7. Unique counts, the file, the cap


def test_skipped_rows_are_counted_once_per_dataset_and_cause_and_listed(tmp_path):
    png(tmp_path / "a.png")
    rows = good_rows(6)
    rows[1] = {"id": "gone", "image": "missing.png", "conversations": turns("<image>\nC?")}
    rows[4] = {"id": "empty", "conversations": turns(answer="  ")}
    path = tmp_path / "out" / "bad_rows.jsonl"
    log = BadRowLog(max_bad_rows=2, path=str(path))
    dataset = MultimodalDataset(
        DatasetSpec(str(write_json(tmp_path, rows)), "LLaVA"), skip_bad_rows=True, bad_rows=log
    )
    for _ in range(3):  # three epochs: each bad row is met three times, and counted once
        read_all(dataset)
    name = str(dataset.specs[0])
    assert dataset.num_skipped == 2 and log.counts() == {(name, "missing_media"): 1, (name, "invalid_conversation"): 1}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["index"], r["id"], r["cause"]) for r in records] == [
        (1, "gone", "missing_media"),
        (4, "empty", "invalid_conversation"),
    ]
    assert "Skipped 2 bad rows" in log.summary() and str(path) in log.summary()


def test_a_wrong_media_root_stops_at_the_cap_with_the_likely_cause(tmp_path):
    png(tmp_path / "a.png")
    rows = [{"id": f"i{i}", "image": "a.png", "conversations": turns("<image>\nC?")} for i in range(10)]
    rows += good_rows(10)
    spec = DatasetSpec(str(write_json(tmp_path, rows)), "LLaVA", media_root=str(tmp_path / "wrong"))
    dataset = MultimodalDataset(spec, skip_bad_rows=True, max_bad_rows=0.1)  # 2 of 20 rows
    with pytest.raises(TooManyBadRowsError, match=r"3 bad rows of its 20 rows.*`missing_media`.*--media_root.*wrong"):
        read_all(dataset)
    # The same, found before step 1.
    with pytest.raises(TooManyBadRowsError, match="max_bad_rows=3"):
        MultimodalDataset(spec, skip_bad_rows=True, max_bad_rows=3, validate_rows=True)


@pytest.mark.parametrize("value", [1.5, -1, "many", float("nan")])
def test_max_bad_rows_must_be_a_count_or_a_fraction(value):
    with pytest.raises(ValueError, match="max_bad_rows"):
        check_max_bad_rows(value)


# ---------------------------------------------------------------------------------------------------------------------
# 10. Media paths outside the media root


def test_media_paths_outside_the_root_are_refused_unless_allowed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "secret.png"
    root.mkdir()
    png(outside)
    for path in ("../secret.png", str(outside)):
        with pytest.raises(MediaOutsideRootError, match="leads outside `media_root="):
            resolve_path(path, root)
        assert resolve_path(path, root, allow_outside_root=True) == os.path.join(root, path)
    # Inside the root by name is enough: a symlinked sub-folder of the root stays usable.
    os.symlink(tmp_path, root / "linked")
    assert resolve_path("linked/secret.png", root).endswith("linked/secret.png")

    rows = [{"id": "escape", "image": "../secret.png", "conversations": turns("<image>\nC?")}]
    spec = DatasetSpec(str(write_json(tmp_path, rows)), "LLaVA", media_root=str(root))
    with pytest.raises(BadRowError, match=r"id `escape`.*allow_media_outside_root") as info:
        MultimodalDataset(spec)[0]
    assert info.value.cause == "media_outside_root"
    assert MultimodalDataset(spec, allow_media_outside_root=True)[0]["messages"][0]["content"][0]["image"].size == (
        8,
        8,
    )


# ---------------------------------------------------------------------------------------------------------------------
# 11. Silently accepted rows


CONVERSATIONS = {
    "empty answer": (turns(answer=""), "Assistant turn 1 is empty"),
    "starts with the assistant": (
        [{"from": "gpt", "value": "Hi"}, *turns()],
        "starts with the assistant",
    ),
    "two user turns in a row": ([{"from": "human", "value": "Q1"}, *turns()], "Turns 0 and 1 are both `user`"),
    "ends with a question": ([*turns(), {"from": "human", "value": "And?"}], "ends with a user turn"),
}


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_broken_conversations_are_bad_rows(tmp_path, case):
    conversation, message = CONVERSATIONS[case]
    spec = DatasetSpec(str(write_json(tmp_path, [{"id": "x", "conversations": conversation}])), "LLaVA")
    with pytest.raises(BadRowError, match=rf"Row 0 .*\(id `x`.*{message}") as info:
        MultimodalDataset(spec)[0]
    assert info.value.cause == "invalid_conversation"


def test_a_split_on_a_plain_file_is_a_warning(tmp_path, caplog):
    path = write_json(tmp_path, good_rows(2), name="rows.jsonl")
    with caplog.at_level(logging.WARNING):
        assert len(load_spec(DatasetSpec(str(path), "LLaVA", split="validation"))) == 2
    assert "has no splits; `split=validation` does not select anything" in caplog.text


def test_embedded_bytes_are_read_whatever_the_media_root():
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    # A row's `path` next to embedded bytes is only a name: it is never opened, so it is not checked.
    assert load_image({"bytes": buffer.getvalue(), "path": "../../x.png"}, media_root="/nowhere").size == (4, 4)


# ---------------------------------------------------------------------------------------------------------------------
# The train entry point end to end


@pytest.mark.slow
def test_train_skips_bad_rows_once_each_and_stops_on_a_wrong_media_root(tiny_checkpoint, tmp_path, caplog):
    from any2text.training.train import main

    data = write_llava_data(tmp_path / "data", ["image", "text"] * 4)
    rows = json.loads(data.read_text())
    rows[2]["image"] = "gone.png"  # one missing file: skipped, however often it is drawn
    data.write_text(json.dumps(rows))
    base = tiny_checkpoint
    args = ["--model_name_or_path", str(base), "--train_datasets", str(data), "--train_template", "LLaVA"]
    args += ["--per_device_train_batch_size", "2", "--num_train_epochs", "3", "--save_strategy", "no"]
    args += ["--use_cpu", "True", "--report_to", "none", "--skip_bad_rows", "True", "--disable_tqdm", "True"]

    with caplog.at_level(logging.WARNING):
        main([*args, "--output_dir", str(tmp_path / "ok"), "--max_bad_rows", "1"])
    records = [json.loads(line) for line in (tmp_path / "ok" / "bad_rows.jsonl").read_text().splitlines()]
    assert [(r["index"], r["id"], r["cause"]) for r in records] == [(2, "2", "missing_media")]
    assert "Skipped 1 bad row (each counted once)" in caplog.text

    # Every image row fails: training stops at the cap (default 1% of 8 rows: none) and names the likely cause.
    with pytest.raises(TooManyBadRowsError, match=r"`missing_media`.*--media_root.*elsewhere"):
        main([*args, "--output_dir", str(tmp_path / "wrong"), "--media_root", str(tmp_path / "elsewhere")])
    assert (tmp_path / "wrong" / "bad_rows.jsonl").is_file()
