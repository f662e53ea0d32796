"""The pieces `any2text.train` is assembled from: dataset specs, argument parsing, sample lengths, gradient checks."""

import logging

import pytest
import torch

from any2text.data.collator import MultimodalCollator, SampleTooLongError
from any2text.data.loading import MultimodalDataset
from any2text.data.truncation import fit_to_max_length
from any2text.training.arguments import DataArguments, LoraArguments
from any2text.training.nonfinite import gradients_are_finite
from any2text.training.parsing import parse_argument_groups
from any2text.training.trainer import sample_lengths
from conftest import tiny_models, write_llava_data


def test_dataset_specs_follow_the_comma_lists_and_weights_train_only():
    args = DataArguments(
        train_datasets="a.json,b.json,", train_template="LLaVA,", train_weights="3,1", train_size="10,",
        media_root="imgs,", eval_datasets="c.json", eval_template="LLaVA", eval_media_root="eval_imgs",
    )  # fmt: skip
    train = args.dataset_specs("train")
    assert [(s.path, s.template, s.weight, s.size, s.media_root) for s in train] == [
        ("a.json", "LLaVA", 3.0, 10, "imgs"),
        ("b.json", "LLaVA", 1.0, 10, "imgs"),
    ]
    (evaluation,) = args.dataset_specs("eval")
    assert (evaluation.path, evaluation.split, evaluation.weight, evaluation.media_root) == (
        "c.json", "validation", None, "eval_imgs",
    )  # fmt: skip
    assert DataArguments().dataset_specs("train") is None and DataArguments().dataset_specs("eval") is None
    with pytest.raises(ValueError, match="`train` or `eval`"):
        args.dataset_specs("test")


def test_unknown_flag_hint_comes_from_the_dataclass_fields():
    with pytest.raises(ValueError, match=r"`--lora_rr` \(did you mean `--lora_r`\?\)"):
        parse_argument_groups((LoraArguments,), ["--lora_rr", "4"])
    (lora,) = parse_argument_groups((LoraArguments,), ["--lora_r", "4"])
    assert lora.lora_r == 4


@pytest.fixture(scope="module")
def dataset_and_collator(tmp_path_factory):
    data = write_llava_data(tmp_path_factory.mktemp("lengths"), ["image", "audio", "both", "text"])
    processor = tiny_models().get_cheap_processor()
    specs = DataArguments(train_datasets=str(data), train_template="LLaVA").dataset_specs("train")
    return specs, processor


def test_sample_lengths_are_measured_once_and_exact(dataset_and_collator):
    specs, processor = dataset_and_collator
    dataset = MultimodalDataset(specs, sampling_rate=processor.feature_extractor.sampling_rate)
    collator = MultimodalCollator(processor)
    calls = []
    measure = collator.sample_length
    collator.sample_length = lambda messages: calls.append(1) or measure(messages)
    lengths = sample_lengths(dataset, collator)
    assert sample_lengths(dataset, collator) == lengths and len(calls) == len(dataset)  # the second call reads
    # Exact: the collator's own batch of each sample has that many tokens.
    assert lengths == [len(collator([dataset[i]])["input_ids"][0]) for i in range(len(dataset))]


def test_sample_lengths_report_samples_over_max_length(dataset_and_collator, caplog):
    specs, processor = dataset_and_collator
    short = min(sample_lengths(MultimodalDataset(specs), MultimodalCollator(processor)))
    dropping = MultimodalCollator(processor, max_length=short, truncation="drop")
    with caplog.at_level(logging.WARNING, logger="any2text"):
        sample_lengths(MultimodalDataset(specs), dropping)
    assert f"3 of 4 samples are longer than `max_length={short}`" in caplog.text and "truncation drop" in caplog.text
    # A plain list of items: lengths from their messages.
    items = [MultimodalDataset(specs, decode_media=False)[i] for i in range(4)]
    with pytest.raises(ValueError, match=r"3 of 4 samples .*--truncation drop"):
        sample_lengths(items, MultimodalCollator(processor, max_length=short))


def test_check_sample_raises_the_processor_rules_message(dataset_and_collator):
    specs, processor = dataset_and_collator
    collator = MultimodalCollator(processor, max_length=5)
    messages = MultimodalDataset(specs).messages(3, decode_media=False)
    length = collator.sample_length(messages)
    with pytest.raises(ValueError) as expected:
        fit_to_max_length([False] * length, 5, "error")
    with pytest.raises(SampleTooLongError) as raised:
        collator.check_sample(messages)
    assert str(raised.value) == str(expected.value)


def test_gradients_are_finite_over_the_given_parameters():
    layer = torch.nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().backward()
    assert gradients_are_finite(layer.parameters())
    layer.bias.grad[0] = float("nan")
    assert not gradients_are_finite(layer.parameters())
    assert gradients_are_finite([layer.weight])  # only what is passed is checked
