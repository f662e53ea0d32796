"""Stage 3 (DPO): the loss, the pair layout (media encoded once, logits only at answers), LoRA reference, resume."""

import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from any2text.data.collator import MultimodalCollator
from any2text.data.preference import PreferenceCollator, PreferenceMessages, pair_attention_mask
from any2text.data.templates import get_template
from any2text.demo.synthetic_preference import generate_preference_data
from any2text.modalities import MODALITIES
from any2text.training.dpo import DPOArguments, answer_logps, dpo_loss, main, pair_logps, parse_args
from conftest import REPO, run_example_script


def _assert_equal_to_separate_forwards(got, model, processor, pairs):
    """`pair_logps`' answers equal two ordinary forwards of [prompt | chosen] and [prompt | rejected] per pair."""
    sft = MultimodalCollator(processor)
    for i, pair in enumerate(pairs):
        for side, conversation in (("chosen", list(pair)), ("rejected", [*pair.prompt, *pair.rejected])):
            single = sft([{"messages": conversation}])
            labels = single.pop("labels")
            with torch.no_grad():
                logits = model(**single).logits
            expected = answer_logps(logits[:, :-1], labels[:, 1:])[0]
            torch.testing.assert_close(got[f"{side}_logps"][i : i + 1], expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return generate_preference_data(tmp_path_factory.mktemp("pairs"), n_train=16, n_test=4)["train"]


def _tone(seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _mixed_pairs() -> list[PreferenceMessages]:
    template = get_template("TRL-Preference")
    rows = [
        {"prompt": "What colour?", "images": [Image.new("RGB", (16, 16), (255, 0, 0))], "chosen": "red it is",
         "rejected": "blue"},
        {"prompt": "Pitch?", "audios": [{"array": _tone(), "sampling_rate": 16000}], "chosen": "low",
         "rejected": "high and loud"},
        {"prompt": "Hello there, how are you today?", "chosen": "fine", "rejected": "bad"},
    ]  # fmt: skip
    return [template(row) for row in rows]


# ---------------------------------------------------------------------------------------------------------------------
# The loss


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_loss_equals_hand_computed(loss_type, label_smoothing):
    pc, pr, rc, rr = [-3.0, -7.5], [-4.0, -6.0], [-3.5, -7.0], [-3.8, -6.5]
    lc, lr = [2, 5], [4, 3]
    beta, ls = 0.5, label_smoothing
    tensors = [torch.tensor(v) for v in (pc, pr, rc, rr)]
    got = dpo_loss(*tensors, beta=beta, loss_type=loss_type, label_smoothing=ls,
                   chosen_lengths=torch.tensor(lc), rejected_lengths=torch.tensor(lr))  # fmt: skip

    def logsig(x):
        return -math.log1p(math.exp(-x))

    expected = []
    for i in range(2):
        delta = (pc[i] - rc[i]) - (pr[i] - rr[i])
        if loss_type == "sigmoid":
            value = -(1 - ls) * logsig(beta * delta) - ls * logsig(-beta * delta)
        elif loss_type == "robust":
            value = (-(1 - ls) * logsig(beta * delta) + ls * logsig(-beta * delta)) / (1 - 2 * ls)
        elif loss_type == "hinge":
            value = max(0.0, 1 - beta * delta)
        else:
            avg = (pc[i] - rc[i]) / lc[i] - (pr[i] - rr[i]) / lr[i]
            value = (avg - 1 / (2 * beta)) ** 2
        expected.append(value)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_dpo_arguments_keep_trl_names_and_check_values():
    with pytest.raises(ValueError, match="loss_type"):
        DPOArguments(loss_type=["kto"])
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOArguments(label_smoothing=0.5)
    groups = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--beta", "0.2", "--loss_type", "ipo",
                         "hinge", "--loss_weights", "1", "0.5", "--precompute_ref_log_probs", "True"])  # fmt: skip
    dpo_args = groups[3]
    assert (dpo_args.beta, dpo_args.loss_type, dpo_args.loss_weights) == (0.2, ["ipo", "hinge"], [1.0, 0.5])
    assert dpo_args.precompute_ref_log_probs


