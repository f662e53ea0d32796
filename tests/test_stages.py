"""One stage set-up: every data flag means the same in every stage (SFT, DPO, reward).

Two parts: the findings of issue 18 (each through the stage's own entry point, `python -m any2text.train` /
`python -m any2text.dpo` / `python -m any2text.reward`), and a matrix of stage x data flag on the shared data set-up (`stage.build_stage_data`),
which is what every stage's trainer is given.
"""

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import pytest
from PIL import Image
from transformers import AutoProcessor

from any2text.data.bad_rows import BadRowError, TooManyBadRowsError
from any2text.data.collator import EMPTY_BATCH_KEY, IGNORE_INDEX
from any2text.data.packing import PACKED_KEY, PackedDataset
from any2text.data.templates import get_template
from any2text.modalities import MODALITIES
from any2text.training import dpo as dpo_module
from any2text.training import reward as reward_module
from any2text.training.arguments import DataArguments
from any2text.training.stage import Stage, build_stage, build_stage_data
from any2text.training.train import SFT, build_trainer
from any2text.training.train import main as sft_main
from any2text.training.train import parse_args as sft_parse_args
from test_data_video import write_video

# ---------------------------------------------------------------------------------------------------------------------
# The stages, and their data written from one description of the rows


@dataclass
class StageCase:
    stage: Stage
    template: str
    main: Callable[[list[str]], int]
    parse_args: Callable[[list[str]], tuple]
    build: Callable[..., object]  # the argument groups -> the stage's trainer
    extra_args: tuple[str, ...] = ()

    def row(self, i: int, image: str | None, answer: str, other: str, video: str | None = None) -> dict:
        tag = "<image>" if image else "<video>" if video else ""
        if self.stage.data == "pairs":
            row = {"id": f"r{i}", "prompt": f"{tag} What colour?".strip(), "chosen": answer, "rejected": other}
            if image or video:
                row["images" if image else "videos"] = [image or video]
            return row
        row = {"id": f"r{i}", "conversations": [
            {"from": "human", "value": f"{tag}\nWhat colour?" if tag else "What colour?"},
            {"from": "gpt", "value": answer},
        ]}  # fmt: skip
        if image or video:
            row["image" if image else "video"] = image or video
        return row


STAGES = {
    "sft": StageCase(SFT, "LLaVA", sft_main, sft_parse_args, build_trainer),
    "dpo": StageCase(
        dpo_module.DPO,
        "TRL-Preference",
        dpo_module.main,
        dpo_module.parse_args,
        dpo_module.build_dpo_trainer,
        ("--precompute_ref_log_probs", "True"),
    ),  # fmt: skip
    "reward": StageCase(
        reward_module.REWARD,
        "TRL-Preference",
        reward_module.main,
        reward_module.parse_args,
        lambda *groups: build_stage(reward_module.REWARD, *groups),
    ),
}
LONG = " ".join(["word"] * 150)  # far over the `--max_length` the tests use (media included: 16 image tokens)
MAX_LENGTH = 120


