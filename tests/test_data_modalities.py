"""The modality table drives every layer: a toy modality added through the table alone trains.

The toy medium is a 4-number vector stored in a `.npy` file. What the test adds is what adding a modality takes: a
`Modality` record (`register_modality`), a decoder, a processor subclass with `replace_toy_token`, and a model whose
`modalities` table holds the toy's record (the shipped model keeps its own table, in its remote-code folder), with the
toy tower, projector and feature getter. Templates, the dataset, the collator, the pair collator, the DPO model
inputs, the model's `forward` and the freezing policy are not touched, and must carry the toy medium on their own.
"""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from any2text import LlamaVisionAudioForConditionalGeneration, LlamaVisionAudioProcessor
from any2text.data.collator import IGNORE_INDEX, MultimodalCollator
from any2text.data.loading import DatasetSpec, MultimodalDataset
from any2text.data.media import resolve_path
from any2text.data.messages import media_refs, strip_media
from any2text.data.preference import PreferenceCollator
from any2text.data.templates import get_template
from any2text.modalities import MODALITIES, Modality, media_options, register_modality, unregister_modality
from any2text.models.llama_vision_audio import LlamaVisionAudioModel
from any2text.models.llama_vision_audio.modeling_llama_vision_audio import Modality as ModelModality
from any2text.training.arguments import ModelArguments
from any2text.training.dpo import pair_logps
from any2text.training.freezing import apply_freezing
from conftest import tiny_models

TOY_SIZE = 4
TOY_TYPE = 4  # its `mm_token_type_ids` value, after transformers' 1 image, 2 video, 3 audio

# Renders every medium as `<type>`, so a toy part becomes `<toy>` with no template change.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}<|start|>{{ message['role'] }}\n"
    "{%- if message['role'] == 'assistant' %}{% generation %}{%- for item in message['content'] %}{{ item['text'] }}"
    "{%- endfor %}<|eot|>{% endgeneration %}"
    "{%- else %}{%- for item in message['content'] %}{%- if item['type'] == 'text' %}{{ item['text'] }}"
    "{%- else %}{{ '<' + item['type'] + '>' }}{%- endif %}{%- endfor %}<|eot|>{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|start|>assistant\n{%- endif %}"
)


def decode_toy(ref, media_root=None, *, allow_outside_root=False, **options):
    """The toy decoder: a `.npy` path (resolved like any media path) or a list of numbers -> float32 `(4,)`."""
    if isinstance(ref, str):
        ref = np.load(resolve_path(ref, media_root, allow_outside_root=allow_outside_root))
    vector = np.asarray(ref, dtype=np.float32)
    if vector.shape != (TOY_SIZE,):
        raise ValueError(f"A toy holds {TOY_SIZE} numbers, got shape {vector.shape}.")
    return vector


TOY = Modality(
    name="toy",
    placeholder="<toy>",
    token_id_attr="toy_token_id",
    content_type="toy",
    row_columns=("toys", "toy"),
    decoder=decode_toy,
    processor_kwarg="toys",
    output_keys=("toy_values",),
    token_type=TOY_TYPE,
    tower="toy_tower",
    projector="toy_projector",
    feature_getter="get_toy_features",
    blank=lambda options: np.zeros(TOY_SIZE, dtype=np.float32),
)


class ToyProcessor(LlamaVisionAudioProcessor):
    """The processor, taking `toys=` too: each `<toy>` becomes `replace_toy_token` (one token), its values
    `toy_values`, its positions `mm_token_type_ids == 4`."""

    toy_token = "<toy>"

    def __call__(self, *args, toys=None, **kwargs):
        if toys is not None:
            text = kwargs["text"] if "text" in kwargs else args[1]
            texts = [text] if isinstance(text, str) else list(text)
            found = sum(t.count(self.toy_token) for t in texts)
            if found != len(toys):
                raise ValueError(f"{found} `<toy>` placeholders for {len(toys)} toys.")
            replacements = iter(self.replace_toy_token({}, i) for i in range(len(toys)))
            kwargs["text"] = [
                "".join(p if p != self.toy_token else next(replacements) for p in _split(t)) for t in texts
            ]
            args = ()
        outputs = super().__call__(*args, **kwargs)
        if toys is not None:
            token_id = self.tokenizer.convert_tokens_to_ids(self.toy_token)
            ids = torch.as_tensor(outputs["input_ids"])
            types = torch.as_tensor(outputs["mm_token_type_ids"])
            outputs["mm_token_type_ids"] = types.masked_fill(ids == token_id, TOY_TYPE)
            outputs["toy_values"] = torch.tensor(np.stack(toys))
        return outputs

    def replace_toy_token(self, toy_inputs: dict, toy_idx: int, **kwargs) -> str:
        return self.toy_token


def _split(text):
    return re.split("(<toy>)", text)


class ToyBaseModel(LlamaVisionAudioModel):
    """The model with the toy's record in its table, a toy tower and projector, and the feature getter: the stock
    `forward` reads `toy_values` and puts the toy features where `<toy>` is."""

    modalities = (
        *LlamaVisionAudioModel.modalities,
        ModelModality(
            TOY.name, TOY.placeholder, TOY.token_id_attr, TOY.token_type, TOY.output_keys, TOY.feature_getter,
            TOY.tower, TOY.projector,
        ),
    )  # fmt: skip

    def __init__(self, config):
        super().__init__(config)
        self.toy_tower = nn.Linear(TOY_SIZE, TOY_SIZE)
        self.toy_projector = nn.Linear(TOY_SIZE, config.text_config.hidden_size)

    def get_toy_features(self, toy_values, **kwargs):
        outputs = self.toy_tower(toy_values.to(self.toy_tower.weight.dtype))
        return BaseModelOutputWithPooling(last_hidden_state=outputs, pooler_output=self.toy_projector(outputs))


