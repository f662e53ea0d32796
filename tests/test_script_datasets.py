"""Hub datasets that are loading scripts load from their parquet conversion (`refs/convert/parquet`), offline.

Stand-ins: a local folder holding a loading script (what `datasets` >= 4 refuses, with its own error) and a local
folder laid out like the conversion branch. Only the Hub boundary is faked: `datasets.load_dataset` of the Hub id
answers with the script folder's real error, and at `revision="refs/convert/parquet"` reads the conversion folder.
"""

import io
import logging
from pathlib import Path

import datasets
import pytest
from PIL import Image

from any2text.data.loading import DatasetSpec, MultimodalDataset, load_spec
from any2text.data.script_datasets import PARQUET_REVISION, is_script_dataset_error, parquet_conversion_files

HUB_ID = "HuggingFaceM4/VQAv2"

SCRIPT = """import datasets


class VQAv2(datasets.GeneratorBasedBuilder):
    def _info(self):
        return datasets.DatasetInfo(features=datasets.Features({"question": datasets.Value("string")}))

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN)]

    def _generate_examples(self):
        yield 0, {"question": "never run"}
"""


def _png(red: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (red, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(folder: Path, prefix: str, n: int, shards: int = 1) -> None:
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"),
         "multiple_choice_answer": datasets.Value("string")}
    )  # fmt: skip
    folder.mkdir(parents=True)
    for shard in range(shards):
        ids = range(shard * n, (shard + 1) * n)
        rows = {
            "image": [{"bytes": _png(10 * i), "path": None} for i in ids],
            "question": [f"{prefix} question {i}?" for i in ids],
            "multiple_choice_answer": [f"{prefix}{i}" for i in ids],
        }
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{shard:04d}.parquet")


@pytest.fixture
def script_folder(tmp_path) -> Path:
    folder = tmp_path / "VQAv2"
    folder.mkdir()
    (folder / "VQAv2.py").write_text(SCRIPT)
    return folder


@pytest.fixture
def conversion(tmp_path) -> Path:
    """The `refs/convert/parquet` branch's layout: `<config>/<split>/NNNN.parquet`, `partial-<split>` when cut."""
    root = tmp_path / "conversion"
    _write_split(root / "default" / "train", "train", 3, shards=2)
    _write_split(root / "default" / "partial-validation", "val", 2)
    _write_split(root / "other" / "train", "other", 1)
    return root


@pytest.fixture
def hub(monkeypatch, script_folder, conversion) -> list[dict]:
    """Fake the Hub for `HUB_ID` only; every other path goes to the real `load_dataset`. Returns the calls made."""
    real_load_dataset = datasets.load_dataset
    calls = []

    def load_dataset(path, *args, revision=None, **kwargs):
        if path != HUB_ID:
            return real_load_dataset(path, *args, revision=revision, **kwargs)
        calls.append({"revision": revision, **kwargs})
        if revision == PARQUET_REVISION:
            return real_load_dataset(str(conversion), *args, **kwargs)
        return real_load_dataset(str(script_folder), *args, **kwargs)  # datasets' own error for a script

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_datasets_refuses_a_loading_script_with_the_error_we_recognise(script_folder):
    with pytest.raises(RuntimeError) as raised:
        datasets.load_dataset(str(script_folder), split="train")
    assert is_script_dataset_error(raised.value)
    assert not is_script_dataset_error(RuntimeError("CUDA error: out of memory"))
    assert not is_script_dataset_error(ValueError("Dataset scripts are no longer supported"))


def test_a_hub_script_dataset_loads_its_parquet_conversion_and_says_so(hub, caplog):
    with caplog.at_level(logging.WARNING, logger="any2text"):
        rows = load_spec(DatasetSpec(HUB_ID, "VQAv2", split="train"))
    assert rows["question"] == [f"train question {i}?" for i in range(6)]  # both shards of default/train
    assert [call["revision"] for call in hub] == [None, PARQUET_REVISION]
    assert f"`{HUB_ID}` is a dataset loading script" in caplog.text and PARQUET_REVISION in caplog.text
    # What training reads: the messages, image decoded from the parquet bytes.
    sample = MultimodalDataset(DatasetSpec(HUB_ID, "VQAv2", split="train"))[1]["messages"]
    assert sample[0]["content"][0]["image"].getpixel((0, 0)) == (10, 0, 0)
    assert sample[1]["content"] == [{"type": "text", "text": "train1"}]


def test_the_conversion_picks_the_config_and_a_partial_split(hub):
    assert load_spec(DatasetSpec(HUB_ID, "VQAv2", name="other"))["question"] == ["other question 0?"]
    validation = load_spec(DatasetSpec(HUB_ID, "VQAv2", split="validation"))
    assert validation["multiple_choice_answer"] == ["val0", "val1"]
    assert load_spec(DatasetSpec(HUB_ID, "VQAv2", split="train[:2]"))["multiple_choice_answer"] == ["train0", "train1"]
    assert parquet_conversion_files("train[:2]", "en") == {
        "train": ["en/train/*.parquet", "en/partial-train/*.parquet"]
    }
    with pytest.raises(ValueError, match="no files for config `missing`, split `train`.*`--train_name`"):
        load_spec(DatasetSpec(HUB_ID, "VQAv2", name="missing"))


def test_a_local_script_folder_is_a_clear_error(script_folder):
    with pytest.raises(ValueError, match=r"`.*VQAv2` is a dataset loading script.*point the dataset at those files"):
        load_spec(DatasetSpec(str(script_folder), "VQAv2"))


def test_a_hub_dataset_that_is_not_a_script_loads_as_before(tmp_path, monkeypatch):
    _write_split(tmp_path / "plain" / "data", "plain", 2)
    monkeypatch.chdir(tmp_path)  # `plain` is resolved like a Hub id would be, by `load_dataset` itself
    assert load_spec(DatasetSpec("plain", "VQAv2"))["question"] == ["plain question 0?", "plain question 1?"]