def write_rows(case: StageCase, folder: Path, kinds: list[str], name: str = "data.json") -> Path:
    """One row per kind: `good` (an image), `text`, `missing` (its image file is not there), `outside` (its image lies
    outside the media root), `long` (over `MAX_LENGTH`), `bomb` (an image of more pixels than PIL allows here),
    `video` (a 6-frame mp4), `badvideo` (an mp4 that is not one)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, kind in enumerate(kinds):
        image, video = f"img{i}.png", None
        if kind in ("video", "badvideo"):
            image, video = None, f"clip{i}.mp4"
            if kind == "video":
                write_video(folder / video, num_frames=6)
            else:
                (folder / video).write_bytes(b"\x00" * 100)
        answer, other = ["red", "blue"][i % 2], ["green", "black"][i % 2]
        if kind in ("good", "long"):
            Image.new("RGB", (16, 16), (40 * i % 255, 0, 0)).save(folder / image)
        elif kind == "bomb":
            Image.new("RGB", (64, 64)).save(folder / image)
        elif kind == "missing":
            image = "missing.png"
        elif kind == "outside":
            Image.new("RGB", (16, 16)).save(folder.parent / "outside.png")
            image = "../outside.png"
        elif kind == "text":
            image = None
        if kind == "long":
            answer = LONG
        rows.append(case.row(i, image, answer, other, video))
    path = folder / name
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


def _args(case: StageCase, checkpoint: Path, data: Path, output: Path, **flags: str) -> list[str]:
    args = {
        "model_name_or_path": str(checkpoint), "output_dir": str(output), "train_datasets": str(data),
        "train_template": case.template, "per_device_train_batch_size": "2", "max_steps": "2", "logging_steps": "1",
        "save_strategy": "no", "use_cpu": "True", "report_to": "none", "disable_tqdm": "True", "seed": "0",
        "log_level": "warning", **flags,
    }  # fmt: skip
    return [item for key, value in args.items() for item in (f"--{key}", value)] + list(case.extra_args)


def _bad_rows(output: Path) -> list[dict]:
    path = output / "bad_rows.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---------------------------------------------------------------------------------------------------------------------
# The findings, through each stage's entry point


@pytest.mark.parametrize("stage", STAGES)
def test_max_bad_rows_is_honoured(stage, tiny_checkpoint, tmp_path):
    """`--max_bad_rows 0` stops at the first bad row; a cap of 1 lets 1 bad row of 6 be skipped (the default 1% of 6
    rows would allow none) and lists it; the stop message names the flag."""
    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["missing", "good", "good", "good", "text", "good"])
    with pytest.raises(TooManyBadRowsError, match="raise `--max_bad_rows`"):
        case.main(_args(case, tiny_checkpoint, data, tmp_path / "zero", skip_bad_rows="True", max_bad_rows="0"))
    assert case.main(_args(case, tiny_checkpoint, data, tmp_path / "one", skip_bad_rows="True", max_bad_rows="1")) == 0
    assert [(row["id"], row["cause"]) for row in _bad_rows(tmp_path / "one")] == [("r0", "missing_media")]


@pytest.mark.parametrize("stage", STAGES)
def test_allow_media_outside_root_is_honoured(stage, tiny_checkpoint, tmp_path):
    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["outside", "good", "text", "good"])
    with pytest.raises(BadRowError, match="allow_media_outside_root"):
        case.main(_args(case, tiny_checkpoint, data, tmp_path / "refused"))
    assert case.main(_args(case, tiny_checkpoint, data, tmp_path / "out", allow_media_outside_root="True")) == 0


@pytest.mark.parametrize("stage", STAGES)
def test_over_long_sample_is_a_named_skippable_bad_row_found_by_validation(stage, tiny_checkpoint, tmp_path):
    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["good", "good", "long", "text"])
    flags = {"max_length": str(MAX_LENGTH), "truncation": "error"}
    # `--validate_rows` finds it while the stage is set up, before any step; the error names dataset, row and id.
    groups = case.parse_args(_args(case, tiny_checkpoint, data, tmp_path / "v", validate_rows="True", **flags))
    with pytest.raises(BadRowError, match=rf"Row 2 of dataset `{data}`.*id `r2`.*max_length={MAX_LENGTH}"):
        case.build(*groups)
    with pytest.raises(BadRowError, match=r"Row 2 of dataset .*id `r2`"):
        case.main(_args(case, tiny_checkpoint, data, tmp_path / "error", **flags))
    out = tmp_path / "skip"
    assert case.main(_args(case, tiny_checkpoint, data, out, skip_bad_rows="True", max_bad_rows="1", **flags)) == 0
    assert [(row["id"], row["cause"]) for row in _bad_rows(out)] == [("r2", "too_long")]


@pytest.mark.parametrize("stage", STAGES)
def test_truncation_drop_with_batch_size_1_skips_the_step_and_counts_it(stage, tiny_checkpoint, tmp_path):
    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["long", "good"])
    out = tmp_path / "out"
    args = _args(case, tiny_checkpoint, data, out, max_length=str(MAX_LENGTH), truncation="drop",
                 per_device_train_batch_size="1", max_steps="-1", num_train_epochs="1")  # fmt: skip
    assert case.main(args) == 0
    results = json.loads((out / "train_results.json").read_text())
    assert results["train_empty_batches_skipped"] == 1
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite: no NaN from an empty batch


@pytest.mark.parametrize("value", [1.7, 2.9, True, "3", 0, None])
@pytest.mark.parametrize("template", ["AA_TI2T", "AA_TA2T"])
def test_overall_response_must_be_exactly_1_or_2(template, value):
    media = {"image": "a.png", "question": "Q?"} if template == "AA_TI2T" else {"audio_path": "a.wav", "prompt": "Q?"}
    row = {"id": "x7", **media, "response_1": "one", "response_2": "two", "overall_response": value}
    with pytest.raises(ValueError, match="overall_response"):
        get_template(template)(row)
    for good, chosen in ((1, "one"), (2, "two"), (2.0, "two"), ("1", "one")):
        pair = get_template(template)({**row, "overall_response": good})
        assert pair.chosen[0]["content"][0]["text"] == chosen


def test_identical_chosen_and_rejected_is_a_named_bad_row(tmp_path):
    from any2text.data.loading import DatasetSpec
    from any2text.data.preference import PreferenceDataset

    with pytest.raises(ValueError, match="identical"):
        get_template("TRL-Preference")({"prompt": "Q?", "chosen": "same ", "rejected": "same"})
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"id": "dup", "prompt": "Q?", "chosen": "A", "rejected": "A"}]))
    with pytest.raises(BadRowError, match="Row 0 .*id `dup`.*identical"):
        PreferenceDataset(DatasetSpec(path=str(data), template="TRL-Preference"))[0]


@pytest.mark.parametrize("stage", STAGES)
def test_decompression_bomb_is_a_named_skippable_bad_row(stage, processor, tmp_path, monkeypatch):
    case = STAGES[stage]
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 16x16 images pass; 64x64 is "a bomb" (> 2x)
    data = write_rows(case, tmp_path / "data", ["good", "bomb", "good"])
    built = _build(case, processor, data, tmp_path / "strict")
    with pytest.raises(BadRowError, match=r"Row 1 .*id `r1`.*too large to decode"):
        built.train_dataset[1]
    built = _build(case, processor, data, tmp_path / "skip", skip_bad_rows=True, max_bad_rows=1)
    assert built.train_dataset[1]["source"]["id"] == "r2"  # the next good row
    assert [(row["id"], row["cause"]) for row in _bad_rows(tmp_path / "skip")] == [("r1", "oversized_media")]


@pytest.mark.parametrize("stage", STAGES)
def test_packing_measures_lengths_without_decoding_media(stage, tiny_checkpoint, tmp_path, monkeypatch):
    """The length index comes from the rows (the DPO set-up used to render every pair through a wrapper, decoding
    every image before step 1)."""
    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["good", "text", "good", "good"])
    decoded = []
    image = MODALITIES["image"]
    spy = dataclasses.replace(image, decoder=lambda *a, **k: decoded.append(a[0]) or image.decoder(*a, **k))
    monkeypatch.setitem(MODALITIES, "image", spy)
    trainer = case.build(*case.parse_args(_args(case, tiny_checkpoint, data, tmp_path / "o", packing="True",
                                                 max_length="400")))  # fmt: skip
    assert decoded == []
    packed = trainer.train_dataset
    assert isinstance(packed, PackedDataset) and len(packed) < 4 and max(packed.lengths) <= 400


@pytest.mark.parametrize("stage", [name for name, case in STAGES.items() if case.stage.data == "pairs"])
def test_group_by_length_trains_on_pairs(stage, tiny_checkpoint, tmp_path):
    case = STAGES[stage]
    data = write_rows(case, tmp_path / "data", ["good", "text", "good", "long"])
    out = tmp_path / "out"
    assert case.main(_args(case, tiny_checkpoint, data, out, train_sampling_strategy="group_by_length",
                           max_steps="1")) == 0  # fmt: skip
    assert (out / "train_results.json").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Stage x data flag, on the shared set-up


def _build(case: StageCase, processor, data: Path, output: Path, sampling: str = "random", **flags):
    """The stage's data set-up; `flags` go to the data group or (TRL's names) to the stage's config class."""
    config_fields = {"max_length", "truncation", "padding_free", "packing", "packing_strategy"}
    config = {key: flags.pop(key) for key in list(flags) if key in config_fields}
    data_args = DataArguments(train_datasets=str(data), train_template=case.template, **flags)
    training_args = case.stage.config_class(
        output_dir=str(output), use_cpu=True, report_to="none", train_sampling_strategy=sampling, **config
    )
    return build_stage_data(case.stage, data_args, training_args, processor)


