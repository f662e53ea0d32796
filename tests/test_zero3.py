"""The training lock-step (`any2text.training.zero3`): every encoder call every step, installed from outside the model."""

import copy
import inspect
from pathlib import Path

import pytest
import torch

from any2text.models.llama_vision_audio import modeling_llama_vision_audio
from any2text.training.zero3 import install_lockstep
from conftest import make_image, make_tone

VIDEO_ID = 5  # a plain token of the tiny vocabulary stands for `<video>` (the tester's tokenizer has none)


def frozen_model(tester, **kwargs):
    model = tester.get_model(**{"video_token_id": VIDEO_ID, **kwargs})
    model.model.vision_tower.requires_grad_(False)
    model.model.audio_tower.requires_grad_(False)
    return model


def record_calls(model) -> list[tuple[str, int]]:
    """(module, batch size) for every tower and language model call, in order."""
    calls = []
    for name in ("vision_tower", "audio_tower", "language_model"):
        module = getattr(model.model, name)
        if module is None:
            continue
        module.register_forward_pre_hook(
            lambda module, args, kwargs, name=name: calls.append(
                (name, (args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))).shape[0])
            ),
            with_kwargs=True,
        )
    return calls


def test_text_only_training_step_runs_every_tower_and_changes_no_loss_or_grad(tester, processor):
    """Each modality slot runs once (vision twice: image and video), the loss and gradients stay those of the plain
    model, and the projectors get an all-zero gradient (they took part, as ZeRO-3 needs)."""
    plain = frozen_model(tester)
    locked = copy.deepcopy(plain)
    assert install_lockstep(locked) and install_lockstep(locked) == []  # idempotent
    calls = record_calls(locked)
    inputs = processor(text=["just text here"], return_tensors="pt")
    losses = {}
    for name, model in (("plain", plain), ("locked", locked)):
        model.train()
        losses[name] = model(**inputs, labels=inputs["input_ids"]).loss
        losses[name].backward()
    assert [name for name, _ in calls] == ["vision_tower", "audio_tower", "vision_tower", "language_model"]
    torch.testing.assert_close(losses["locked"], losses["plain"])
    for name, param in plain.named_parameters():
        locked_grad = locked.get_parameter(name).grad
        if param.grad is not None:
            torch.testing.assert_close(locked_grad, param.grad, msg=name)
        elif locked_grad is not None:
            assert torch.count_nonzero(locked_grad) == 0, name
    for projector in (locked.model.vision_projector, locked.model.audio_projector):
        grad = projector.linear_1.weight.grad
        assert grad is not None and torch.count_nonzero(grad) == 0

    # Evaluation (and generation) runs the plain model: no dummy.
    calls.clear()
    locked.eval()
    with torch.no_grad():
        locked(**inputs)
    assert [name for name, _ in calls] == ["language_model"]


def test_every_batch_makes_the_same_calls_in_the_same_order(tester, processor):
    """Whatever a rank's batch holds, its module calls line up with every other rank's: dummies fill the slots of
    missing modalities in table order (image, audio, video), real items keep theirs."""
    model = install_and_train(frozen_model(tester))
    calls = record_calls(model)
    fsl = model.config.video_frame_seq_length
    frames = torch.randn(3, 3, 8, 8)
    video_ids = torch.tensor([[1] + [VIDEO_ID] * (3 * fsl) + [6, 7]])
    batches = {
        "text": processor(text=["only words"], return_tensors="pt"),
        "image": processor(text=["<image> look"], images=[make_image()], return_tensors="pt"),
        "audio": processor(text=["<audio> hear"], audio=[make_tone()], sampling_rate=48000, return_tensors="pt"),
        "video": {"input_ids": video_ids, "pixel_values_videos": frames},
    }
    sequences = {}
    for name, batch in batches.items():
        calls.clear()
        model.zero_grad(set_to_none=True)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        sequences[name] = list(calls)
        # Every projector takes part in the backward too (ZeRO-3 gathers there as well), even when its dummy ran
        # inside a frozen tower's call.
        for projector in (model.model.vision_projector, model.model.audio_projector):
            assert projector.linear_1.weight.grad is not None, name
    order = ["vision_tower", "audio_tower", "vision_tower", "language_model"]
    for name, sequence in sequences.items():
        assert [module for module, _ in sequence] == order, name
    # The real items run in their own slot: the image in the first vision call, the video's 3 frames in the second.
    assert sequences["image"][0] == ("vision_tower", 1) and sequences["video"][2] == ("vision_tower", 3)
    assert sequences["video"][0] == ("vision_tower", 1)  # the image slot's dummy