class ToyModel(LlamaVisionAudioForConditionalGeneration):
    """The causal LM head over the toy model."""

    def __init__(self, config):
        super().__init__(config)
        self.model = ToyBaseModel(config)
        self.post_init()


@pytest.fixture
def toy():
    register_modality(TOY)
    yield TOY
    unregister_modality(TOY.name)
    assert "toy" not in MODALITIES


@pytest.fixture
def processor(toy):
    base = tiny_models().get_cheap_processor()
    base.tokenizer.add_tokens(["<toy>"], special_tokens=True)
    return ToyProcessor(
        image_processor=base.image_processor,
        feature_extractor=base.feature_extractor,
        tokenizer=base.tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=base.image_seq_length,
        audio_seq_length=base.audio_seq_length,
    )


@pytest.fixture
def model(processor):
    config = tiny_models().get_config(cheap_audio=True)
    config.text_config.vocab_size = len(processor.tokenizer)
    config.toy_token_id = processor.tokenizer.convert_tokens_to_ids("<toy>")
    torch.manual_seed(0)
    return ToyModel._from_config(config)


def toy_rows(folder):
    for i in range(3):
        np.save(folder / f"toy{i}.npy", np.full(TOY_SIZE, i + 1, dtype=np.float32))
    rows = [
        {"id": f"r{i}", "toys": [f"toy{i}.npy"], "conversations": [
            {"from": "human", "value": "<toy>\nHow big?"}, {"from": "gpt", "value": f"size {i + 1}"}]}
        for i in range(3)
    ] + [{"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]  # fmt: skip
    (folder / "toys.json").write_text(json.dumps(rows))
    return DatasetSpec(str(folder / "toys.json"), "LLaVA")


def test_a_toy_modality_added_through_the_table_trains_a_step(tmp_path, processor, model):
    # Templates and messages: the LLaVA template reads `toys` and places `<toy>` from the table.
    messages = get_template("LLaVA")({"toy": "t.npy", "conversations": [
        {"from": "human", "value": "<toy> what?"}, {"from": "gpt", "value": "x"}]})  # fmt: skip
    assert messages[0]["content"][0] == {"type": "toy", "toy": "t.npy"} and media_refs(messages)["toy"] == ["t.npy"]
    assert strip_media(messages)[0]["content"] == [{"type": "text", "text": "what?"}]

    # The dataset decodes it with its decoder (relative path against the media root), the collator encodes it.
    dataset = MultimodalDataset(toy_rows(tmp_path), media_options=media_options(processor))
    collator = MultimodalCollator(processor)
    lengths = dataset.validate(length_fn=collator.sample_length)
    samples = [dataset[i] for i in range(len(dataset))]
    assert media_refs(samples[1]["messages"])["toy"][0].tolist() == [2.0] * TOY_SIZE
    batch = collator(samples)
    assert batch["toy_values"].shape == (3, TOY_SIZE)
    toy_positions = batch["mm_token_type_ids"] == TOY_TYPE
    assert toy_positions.sum() == 3 and (batch["labels"][toy_positions] == IGNORE_INDEX).all()
    assert lengths == batch["attention_mask"].sum(-1).tolist()  # the length index counts the toy token

    # Freezing finds its projector through the table; one step trains it and the loss depends on the toy values.
    apply_freezing(model, ModelArguments(model_name_or_path="-", freeze_mm_proj=False))
    assert model.model.toy_projector.weight.requires_grad and not model.model.toy_tower.weight.requires_grad
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert model.model.toy_projector.weight.grad.abs().sum() > 0
    before = model.model.toy_projector.weight.detach().clone()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert not torch.equal(before, model.model.toy_projector.weight)
    with torch.no_grad():
        changed = model(**{**batch, "toy_values": batch["toy_values"] * 3}).loss
    assert not torch.isclose(changed, model(**batch).loss.detach())


def test_toy_pairs_reach_the_model_through_the_dpo_deny_list(tmp_path, processor, model):
    np.save(tmp_path / "a.npy", np.ones(TOY_SIZE, dtype=np.float32))
    pair = get_template("TRL-Preference")({"toys": [str(tmp_path / "a.npy")], "prompt": "<toy> How big?",
                                           "chosen": "size one", "rejected": "size nine"})  # fmt: skip
    batch = PreferenceCollator(processor)([{"messages": pair}])
    assert batch["toy_values"].shape == (1, TOY_SIZE)  # encoded once for both answers
    logps = pair_logps(model, batch)["chosen_logps"]
    # The toy values reach the model (nothing lists model inputs): other values, other log-probs.
    other = pair_logps(model, {**batch, "toy_values": batch["toy_values"] * 5})["chosen_logps"]
    assert not torch.allclose(logps, other)


def test_the_table_is_the_one_list(toy):
    assert list(MODALITIES)[:3] == ["image", "audio", "video"] and MODALITIES["toy"] is TOY
    with pytest.raises(ValueError, match="uses the placeholder `<toy>`"):
        register_modality(dataclasses.replace(TOY, name="other"))