def _batches(built, batch_size: int = 2) -> list[dict]:
    dataset = built.train_dataset
    return [built.collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
            for i in range(0, len(dataset), batch_size)]  # fmt: skip


def _num_samples(batch: dict) -> int:
    """Samples (or pairs) a batch holds: labelled rows for samples, pairs for pairs."""
    if "pair_mask" in batch:
        return int(batch["pair_mask"].sum())
    if "position_ids" in batch and "attention_mask" not in batch:
        labels = batch["labels"]
        restarts = batch["position_ids"] == 0
        return int(sum((labels[restarts.cumsum(-1) == k] != IGNORE_INDEX).any() for k in range(1, 20)))
    return int((batch["labels"] != IGNORE_INDEX).any(-1).sum())


def flag_skip_bad_rows(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "missing", "good", "text"])
    with pytest.raises(BadRowError, match=r"Row 1 of dataset .*id `r1`"):
        _batches(_build(case, processor, data, tmp_path / "strict"))
    built = _build(case, processor, data, tmp_path / "skip", skip_bad_rows=True, max_bad_rows=1)
    assert sum(_num_samples(batch) for batch in _batches(built)) == 4  # the bad row's place taken by the next row
    assert [row["id"] for row in _bad_rows(tmp_path / "skip")] == ["r1"]