def test_a_dummy_run_inside_a_frozen_towers_call_joins_the_backward(tester, processor):
    """An audio-only batch runs the image slot's dummy from the (frozen, graph-free) audio tower's call: the vision
    projector must still get its (zero) gradient, or ZeRO-3's backward gathers stop matching the other ranks'."""
    model = install_and_train(frozen_model(tester, video_token_id=None))  # no video slot to hide a missing gradient
    batch = processor(text=["<audio> hear"], audio=[make_tone()], sampling_rate=48000, return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    grad = model.model.vision_projector.linear_1.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0


def install_and_train(model):
    install_lockstep(model)
    return model.train()


def test_clap_fusion_branch_runs_without_long_clips_and_features_are_the_real_clips(tester, processor):
    """CLAP's fusion modules run only for "longer" clips; under ZeRO-3 every rank must run them every step. The
    silent long clips the lock-step adds never reach the features."""
    model = frozen_model(tester)
    inputs = processor(text=["<audio> short clip"], audio=[make_tone()], sampling_rate=48000, return_tensors="pt")
    assert not inputs["is_longer"].any()
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"] != 0, -100)
    with torch.no_grad():
        eval_loss = model(**inputs, labels=labels).loss
        eval_features = model.get_audio_features(inputs["input_features"], inputs["is_longer"]).pooler_output
    fusion = model.model.audio_tower.audio_encoder.patch_embed.fusion_model
    calls = []
    fusion.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    install_and_train(model)
    train_loss = model(**inputs, labels=labels).loss
    assert calls == [1]  # one silent long clip (the tower is frozen, in eval mode)
    torch.testing.assert_close(train_loss, eval_loss)
    features = model.get_audio_features(inputs["input_features"], inputs["is_longer"]).pooler_output
    assert features.shape == eval_features.shape
    torch.testing.assert_close(features, eval_features)


def test_trainable_clap_with_exactly_one_long_clip_trains(tester, processor):
    """CLAP's fusion BatchNorm needs two long clips in train mode: the lock-step adds a second one."""
    model = tester.get_model()
    install_and_train(model)
    assert any(p.requires_grad for p in model.model.audio_tower.parameters())
    inputs = processor(
        text=["<audio> long", "<audio> short"],
        audio=[make_tone(440.0, seconds=12.0), make_tone(880.0, seconds=1.0)],
        sampling_rate=48000,
        padding=True,
        return_tensors="pt",
    )
    assert inputs["is_longer"].sum() == 1
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"] != 0, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    fusion = model.model.audio_tower.audio_encoder.patch_embed.fusion_model
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())


def test_lockstep_reaches_the_model_inside_a_sequence_classifier(tester, processor):
    from any2text import LlamaVisionAudioForSequenceClassification

    torch.manual_seed(0)
    model = LlamaVisionAudioForSequenceClassification._from_config(tester.get_config(video_token_id=VIDEO_ID))
    model.model.vision_tower.requires_grad_(False)
    model.model.audio_tower.requires_grad_(False)
    calls = record_calls(install_and_train(model))
    inputs = processor(text=["just text", "more text here"], padding=True, return_tensors="pt")
    model(**inputs).logits.sum().backward()
    assert [name for name, _ in calls] == ["vision_tower", "audio_tower", "vision_tower", "language_model"]


def test_the_shipped_model_holds_no_lock_step_code():
    """The remote-code model is a plain Llava-shaped model: no dummies, fusion clips or training-mode branches."""
    source = Path(modeling_llama_vision_audio.__file__).read_text()
    for marker in ("_zero_contribution", "_with_fusion_clip", "_dummy", "* 0.0", "zero3", "ZeRO", "lock-step"):
        assert marker not in source, marker
    base_forward = inspect.getsource(modeling_llama_vision_audio.LlamaVisionAudioModel.forward)
    assert "training" not in base_forward


@pytest.mark.parametrize("modality", ["image", "video"])
def test_a_model_without_the_modality_runs_no_dummy_for_it(tester, processor, modality):
    """No vision tower: neither an image nor a video slot. No `<video>` token: no video slot."""
    if modality == "image":
        model = tester.get_model(vision=False)
        expected = ["audio_tower", "language_model"]
    else:
        model = tester.get_model(video_token_id=None)  # no `<video>` token
        expected = ["vision_tower", "audio_tower", "language_model"]
    model.model.audio_tower.requires_grad_(False)
    calls = record_calls(install_and_train(model))
    inputs = processor(text=["just text"], return_tensors="pt")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert [name for name, _ in calls] == expected
