"""Padding-free and packed batches: same loss and gradients as padded ones, whole samples, exact resume, switches."""

import dataclasses
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments

from any2text.data.collator import IGNORE_INDEX, MultimodalCollator
from any2text.data.loading import MultimodalDataset, parse_dataset_specs
from any2text.data.packing import (
    VARLEN_SDPA,
    PackedCollator,
    PackedDataset,
    bfd_bins,
    sample_bounds,
    use_varlen_sdpa,
    varlen_sdpa_attention_forward,
)
from any2text.modalities import MODALITIES
from any2text.training.throughput import apply_liger_kernel
from any2text.training.train import main
from conftest import SAMPLING_RATE, tiny_models, write_llava_data
from test_train import common_args, losses, weights

# ---------------------------------------------------------------------------------------------------------------------
# Same samples, same loss and gradients


def _image(color):
    return Image.new("RGB", (12, 12), color)


def _clip(freq):
    t = np.arange(int(0.25 * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _video(level):
    """8 frames (the processor's default `num_frames`) of a brightening grey."""
    return np.stack([np.full((12, 12, 3), (level + 10 * i) % 256, np.uint8) for i in range(8)])


def _sample(kind: str, answer: str) -> dict:
    content = []
    if kind in ("image", "both"):
        content.append({"type": "image", "image": _image((len(answer) * 20, 0, 0))})
    if kind in ("audio", "both"):
        content.append({"type": "audio", "audio": _clip(200.0 + 50 * len(answer))})
    if kind == "video":
        content.append({"type": "video", "video": _video(len(answer) * 3)})
    content.append({"type": "text", "text": "Describe it, please." if kind != "text" else "Say something."})
    return {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    }


# Answers of very different lengths, so the padded batch really is padded.
ANSWERS = ["red", "a long answer that goes on for quite a few more tokens than the others", "blue sky", "ok"]
BATCHES = {
    "image": ["image"] * 4,
    "audio": ["audio"] * 4,
    "text": ["text"] * 4,
    "mixed": ["image", "text", "audio", "both"],
    "video": ["video", "text", "video", "image"],
    "all": ["image", "video", "audio", "both"],
}


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tiny_llava_checkpoint):
    return {"any2text": tiny_checkpoint, "llava": tiny_llava_checkpoint}


def _loss_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(0)  # CLAP's stochastic depth: the same draws for both batches
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, padded, flat):
    loss_a, grads_a = _loss_and_grads(model, padded)
    loss_b, grads_b = _loss_and_grads(model, flat)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-4, rtol=0, msg=name)
    return loss_a