def flag_max_bad_rows(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "missing", "good", "missing"])
    with pytest.raises(TooManyBadRowsError, match="(?s)`max_bad_rows=1`.*raise `--max_bad_rows`"):
        _batches(_build(case, processor, data, tmp_path / "one", skip_bad_rows=True, max_bad_rows=1))
    built = _build(case, processor, data, tmp_path / "two", skip_bad_rows=True, max_bad_rows=2)
    _batches(built)
    assert len(_bad_rows(tmp_path / "two")) == 2
    with pytest.raises(TooManyBadRowsError):
        _batches(_build(case, processor, data, tmp_path / "zero", skip_bad_rows=True, max_bad_rows=0))


def flag_allow_media_outside_root(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["outside", "good"])
    with pytest.raises(BadRowError, match="leads outside `media_root=.*--allow_media_outside_root True"):
        _batches(_build(case, processor, data, tmp_path / "refused"))
    (batch,) = _batches(_build(case, processor, data, tmp_path / "allowed", allow_media_outside_root=True))
    assert batch["pixel_values"].shape[0] == 2


def flag_truncation_error(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "long"])
    built = _build(case, processor, data, tmp_path / "e", max_length=MAX_LENGTH, truncation="error")
    with pytest.raises(BadRowError, match=rf"Row 1 of dataset .*id `r1`.*max_length={MAX_LENGTH}"):
        built.train_dataset[1]  # as the row is read, before any batch
    built = _build(case, processor, data, tmp_path / "s", max_length=MAX_LENGTH, skip_bad_rows=True, max_bad_rows=1)
    assert sum(_num_samples(batch) for batch in _batches(built)) == 2  # the long row's place taken by the good one
    assert [(row["id"], row["cause"]) for row in _bad_rows(tmp_path / "s")] == [("r1", "too_long")]


def flag_truncation_drop(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["long", "good"])
    built = _build(case, processor, data, tmp_path / "d", max_length=MAX_LENGTH, truncation="drop")
    alone, kept = _batches(built, batch_size=1)
    assert alone[EMPTY_BATCH_KEY] is True and built.collator.num_dropped == 1  # skipped by the trainer, counted
    assert EMPTY_BATCH_KEY not in kept and _num_samples(kept) == 1


