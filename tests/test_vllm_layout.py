"""Stock Llava checkpoints keep CLIP's / SigLIP's nested `vision_tower.vision_model.` key layout (vLLM's native
Llava loads only that).

The vLLM side is checked end to end by `make test-vllm` (tests/vllm_e2e/); here: the keys on disk, and that transformers
loads them into the same modules with identical outputs, also after a save / load round trip and when sharded.
"""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlavaForConditionalGeneration

from any2text.builders import build_llama_vision
from builders_fixtures import image, parts  # noqa: F401


def _saved_keys(folder) -> list[str]:
    keys = []
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            keys += list(f.keys())
    return keys


def _inputs(processor) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=text, images=image("blue"), return_tensors="pt")


def _assert_nested(keys: list[str]) -> None:
    tower = [k for k in keys if "vision_tower." in k]
    assert tower, keys
    assert all(k.startswith("vision_tower.vision_model.") for k in tower), tower[:5]


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_llava_tower_keys_are_nested_and_load_identically(parts, vision, tmp_path):  # noqa: F811
    tower = getattr(parts, vision)
    model, processor = build_llama_vision(parts.llama, tower, save_path=tmp_path / "built", dtype="float32")
    _assert_nested(_saved_keys(tmp_path / "built"))
    # Language model and projector keys stay in the layout transformers writes.
    assert "multi_modal_projector.linear_1.weight" in _saved_keys(tmp_path / "built")

    loaded, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "built", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)

    # A checkpoint loaded from the nested layout (e.g. to fine-tune it) is saved nested again by transformers.
    loaded.save_pretrained(tmp_path / "resaved")
    _assert_nested(_saved_keys(tmp_path / "resaved"))


def test_sharded_llava_rewrites_the_index(parts, tmp_path):  # noqa: F811
    model, processor = build_llama_vision(parts.llama, parts.clip, save_path=tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _assert_nested(list(index["weight_map"]))
    assert sorted(index["weight_map"]) == sorted(_saved_keys(tmp_path))
    loaded, info = LlavaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