@pytest.mark.parametrize(
    ("checkpoint", "kind", "attn"),
    [
        ("any2text", "image", "sdpa"),
        ("any2text", "audio", "sdpa"),
        ("any2text", "text", "sdpa"),
        ("any2text", "mixed", "sdpa"),
        ("any2text", "mixed", "eager"),
        ("any2text", "mixed", VARLEN_SDPA),
        ("any2text", "video", "sdpa"),
        ("any2text", "all", VARLEN_SDPA),
        ("llava", "image", "sdpa"),
        ("llava", "image", VARLEN_SDPA),
        ("llava", "text", "sdpa"),
        ("llava", "mixed", "eager"),
    ],
)
def test_padding_free_and_packed_equal_padded(checkpoints, checkpoint, kind, attn):
    path = checkpoints[checkpoint]
    # The default is SDPA where a part supports it (CLAP does not, so `sdpa` cannot be asked for the whole model).
    kwargs = {"attn_implementation": "eager"} if attn == "eager" else {}
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if attn == VARLEN_SDPA:  # what `--padding_free` / `--packing` switch an `sdpa` language model to
        assert use_varlen_sdpa(model.model.language_model)
    assert model.config.text_config._attn_implementation == attn
    for tower in (model.model.vision_tower, getattr(model.model, "audio_tower", None)):
        if tower is not None:  # frozen, as in stage 1 / 2 (and fast): projectors and the language model train
            tower.requires_grad_(False)
    model.train()
    collator = MultimodalCollator(AutoProcessor.from_pretrained(path))
    kinds = BATCHES[kind]
    if checkpoint == "llava":  # stock Llava has no audio encoder
        kinds = [{"audio": "image", "both": "image"}.get(k, k) for k in kinds]
    samples = [_sample(k, answer) for k, answer in zip(kinds, ANSWERS)]
    padded = collator(samples)
    assert (padded["attention_mask"] == 0).any(), "the padded batch should hold padding"
    assert ("pixel_values_videos" in padded) == ("video" in kinds)

    flat = PackedCollator(collator)(samples)
    assert flat["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    assert "attention_mask" not in flat and flat["use_cache"] is False
    _assert_same(model, padded, flat)

    # Packed: two rows of two samples each, media in row order.
    packed = PackedCollator(collator, packing=True)([{"packed": samples[:2]}, {"packed": samples[2:]}])
    assert packed["input_ids"].shape[0] == 2
    _assert_same(model, padded, packed)
    # The same rows joined into one, as flash-attention needs them (it reads packed positions in one row only).
    joined = PackedCollator(collator, packing=True, single_row=True)(
        [{"packed": samples[:2]}, {"packed": samples[2:]}]
    )
    assert joined["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    _assert_same(model, padded, joined)

    # Control: the same row with positions that do not restart lets attention cross samples, and the loss moves.
    # (Logits, not the loss: a tiny random model's loss sits near log(vocab) and may barely move.)
    flat = {key: value for key, value in flat.items() if key != "labels"}
    crossed = {**flat, "position_ids": torch.arange(flat["input_ids"].shape[1])[None]}
    with torch.no_grad():
        torch.manual_seed(0)
        logits = model(**flat).logits
        torch.manual_seed(0)
        assert not torch.allclose(model(**crossed).logits, logits, atol=1e-4)


def test_videos_of_different_frame_counts_join_as_frames(tiny_checkpoint):
    """A sample's videos come one row per video `(videos, T, 3, H, W)`; rows whose `T` differ are joined as frames,
    and the model reads padded, padding-free and packed batches alike."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    model.model.vision_tower.requires_grad_(False)
    model.model.audio_tower.requires_grad_(False)
    model.train()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    processor.num_frames = None  # every frame: the videos keep their own lengths
    collator = MultimodalCollator(processor)
    samples = [_sample("video", answer) for answer in ANSWERS[:3]]
    samples[1]["messages"][0]["content"][0]["video"] = _video(40)[:4]
    samples[2]["messages"][0]["content"].insert(0, {"type": "video", "video": _video(90)[:4]})  # 8 + 4 frames
    assert collator(samples[:1])["pixel_values_videos"].shape == (1, 8, 3, 8, 8)
    assert collator(samples[2:])["pixel_values_videos"].shape == (12, 3, 8, 8)
    padded = collator(samples)
    assert padded["pixel_values_videos"].shape == (8 + 4 + 12, 3, 8, 8)
    _assert_same(model, padded, PackedCollator(collator)(samples))
    packed = PackedCollator(collator, packing=True)([{"packed": samples[:1]}, {"packed": samples[1:]}])
    assert packed["pixel_values_videos"].shape == (24, 3, 8, 8)
    _assert_same(model, padded, packed)
    same = PackedCollator(collator, packing=True)([{"packed": samples[:1]}, {"packed": samples[:1]}])
    assert same["pixel_values_videos"].shape == (2, 8, 3, 8, 8)  # equal lengths keep one row per video


class _Attention(torch.nn.Module):
    is_causal = True


def test_varlen_sdpa_attends_within_each_sample_without_a_row_mask(monkeypatch):
    """Per-sample SDPA equals SDPA over the row under the block-diagonal causal mask, and never gets a mask itself."""
    torch.manual_seed(0)
    lengths = [[5, 9, 2], [7, 1, 4, 4]]  # two rows of 16, each ending in a pad "sample"
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    assert sample_bounds(position_ids) == [[(0, 5), (5, 14), (14, 16)], [(0, 7), (7, 8), (8, 12), (12, 16)]]
    query = torch.randn(2, 4, 16, 8, requires_grad=True)
    key, value = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(2))  # grouped-query: 2 KV heads

    sample = torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths])
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    mask = (causal & (sample[:, :, None] == sample[:, None, :]))[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), attn_mask=mask, scale=0.3
    ).transpose(1, 2)
    grads_expected = torch.autograd.grad(expected.square().sum(), (query, key, value))

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *a, **k: calls.append(k.get("attn_mask")) or sdpa(*a, **k),
    )
    output, _ = varlen_sdpa_attention_forward(
        _Attention(), query, key, value, None, scaling=0.3, position_ids=position_ids
    )
    assert len(calls) == 7 and all(m is None for m in calls)  # one causal call per sample, no (row, row) mask
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(output.square().sum(), (query, key, value))
    for got, want in zip(grads, grads_expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_varlen_sdpa_finds_the_samples_once_per_forward(checkpoints, monkeypatch):
    """Every layer gets the same `position_ids`: their samples are found once a forward (a device sync on GPU)."""
    import any2text.data.packing as packing

    model = AutoModelForImageTextToText.from_pretrained(checkpoints["any2text"])
    assert use_varlen_sdpa(model.model.language_model) and model.config.text_config.num_hidden_layers > 1
    collator = MultimodalCollator(AutoProcessor.from_pretrained(checkpoints["any2text"]))
    batch = PackedCollator(collator)([_sample(kind, answer) for kind, answer in zip(BATCHES["text"], ANSWERS)])
    calls = []
    monkeypatch.setattr(packing, "sample_bounds", lambda p: calls.append(p) or sample_bounds(p))
    with torch.no_grad():
        model(**batch)
        assert len(calls) == 1
        model(**batch)  # the same `position_ids` tensor again: nothing to find
        assert len(calls) == 1
        model(**{**batch, "position_ids": batch["position_ids"].clone()})  # the next batch's: found again
    assert len(calls) == 2
    position_ids = torch.tensor([[0, 1, 2, 0, 1]])
    assert packing._bounds_once(position_ids) == [[(0, 3), (3, 5)]]
    position_ids[0, 2] = 0  # changed in place: not the cached bounds any more
    assert packing._bounds_once(position_ids) == [[(0, 2), (2, 3), (3, 5)]]


# ---------------------------------------------------------------------------------------------------------------------
# Bins: whole samples, never over max_length


def test_bfd_bins_hold_every_sample_once_and_fit():
    rng = random.Random(0)
    lengths = [min(int(rng.paretovariate(1.2) * 20), 300) for _ in range(2000)]
    bins = bfd_bins(lengths, 300)
    assert sorted(i for bin_ in bins for i in bin_) == list(range(len(lengths)))
    sums = [sum(lengths[i] for i in bin_) for bin_ in bins]
    assert max(sums) <= 300
    # Best fit decreasing leaves at most one bin at most half full, and gets close to the lower bound.
    assert sum(s <= 150 for s in sums) <= 1
    assert len(bins) <= 1.05 * sum(lengths) / 300 + 1
    assert bfd_bins(lengths, 300) == bins  # deterministic: resume relies on it


def test_bfd_never_splits_a_sample():
    with pytest.raises(ValueError, match=r"Sample 1 has 12 tokens, more than `max_length=10`.*never splits"):
        bfd_bins([3, 12, 5], 10)


def test_packed_rows_hold_whole_samples_within_max_length(tmp_path):
    path = tiny_models().save_checkpoint(tmp_path / "ours")
    processor = AutoProcessor.from_pretrained(path)
    data = write_llava_data(tmp_path / "data", ["image", "audio", "both", "text"] * 3)
    specs = parse_dataset_specs(f"{data},", templates="LLaVA,")
    dataset = MultimodalDataset(specs, sampling_rate=processor.feature_extractor.sampling_rate)
    collator = MultimodalCollator(processor, max_length=80)
    lengths = [collator.sample_length(dataset.messages(i, decode_media=False)) for i in range(len(dataset))]
    packed = PackedDataset(dataset, lengths, max_length=80)
    assert len(packed) < len(dataset) and sorted(i for b in packed.bins for i in b) == list(range(len(dataset)))
    wrapped = PackedCollator(collator, packing=True)
    image_tokens = processor.image_seq_length
    for index in range(len(packed)):
        batch = wrapped([packed[index]])
        assert batch["input_ids"].shape[1] == packed.lengths[index] <= 80
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        # Each segment is exactly one sample as the padded collator encodes it, media spans and labels included
        # (except its first label, which packing clears so no sample is predicted from the one before).
        for (start, end), sample_index in zip(zip(starts, starts[1:]), packed.bins[index]):
            alone = collator([dataset[sample_index]])
            assert torch.equal(batch["input_ids"][0, start:end], alone["input_ids"][0])
            assert torch.equal(batch["labels"][0, start + 1 : end], alone["labels"][0, 1:])
            assert batch["labels"][0, start] == IGNORE_INDEX
        images = sum(
            item["type"] == "image"
            for i in packed.bins[index]
            for message in dataset.messages(i, decode_media=False)
            for item in message["content"]
        )
        assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == (
            images * image_tokens
        )
        assert batch.get("pixel_values", torch.empty(0)).shape[0] == images


def test_packing_strategy_that_splits_samples_is_refused():
    with pytest.raises(ValueError, match="`wrapped` cuts samples"):
        PackedDataset([{}], [3], max_length=8, strategy="wrapped")


# ---------------------------------------------------------------------------------------------------------------------
# The training entry point


@pytest.fixture(scope="module")
def workdir(train_workdir) -> Path:
    return train_workdir


def test_packing_needs_max_length(workdir, tmp_path):
    with pytest.raises(ValueError, match="`--packing True` needs `--max_length`"):
        main(
            ["--model_name_or_path", str(workdir / "base"), "--output_dir", str(tmp_path)]
            + common_args(workdir, packing="True")
        )


@pytest.mark.slow
def test_resume_with_packing_is_exact_and_reports_throughput(workdir, tmp_path, caplog):
    args = common_args(
        workdir, max_steps="4", per_device_train_batch_size="1", save_strategy="steps", save_steps="2",
        packing="True", max_length="100", log_level="info",
    )  # fmt: skip
    stage = ["--model_name_or_path", str(workdir / "base"), "--freeze_language_model", "False"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    with caplog.at_level(logging.INFO, logger="any2text"):
        main(stage + ["--output_dir", str(full)] + args)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("Packed 12 samples into") for m in messages), messages
    assert any(m.startswith("throughput: data loader") and "training steps" in m for m in messages), messages
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    main(stage + ["--output_dir", str(resumed), "--resume_from_checkpoint", "True"] + args)
    a, b = weights(full), weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert losses(full)[2:] == pytest.approx(losses(resumed)[2:], rel=1e-5)
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 4


@pytest.mark.parametrize("workers", [0, 1])
def test_media_decoding_and_preprocessing_run_in_dataloader_workers(workdir, tmp_path, monkeypatch, workers):
    """With `--dataloader_num_workers 1`, no image is decoded and no batch processed in the training process."""
    import os

    from any2text.training.train import build_trainer, parse_args

    in_main = []  # appended to in this process only: a forked worker appends to its own copy
    main_pid = os.getpid()

    def spy(function):
        def wrapped(*args, **kwargs):
            if os.getpid() == main_pid:
                in_main.append(function.__name__)
            return function(*args, **kwargs)

        return wrapped

    image = MODALITIES["image"]
    monkeypatch.setitem(MODALITIES, "image", dataclasses.replace(image, decoder=spy(image.decoder)))
    monkeypatch.setattr(MultimodalCollator, "__call__", spy(MultimodalCollator.__call__))
    args = common_args(
        workdir, packing="True", max_length="120", per_device_train_batch_size="2",
        dataloader_num_workers=str(workers), output_dir=str(tmp_path),
    )  # fmt: skip
    trainer = build_trainer(*parse_args(["--model_name_or_path", str(workdir / "base")] + args))
    in_main.clear()  # packing measured lengths up front (text only, no media decoded)
    batches = [batch for _, batch in zip(range(2), trainer.get_train_dataloader())]
    assert all("pixel_values" in batch or "input_features" in batch for batch in batches)
    # Per-sample SDPA (what packing switches `sdpa` to) takes a batch's bins as one row, with no pad tail.
    pad_token_id = trainer.processing_class.tokenizer.pad_token_id
    assert all(batch["input_ids"].shape[0] == 1 and (batch["input_ids"] != pad_token_id).all() for batch in batches)
    if workers:
        assert in_main == []
    else:  # control: the spies do see work done in this process
        assert "decode_image" in in_main and "__call__" in in_main


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["--padding_free", "True", "--train_sampling_strategy", "group_by_length"],
        ["--packing", "True", "--max_length", "120", "--use_peft", "True", "--lora_r", "4"],
        [
            "--packing",
            "True",
            "--max_length",
            "120",
            "--train_sampling_strategy",
            "group_by_length",
            "--dataloader_num_workers",
            "1",
        ],
    ],
    ids=["padding-free-group-by-length", "packing-lora", "packing-group-by-length-workers"],
)
def test_stage2_trains_padding_free_and_packed(workdir, tmp_path, extra):
    out = tmp_path / "out"
    main(
        ["--model_name_or_path", str(workdir / "base"), "--output_dir", str(out), "--freeze_language_model", "False"]
        + common_args(workdir, max_steps="2")
        + extra
    )
    assert len(losses(out)) == 2 and all(np.isfinite(losses(out)))


@pytest.mark.slow
def test_stock_llava_trains_packed_with_weighted_datasets(workdir, tiny_llava_checkpoint, tmp_path):
    base = tiny_llava_checkpoint
    images = write_llava_data(tmp_path / "images", ["image", "text", "image", "image"] * 2)
    texts = write_llava_data(tmp_path / "texts", ["text"] * 4, seed=1)
    out = tmp_path / "out"
    main(
        ["--model_name_or_path", str(base), "--output_dir", str(out)]
        + common_args(
            workdir, train_datasets=f"{images},{texts}", train_template="LLaVA,LLaVA", train_weights="3,1",
            train_num_samples="12", max_steps="2", per_device_train_batch_size="2", packing="True", max_length="120",
        )
    )  # fmt: skip
    before, after = weights(base), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before if "multi_modal_projector" in k)


def test_liger_kernel_on_cpu_is_a_clear_error(tiny_checkpoint, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only message")
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_liger_kernel=True, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="`--use_liger_kernel True` needs a CUDA GPU"):
        apply_liger_kernel(model, args)


def test_saved_image_processor_picks_the_fast_backend_where_torchvision_is(tiny_checkpoint):
    # The class saved is the backend-neutral one: transformers then loads the torchvision (fast) processor wherever
    # torchvision is installed (GPU machines) and the PIL one elsewhere.
    config = json.loads((tiny_checkpoint / "processor_config.json").read_text())
    assert config["image_processor"]["image_processor_type"] == "CLIPImageProcessor"