def flag_truncation_text(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["long", "good"])
    built = _build(case, processor, data, tmp_path / "t", max_length=MAX_LENGTH, truncation="text")
    (batch,) = _batches(built)
    assert batch["input_ids"].shape[1] <= MAX_LENGTH and _num_samples(batch) == 2 and built.collator.num_dropped == 0
    assert batch["pixel_values"].shape[0] == 2  # media spans are never cut


def flag_packing(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "text", "good", "good", "text"])
    built = _build(case, processor, data, tmp_path / "p", max_length=300, packing=True)
    packed = built.train_dataset
    assert isinstance(packed, PackedDataset) and len(packed) < 5 and max(packed.lengths) <= 300
    for item, length in zip((packed[i] for i in range(len(packed))), packed.lengths):
        batch = built.collator([item])
        assert batch["input_ids"].shape == (1, length) and _num_samples(batch) == len(item[PACKED_KEY])


def flag_padding_free(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "text", "good"])
    padded = _build(case, processor, data, tmp_path / "a")
    flat = _build(case, processor, data, tmp_path / "b", padding_free=True)
    (batch,) = _batches(flat, batch_size=3)
    assert batch["input_ids"].shape[0] == 1 and _num_samples(batch) == 3
    (reference,) = _batches(padded, batch_size=3)
    assert batch["input_ids"].shape[1] < reference["input_ids"].numel()  # no padding


def flag_group_by_length(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "text", "good"])
    built = _build(case, processor, data, tmp_path / "g", sampling="group_by_length")
    lengths = built.train_dataset.lengths  # the length index, measured at set-up
    probe = built.collator
    assert lengths == [probe.sample_length(built.train_dataset.messages(i, decode_media=False)) for i in range(3)]


def flag_validate_rows(case, processor, tmp_path):
    data = write_rows(case, tmp_path / "data", ["good", "missing", "good"])
    with pytest.raises(BadRowError, match=r"Row 1 of dataset .*id `r1`"):
        _build(case, processor, data, tmp_path / "v", validate_rows=True)  # at set-up: no item read yet
    built = _build(case, processor, data, tmp_path / "vs", validate_rows=True, skip_bad_rows=True, max_bad_rows=1)
    assert len(built.train_dataset) == 2


def flag_counts_and_weights(case, processor, tmp_path):
    first = write_rows(case, tmp_path / "a", ["good", "good"])
    second = write_rows(case, tmp_path / "b", ["text", "text", "text", "text"])
    built = _build(case, processor, f"{first},{second}", tmp_path / "w", train_weights="3,1", train_num_samples=8)
    dataset = built.train_dataset
    assert len(dataset) == 8
    sources = [dataset[i]["source"]["dataset"] for i in range(8)]
    assert sum(str(first) in source for source in sources) == 6


FLAGS = {
    "skip_bad_rows": flag_skip_bad_rows,
    "max_bad_rows": flag_max_bad_rows,
    "allow_media_outside_root": flag_allow_media_outside_root,
    "truncation_error": flag_truncation_error,
    "truncation_drop": flag_truncation_drop,
    "truncation_text": flag_truncation_text,
    "packing": flag_packing,
    "padding_free": flag_padding_free,
    "group_by_length": flag_group_by_length,
    "validate_rows": flag_validate_rows,
    "counts_and_weights": flag_counts_and_weights,
}


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_data_flag_means_the_same_in_every_stage(stage, flag, processor, tmp_path):
    FLAGS[flag](STAGES[stage], processor, tmp_path)