def test_rpo_alpha_adds_trl_nll_on_chosen_tokens():
    """loss = mean DPO loss + rpo_alpha * cross-entropy over every chosen token of the batch (TRL's `nll_loss`)."""
    from types import SimpleNamespace

    from any2text.training.dpo import DPOTrainer, rpo_nll

    torch.manual_seed(0)
    chosen_labels = torch.tensor([[5, 7, -100], [3, 2, 9]])
    rejected_labels = torch.tensor([[4, -100], [1, 6]])
    logits = torch.randn(2, 5, 11)

    class Model(torch.nn.Module):
        training = True

        def forward(self, **kwargs):
            return SimpleNamespace(logits=logits)

    # The pair batch schema: kept columns 0-2 predict the chosen answer, 3-4 the rejected one; slot 2 * pair + side.
    answer_labels = torch.cat([chosen_labels, rejected_labels], dim=1)
    answer_slots = torch.tensor([[0, 0, -1, 1, -1], [2, 2, 2, 3, 3]])
    inputs = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 1, 8, 8, dtype=torch.bool),
              "logits_to_keep": torch.arange(5), "answer_labels": answer_labels, "answer_slots": answer_slots,
              "pair_mask": torch.tensor([True, True]), "ref_chosen_logps": torch.tensor([-6.0, -9.0]),
              "ref_rejected_logps": torch.tensor([-4.0, -5.0])}  # fmt: skip
    model = Model()
    model.config = SimpleNamespace(_attn_implementation="sdpa")
    fake = SimpleNamespace(dpo_args=DPOArguments(beta=0.5, rpo_alpha=0.7), _metrics={"train": __import__("collections").defaultdict(list)},
                           accelerator=SimpleNamespace(gather=lambda x: x, pad_across_processes=lambda x, **kwargs: x))  # fmt: skip
    fake.reference_logps = lambda model, inputs: (inputs["ref_chosen_logps"], inputs["ref_rejected_logps"])
    loss = DPOTrainer.compute_loss(fake, model, inputs)

    logp = logits.log_softmax(-1)
    pc = [logp[0, 0, 5] + logp[0, 1, 7], logp[1, 0, 3] + logp[1, 1, 2] + logp[1, 2, 9]]
    pr = [logp[0, 3, 4], logp[1, 3, 1] + logp[1, 4, 6]]
    dpo = sum(-F.logsigmoid(0.5 * ((pc[i] - [-6.0, -9.0][i]) - (pr[i] - [-4.0, -5.0][i]))) for i in range(2)) / 2
    nll = -(sum(pc)) / 5  # five chosen tokens in the batch, averaged over tokens, not pairs
    flat = F.cross_entropy(logits[:, :3].reshape(-1, 11), chosen_labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(nll, flat)
    torch.testing.assert_close(loss, dpo + 0.7 * nll)
    torch.testing.assert_close(rpo_nll(torch.stack(pc), torch.tensor([2, 3])), flat)
    assert fake._metrics["train"]["nll_loss"] == [pytest.approx(float(flat))]
    # TRL's metrics: means over the pairs of beta-scaled log-ratios, their order and margin, and the policy log-probs.
    chosen_r = [0.5 * (float(pc[i]) - [-6.0, -9.0][i]) for i in range(2)]
    rejected_r = [0.5 * (float(pr[i]) - [-4.0, -5.0][i]) for i in range(2)]
    expected = {
        "rewards/chosen": sum(chosen_r) / 2,
        "rewards/rejected": sum(rejected_r) / 2,
        "rewards/accuracies": sum(c > r for c, r in zip(chosen_r, rejected_r, strict=True)) / 2,
        "rewards/margins": (sum(chosen_r) - sum(rejected_r)) / 2,
        "logps/chosen": float(sum(pc)) / 2,
        "logps/rejected": float(sum(pr)) / 2,
    }
    for name, value in expected.items():
        assert fake._metrics["train"][name] == [pytest.approx(value, abs=1e-5)], name
    with pytest.raises(ValueError, match="rpo_alpha"):
        DPOArguments(rpo_alpha=-1.0)
    assert parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--rpo_alpha", "1.0"])[3].rpo_alpha == 1.0
    assert DPOArguments().rpo_alpha is None  # TRL's default: plain DPO


# ---------------------------------------------------------------------------------------------------------------------
# The pair layout


def test_pair_mask_hides_chosen_from_rejected():
    segment = torch.tensor([[0, 1, 1, 2, 2, 3, 3]])
    mask = pair_attention_mask(segment)[0, 0]
    assert mask[5, 1] and mask[5, 2] and mask[5, 5] and not mask[5, 3] and not mask[5, 4] and not mask[5, 6]
    assert mask[4, 3] and mask[4, 1] and not mask[4, 0] and not mask[3, 4]
    assert mask[0, 0] and mask[0].sum() == 1  # padding sees only itself


def test_pair_logps_equal_separate_forwards_with_media_encoded_once(checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    pairs = _mixed_pairs()
    batch = PreferenceCollator(processor)([{"messages": pair} for pair in pairs])

    items = {"vision": 0, "audio": 0}

    def counter(name):
        def hook(module, args, kwargs):
            items[name] += (args[0] if args else kwargs["input_features"]).shape[0]

        return hook

    model.model.vision_tower.register_forward_pre_hook(counter("vision"), with_kwargs=True)
    model.model.audio_tower.register_forward_pre_hook(counter("audio"), with_kwargs=True)
    with torch.no_grad():
        got = pair_logps(model, batch)
    # One image and one clip in the batch, each encoded once for its pair (not once per answer).
    assert items == {"vision": 1, "audio": 1}
    # Logits only at answer positions (prompts end at one column): at most the longest answers of both sides.
    collator = PreferenceCollator(processor)
    encoded = [collator._encode_pair(pair, i) for i, pair in enumerate(pairs)]
    longest = max(len(e["chosen_ids"]) for e in encoded) + max(len(e["rejected_ids"]) for e in encoded)
    assert len(batch["logits_to_keep"]) <= longest
    assert set(batch["answer_slots"][batch["answer_slots"] >= 0].tolist()) == set(range(2 * len(pairs)))

    _assert_equal_to_separate_forwards(got, model, processor, pairs)


def test_generation_sees_the_prompt_tokens_dpo_trains_on(checkpoint):
    """The demo's greedy answers come from `generate_batch`: its (left-padded) prompt ids must be exactly the ids the
    pair collator puts in front of the answers, and the first answer token must be a trained label."""
    from any2text.inference import generate_batch

    processor = AutoProcessor.from_pretrained(checkpoint)
    pairs = _mixed_pairs()
    seen = {}

    class Recorder:
        device, dtype = torch.device("cpu"), torch.float32

        def generate(self, input_ids, attention_mask, **kwargs):
            seen["ids"], seen["mask"] = input_ids, attention_mask
            return input_ids  # no new tokens

    generate_batch(Recorder(), processor, [pair.prompt for pair in pairs], batch_size=len(pairs))
    collator = PreferenceCollator(processor)
    for i, pair in enumerate(pairs):
        encoded = collator._encode_pair(pair, i)
        prompt = seen["ids"][i][seen["mask"][i].bool()]
        assert torch.equal(prompt, encoded["prompt"]["input_ids"]), i
        assert seen["mask"][i][-1]  # left padding: every prompt ends where generation starts
        assert torch.equal(encoded["chosen_labels"], encoded["chosen_ids"])  # every answer token, the first included
        answer = processor.tokenizer.decode(encoded["chosen_ids"], skip_special_tokens=True)
        assert answer == pair.chosen[-1]["content"][-1]["text"]


def test_collator_drops_pairs_over_max_length_and_counts_them(checkpoint):
    processor = AutoProcessor.from_pretrained(checkpoint)
    pairs = _mixed_pairs()
    long_pair = get_template("TRL-Preference")({"prompt": "Hi", "chosen": "ok", "rejected": "no " * 200})
    collator = PreferenceCollator(processor, max_length=60, truncation="drop")
    batch = collator([{"messages": p} for p in [pairs[2], long_pair]])
    assert batch["input_ids"].shape[0] == 1 and collator.num_dropped >= 1
    with pytest.raises(ValueError, match="max_length"):
        PreferenceCollator(processor, max_length=60)([{"messages": long_pair}])
    with pytest.raises(ValueError, match="not a preference pair"):
        collator([{"messages": list(pairs[2])}])


# ---------------------------------------------------------------------------------------------------------------------
# Templates on rows of the real schemas


def _png_bytes(color=(255, 0, 0)) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_align_anything_and_rlaif_v_templates():
    ti2t = get_template("AA_TI2T")(
        {"question": "What is shown?", "image": _png_bytes(), "response_1": "A dog.", "response_2": "A red square.",
         "overall_response": 2, "res_1_from": "m1", "res_2_from": "m2", "overall_textfeedback": "..."}
    )  # fmt: skip
    assert ti2t.prompt[0]["content"][0]["type"] == "image"
    assert ti2t.chosen[0]["content"][0]["text"] == "A red square."
    assert ti2t.rejected[0]["content"][0]["text"] == "A dog."

    audio = {"array": _tone(), "sampling_rate": 16000}
    ta2t = get_template("AA_TA2T")(
        {"prompt": "What do you hear?", "audio_path": audio, "response_1": "A beep.", "response_2": "Silence.",
         "overall_response": "1"}
    )  # fmt: skip
    assert ta2t.prompt[0]["content"][0] == {"type": "audio", "audio": audio}
    assert ta2t.chosen[0]["content"][0]["text"] == "A beep."

    with pytest.raises(ValueError, match="overall_response"):
        get_template("AA_TI2T")({"question": "q", "image": _png_bytes(), "response_1": "a", "response_2": "b",
                                 "overall_response": 3, "id": 7})  # fmt: skip

    rlaif = get_template("RLAIF-V")(
        {"ds_name": "RLAIF-V", "image": _png_bytes(), "question": "Describe it.", "chosen": "A red square.",
         "rejected": "A blue circle.", "origin_dataset": "x", "idx": 1}
    )  # fmt: skip
    assert [m["role"] for m in rlaif] == ["user", "assistant"] and rlaif.rejected[0]["role"] == "assistant"


def test_trl_preference_template_forms():
    template = get_template("preference")
    image = _png_bytes()
    # Conversational with TRL's `{"type": "image"}` items taking the row's images.
    conversational = template({
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        "chosen": [{"role": "assistant", "content": "red"}],
        "rejected": [{"role": "assistant", "content": "blue"}],
        "images": [image],
    })  # fmt: skip
    assert conversational.prompt[0]["content"][0] == {"type": "image", "image": image}
    assert conversational.chosen[0]["content"] == [{"type": "text", "text": "red"}]
    # Implicit prompt: the shared first turns.
    implicit = template({
        "chosen": [{"role": "user", "content": "<audio>Pitch?"}, {"role": "assistant", "content": "low"}],
        "rejected": [{"role": "user", "content": "<audio>Pitch?"}, {"role": "assistant", "content": "high"}],
        "audios": ["a.wav"],
    })  # fmt: skip
    assert implicit.prompt[0]["content"][0] == {"type": "audio", "audio": "a.wav"}
    assert implicit.rejected[0]["content"][0]["text"] == "high"
    with pytest.raises(ValueError, match="placeholder"):
        template({"prompt": "<image><image> two?", "images": [image], "chosen": "a", "rejected": "b"})


def test_sft_template_is_refused_for_dpo(checkpoint, tmp_path):
    data = tmp_path / "sft.json"
    data.write_text(json.dumps([{"id": "0", "conversations": [{"from": "human", "value": "hi"},
                                                             {"from": "gpt", "value": "hello"}]}]))  # fmt: skip
    with pytest.raises(ValueError, match="not preference pairs"):
        main(["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "o"), "--train_datasets",
              str(data), "--train_template", "LLaVA", "--use_cpu", "True", "--report_to", "none"])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Training


def _dpo_args(checkpoint: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(checkpoint), "--output_dir", str(output),
        "--train_datasets", str(data), "--train_template", "TRL-Preference",
        "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--logging_steps", "1",
        "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True", "--seed", "0",
        "--freeze_language_model", "False", "--freeze_mm_proj", "True", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_lora_dpo_keeps_towers_frozen_and_reference_is_the_adapter_free_model(checkpoint, pairs_file, tmp_path):
    from any2text.training.dpo import build_dpo_trainer
    from any2text.training.zero3 import install_lockstep

    groups = parse_args(_dpo_args(checkpoint, pairs_file, tmp_path / "out", "--use_peft", "True", "--max_steps", "3",
                                  "--save_strategy", "no"))  # fmt: skip
    trainer = build_dpo_trainer(*groups)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "tower" in name}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(p.requires_grad for name, p in after.items() if "tower" in name)

    history = trainer.state.log_history
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):  # fmt: skip
        assert any(key in h for h in history), key
    # The adapters moved the policy away from the reference ...
    assert any(h.get("rewards/margins", 0) != 0 for h in history)

    # ... and the reference (adapters disabled) is exactly the starting checkpoint.
    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    ref_chosen, ref_rejected = trainer.reference_logps(trainer.model, batch)
    base = AutoModelForImageTextToText.from_pretrained(checkpoint)
    install_lockstep(base)  # as every training model is loaded (training/zero3.py)
    base.train()
    with torch.no_grad():
        expected = pair_logps(base, batch)
    torch.testing.assert_close(ref_chosen, expected["chosen_logps"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ref_rejected, expected["rejected_logps"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_finetune_resume_with_precomputed_reference_is_exact(checkpoint, pairs_file, tmp_path):
    common = ["--precompute_ref_log_probs", "True", "--max_steps", "4", "--lr_scheduler_type", "constant"]
    interrupted = _dpo_args(checkpoint, pairs_file, tmp_path / "resumed", *common, "--save_strategy", "steps",
                            "--save_steps", "2")  # fmt: skip
    # The uninterrupted run is the same run: it saves checkpoint-2 on its way; keep its result before resuming.
    assert main(interrupted) == 0
    shutil.copytree(tmp_path / "resumed", tmp_path / "full", ignore=shutil.ignore_patterns("checkpoint-*"))
    # Resume from step 2: the policy then is no longer the reference, which is loaded for the precompute pass.
    checkpoint_2 = tmp_path / "resumed" / "checkpoint-2"
    assert main(interrupted + ["--resume_from_checkpoint", str(checkpoint_2)]) == 0
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(full[key], resumed[key], rtol=1e-5, atol=1e-6, msg=key)
    start = load_file(str(checkpoint / "model.safetensors"))
    assert any(not torch.equal(start[k], full[k]) for k in full if "language_model" in k)
    state = json.loads((tmp_path / "full" / "trainer_state.json").read_text())
    first = [h for h in state["log_history"] if "rewards/accuracies" in h][0]
    # Step 1 runs the reference weights: every reward is 0.
    assert abs(first["rewards/chosen"]) < 1e-6 and abs(first["rewards/margins"]) < 1e-6


@pytest.mark.parametrize("script", ["dpo_image.sh", "dpo_audio.sh"])
def test_dpo_example_scripts_parse(script, monkeypatch, tmp_path):
    from any2text.data.loading import parse_dataset_specs

    monkeypatch.chdir(REPO)
    (words,) = run_example_script(REPO / "examples" / script, tmp_path).modules["any2text.dpo"]
    model_args, data_args, lora_args, training_args = parse_args(words + ["--use_cpu", "True"])
    dpo_args = training_args  # TRL's shape: the DPO knobs live on the stage's `TrainingArguments` (`DPOConfig`)
    specs = parse_dataset_specs(data_args.train_datasets, templates=data_args.train_template,
                                names=data_args.train_name, weights=data_args.train_weights,
                                media_roots=data_args.media_root)  # fmt: skip
    assert all(spec.template in ("RLAIF-V", "AA_TI2T", "AA_TA2T", "TRL-Preference") for spec in specs)
    assert dpo_args.loss_type == ["sigmoid"] and training_args.deepspeed


def test_stock_llava_pair_logps_equal_separate_forwards(tiny_llava_checkpoint):
    path = tiny_llava_checkpoint
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    pairs = [_mixed_pairs()[0], _mixed_pairs()[2]]
    with torch.no_grad():
        got = pair_logps(model, PreferenceCollator(processor)([{"messages": pair} for pair in pairs]))
    _assert_equal_to_separate_forwards(got, model, processor, pairs)


def test_preference_benchmark_writes_predictions_and_scores(checkpoint, pairs_file, tmp_path):
    from any2text.cli import main as cli_main

    assert cli_main(["eval", "--benchmark", "preference", "--model", str(checkpoint), "--ref_model", str(checkpoint),
                     "--data", str(pairs_file), "--output_dir", str(tmp_path), "--limit", "6"]) == 0  # fmt: skip
    out = tmp_path / "preference"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"id", "chosen_logp", "rejected_logp", "ref_chosen_logp", "correct"} <= set(
        records[0]
    )
    scores = json.loads((out / "scores.json").read_text())["scores"]
    # The policy is its own reference: every implicit reward is 0, so no pair is "preferred" (TRL's strict `>`).
    assert scores["reward_accuracy"] == 0.0
    assert scores["logp_accuracy"] == sum(r["chosen_logp"] > r["rejected_logp"] for r in records) / 6
    assert (out / "scores.md").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Padding-free and packed pairs (issue #12 in the DPO stage)


def _video_pairs() -> list[PreferenceMessages]:
    """A pair with a video (8 frames, the processor's `num_frames`), one with an image, one with both."""
    template = get_template("TRL-Preference")
    clip = np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(8)])
    return [
        template({"prompt": "Brighter or darker?", "videos": [clip], "chosen": "brighter", "rejected": "darker it gets"}),
        template({"prompt": "What colour?", "images": [Image.new("RGB", (16, 16), (255, 0, 0))], "chosen": "red it is",
                  "rejected": "blue"}),
        template({"prompt": "<image> then <video>: same?", "images": [Image.new("RGB", (16, 16), (0, 0, 255))],
                  "videos": [clip[::-1].copy()], "chosen": "no", "rejected": "yes they are"}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def video_checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # built as the builders build: `<video>` and `video_token_id` included


def test_video_pair_logps_equal_separate_forwards_with_frames_encoded_once(video_checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(video_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(video_checkpoint)
    pairs = _video_pairs()
    batch = PreferenceCollator(processor)([{"messages": pair} for pair in pairs])
    images = []
    model.model.vision_tower.register_forward_pre_hook(lambda module, args: images.append(args[0].shape[0]))
    with torch.no_grad():
        got = pair_logps(model, batch)
    # Two videos of 8 frames and two images, each through the vision tower once for its pair (not once per answer).
    assert batch["pixel_values_videos"].shape == (2, 8, 3, 8, 8) and sum(images) == 16 + 2  # one row per video
    _assert_equal_to_separate_forwards(got, model, processor, pairs)


def _pairs_of(kind: str) -> list[PreferenceMessages]:
    image, audio, text = _mixed_pairs()
    template = get_template("TRL-Preference")
    other_image = template({"prompt": "Shape?", "images": [Image.new("RGB", (16, 16), (0, 0, 255))],
                            "chosen": "a square", "rejected": "round"})  # fmt: skip
    other_audio = template({"prompt": "Loud or soft?", "audios": [{"array": 0.3 * _tone(0.3), "sampling_rate": 16000}],
                            "chosen": "soft", "rejected": "loud it was"})  # fmt: skip
    return {"image": [image, other_image], "audio": [audio, other_audio],
            "mixed": [image, audio, text, other_image]}[kind]  # fmt: skip


def _loss_and_grads(model, batch):
    model.zero_grad()
    logps = pair_logps(model, batch)
    zero = torch.zeros_like(logps["chosen_logps"])
    loss = dpo_loss(logps["chosen_logps"], logps["rejected_logps"], zero - 3.0, zero - 4.0, beta=0.5).mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), logps, grads


@pytest.mark.parametrize("kind", ["image", "audio", "mixed", "video"])
def test_padding_free_and_packed_pairs_equal_one_row_per_pair(checkpoint, kind, request):
    checkpoint = request.getfixturevalue("video_checkpoint") if kind == "video" else checkpoint
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    pairs = _video_pairs() if kind == "video" else _pairs_of(kind)
    samples = [{"messages": pair, "index": i} for i, pair in enumerate(pairs)]
    padded = PreferenceCollator(processor)(samples)
    flat = PreferenceCollator(processor, padding_free=True)(samples)
    # Two packed rows (bins) of whole pairs, as `PackedDataset` items give them.
    packed = PreferenceCollator(processor, padding_free=True)([{"packed": samples[:1]}, {"packed": samples[1:]}])
    assert flat["input_ids"].shape[0] == 1 and packed["input_ids"].shape[0] == 2
    # One row per batch: no padding at all, logits only at the answer tokens (the first of both sides shares a column).
    answers = int((padded["answer_labels"] != -100).sum())
    assert flat["input_ids"].shape[1] < padded["input_ids"].numel() and len(flat["logits_to_keep"]) == answers
    assert flat["index"].tolist() == packed["index"].tolist() == list(range(len(samples)))

    loss, logps, grads = _loss_and_grads(model, padded)
    assert len(grads) > 10
    for batch in (flat, packed):
        got_loss, got_logps, got_grads = _loss_and_grads(model, batch)
        torch.testing.assert_close(got_loss, loss, rtol=0, atol=1e-5)
        for key in ("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths"):
            torch.testing.assert_close(got_logps[key].detach(), logps[key].detach(), rtol=1e-5, atol=1e-4)
        assert got_grads.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)


def test_packed_pairs_respect_max_length_and_are_never_split(checkpoint):
    from any2text.data.bad_rows import BadRowError
    from any2text.data.packing import PackedDataset

    processor = AutoProcessor.from_pretrained(checkpoint)
    pairs = _pairs_of("mixed") * 3
    probe = PreferenceCollator(processor)
    lengths = [probe.sample_length(pair) for pair in pairs]
    # The packing length of a pair is exactly its row: prompt + chosen + rejected, media counted once.
    for pair, length in zip(pairs, lengths):
        encoded = probe._encode_pair(pair, 0)
        assert length == sum(len(encoded[key]) for key in ("chosen_ids", "rejected_ids")) + len(
            encoded["prompt"]["input_ids"]
        )
    max_length = max(lengths) + min(lengths) + 3
    items = [{"messages": pair, "index": i} for i, pair in enumerate(pairs)]
    packed = PackedDataset(items, lengths, max_length=max_length)
    assert len(packed) < len(pairs)  # some bins hold several pairs
    collator = PreferenceCollator(processor, max_length=max_length, padding_free=True)
    seen = []
    for start in range(0, len(packed), 2):
        batch = collator([packed[i] for i in range(start, min(start + 2, len(packed)))])
        assert batch["input_ids"].shape[1] <= max_length
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(pairs)))  # every pair once, none split or lost

    # A pair longer than max_length as a whole: an error by default, a counted drop with `truncation="drop"`.
    longest = [{"packed": [items[lengths.index(max(lengths))], items[lengths.index(min(lengths))]]}]
    # The one rule for every over-long sample or pair: a bad row (named, skippable) under `truncation="error"`.
    with pytest.raises(BadRowError, match=r"preference pair \(prompt \+ chosen \+ rejected\) has \d+ tokens"):
        PreferenceCollator(processor, max_length=max(lengths) - 1, padding_free=True)(longest)
    dropping = PreferenceCollator(processor, max_length=max(lengths) - 1, truncation="drop", padding_free=True)
    batch = dropping(longest)
    assert dropping.num_dropped == 1 and batch["pair_mask"].tolist() == [True]
    assert batch["input_ids"].shape[1] <= max(lengths) - 1


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--padding_free", "--packing"])
def test_dpo_trains_padding_free_and_packed(checkpoint, pairs_file, tmp_path, flag):
    from any2text.data.packing import PackedDataset
    from any2text.training.dpo import build_dpo_trainer

    groups = parse_args(_dpo_args(checkpoint, pairs_file, tmp_path / "out", flag, "True", "--max_length", "400",
                                  "--use_peft", "True", "--precompute_ref_log_probs", "True", "--max_steps", "2",
                                  "--save_strategy", "no"))  # fmt: skip
    trainer = build_dpo_trainer(*groups)
    # The trainer may wrap a dataset whose items do not name their row (see `MultimodalTrainer`).
    dataset = trainer.train_dataset
    bins = dataset if isinstance(dataset, PackedDataset) else getattr(dataset, "dataset", None)
    packed = isinstance(bins, PackedDataset)
    assert packed == (flag == "--packing")
    if packed:
        assert len(trainer.train_dataset) < 16 and max(bins.lengths) <= 400
    batch = next(iter(trainer.get_train_dataloader()))
    assert "answer_slots" in batch and batch["input_ids"].shape[1] <= 400
    # One row per bin (4 bins a batch), or the whole batch in one row.
    assert batch["input_ids"].shape[0] == (min(4, len(trainer.train_dataset)) if packed else 1)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert len(trainer._ref_tables["train"]) == 16  # every pair's reference log-probs, through the packed rows
    assert any(h.get("rewards/margins", 0) != 0 for h in trainer.state.log_history)


def test_demo_preference_answers_differ_at_their_first_token(tmp_path):
    """Greedy generation follows a preferred answer only if the first token decides it: the demo task's two answers
    must start with different tokens, neither a prefix of the other (`bear` -> `be|ar` vs `bird` -> `b|ir|d` was not)."""
    from transformers import AutoTokenizer

    from any2text.builders.presets import tiny_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    rows = [json.loads(line) for line in generate_preference_data(tmp_path, 8, 0)["train"].read_text().splitlines()]
    assert {row["chosen"] for row in rows} == {"warm", "cool", "bird", "lion"}
    for row in rows:
        first = [tokenizer.convert_ids_to_tokens(tokenizer(row[key], add_special_tokens=False)["input_ids"])[0]
                 for key in ("chosen", "rejected")]  # fmt: skip
        assert not first[0].startswith(first[1]) and not first[1].startswith(first[0]), (row, first)


def test_a_pairs_media_are_read_once_for_both_answers(checkpoint, monkeypatch):
    calls = {"image": 0, "audio": 0}
    for kind in calls:
        modality = MODALITIES[kind]

        def counting(*args, _original=modality.decoder, _kind=kind, **kwargs):
            calls[_kind] += 1
            return _original(*args, **kwargs)

        monkeypatch.setitem(MODALITIES, kind, dataclasses.replace(modality, decoder=counting))
    processor = AutoProcessor.from_pretrained(checkpoint)
    batch = PreferenceCollator(processor)([{"messages": pair} for pair in _mixed_pairs()])
    # One image and one clip in the three pairs: each decoded once, not once per answer.
    assert calls == {"image": 1, "audio": 1}
    assert batch["pixel_values"].shape[0] == 1 and batch["input_features"].shape[0] == 1


@pytest.mark.parametrize("layout", ["one_pair_per_row", "padding_free", "packed"])
def test_pair_batch_names_each_answers_last_token(checkpoint, layout):
    """`pair_rows` / `answer_ends` (what a reward model scores): the last token of every chosen and rejected answer."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    pairs = _pairs_of("mixed")
    samples = [{"messages": pair, "index": i} for i, pair in enumerate(pairs)]
    collator = PreferenceCollator(processor, padding_free=layout == "padding_free")
    batch = collator([{"packed": samples[:2]}, {"packed": samples[2:]}] if layout == "packed" else samples)
    for i, pair in enumerate(pairs):
        encoded = collator._encode_pair(pair, i)
        row, (chosen_end, rejected_end) = batch["pair_rows"][i], batch["answer_ends"][i]
        assert batch["input_ids"][row, chosen_end] == encoded["chosen_ids"][-1]
        assert batch["input_ids"][row, rejected_end] == encoded["rejected_ids"][-1]
        # The rejected answer's end attends to its prompt and itself, never to the chosen answer.
        sees = batch["attention_mask"][row, 0, rejected_end]
        assert not sees[chosen_end] and sees[rejected_end]