@pytest.fixture(scope="module")
def video_processor(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    processor.num_frames = 4
    return processor


@pytest.mark.parametrize("stage", STAGES)
def test_video_rows_pack_and_bad_videos_are_skipped_in_every_stage(stage, video_processor, tmp_path):
    case, frame_tokens = STAGES[stage], 4 * video_processor.video_frame_seq_length
    data = write_rows(case, tmp_path / "data", ["video", "text", "video", "good"])
    built = _build(case, video_processor, data, tmp_path / "p", max_length=400, packing=True)
    packed = built.train_dataset
    assert len(packed) < 4
    batches = [built.collator([packed[i]]) for i in range(len(packed))]
    for batch, length in zip(batches, packed.lengths):  # the length index (no video decoded) is the batch's
        assert batch["input_ids"].shape == (1, length)
    assert sum(b["pixel_values_videos"].shape[:-3].numel() for b in batches if "pixel_values_videos" in b) == 8
    video_id = video_processor.tokenizer.convert_tokens_to_ids("<video>")
    assert sum(int((batch["input_ids"] == video_id).sum()) for batch in batches) == 2 * frame_tokens

    data = write_rows(case, tmp_path / "bad", ["video", "badvideo", "good"])
    with pytest.raises(BadRowError, match=r"Row 1 of dataset .*id `r1`.*clip1.mp4"):
        _batches(_build(case, video_processor, data, tmp_path / "strict"), batch_size=3)
    built = _build(case, video_processor, data, tmp_path / "skip", skip_bad_rows=True, max_bad_rows=1)
    assert sum(_num_samples(batch) for batch in _batches(built, batch_size=3)) == 3
    assert [(row["id"], row["cause"]) for row in _bad_rows(tmp_path / "skip")] == [("r1", "undecodable_media")]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration: datasets as records in a config file, comma lists on the command line


def test_dataset_records_in_a_config_file_equal_the_comma_lists(tmp_path):
    import yaml

    from any2text.data.loading import parse_dataset_specs

    mixture = yaml.safe_load((Path(__file__).parents[1] / "examples" / "stage2_mixture.yaml").read_text())
    flat = yaml.safe_load((Path(__file__).parents[1] / "examples" / "stage2_vision_audio.yaml").read_text())
    for name, config in (("mixture", mixture), ("flat", flat)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**config, "use_cpu": True}))
    records = sft_parse_args([str(tmp_path / "mixture.yaml")])[1]
    lists = sft_parse_args([str(tmp_path / "flat.yaml")])[1]
    assert records.dataset_specs("train") == lists.dataset_specs("train")
    (spec, _) = records.dataset_specs("train")
    assert (spec.template, spec.weight, spec.split, spec.media_root) == (
        "LLaVA",
        3.0,
        "train",
        "data/LLaVA-Instruct/images",
    )

    # DPO reads the same records; evaluation records keep their own split default (`validation`).
    pairs = {"model_name_or_path": "m", "output_dir": str(tmp_path / "o"), "use_cpu": True, "beta": 0.2,
             "datasets": [{"path": "p.json", "template": "RLAIF-V"}],
             "eval_datasets": [{"path": "q.json", "template": "TRL-Preference", "name": "x"}]}  # fmt: skip
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(pairs))
    data_args = dpo_module.parse_args([str(tmp_path / "dpo.yaml")])[1]
    assert data_args.dataset_specs("eval") == parse_dataset_specs("q.json", "TRL-Preference", "validation", names="x")
    for bad, match in (
        ({"datasets": [{"path": "p.json"}]}, "needs `path` and `template`"),
        ({"datasets": [{"path": "p.json", "template": "LLaVA", "columns": 1}]}, "unknown: `columns`"),
        ({"datasets": [{"path": "p.json", "template": "LLaVA"}], "train_datasets": "a.json"}, "use one form"),
    ):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model_name_or_path": "m", "output_dir": "o", **bad}))
        with pytest.raises(ValueError, match=match):
            sft_parse_args([str(tmp_path / "bad.yaml")])


def test_dpo_and_grpo_cards_name_one_reference_rule():
    """The reference a DPO or GRPO card names: adapters disabled under LoRA, else `ref_model_name_or_path`, else the
    starting checkpoint (one rule, `reference_description`)."""
    from types import SimpleNamespace

    from any2text.training.stage import reference_description

    model = SimpleNamespace(model_name_or_path="start")
    lora, full = SimpleNamespace(use_peft=True), SimpleNamespace(use_peft=False)
    assert reference_description(model, lora, SimpleNamespace(ref_model_name_or_path="ref")) == (
        "the model with its adapters disabled"
    )
    assert reference_description(model, full, SimpleNamespace(ref_model_name_or_path="ref")) == "ref"
    assert reference_description(model, full, SimpleNamespace(ref_model_name_or_path=None)) == "start"
