"""Stage 3 (DPO): the loss, the pair layout (media encoded once, logits only at answers), LoRA reference, resume."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from any2text.data.collator import MultimodalCollator
from any2text.data.preference import PreferenceCollator, PreferenceMessages, pair_attention_mask
from any2text.data.templates import get_template
from any2text.demo.synthetic_preference import generate_preference_data
from any2text.training.dpo import DPOArguments, answer_logps, dpo_loss, main, pair_logps, parse_args
from test_train_helpers import build_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("dpo") / "base")


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
    # Logits only at answer positions: fewer than the longest answers of both sides plus one.
    assert len(batch["logits_to_keep"]) == batch["chosen_labels"].shape[1] + batch["rejected_labels"].shape[1]

    sft = MultimodalCollator(processor)
    for i, pair in enumerate(pairs):
        for side, conversation in (("chosen", list(pair)), ("rejected", [*pair.prompt, *pair.rejected])):
            single = sft([{"messages": conversation}])
            labels = single.pop("labels")
            with torch.no_grad():
                logits = model(**single).logits
            expected = answer_logps(logits[:, :-1], labels[:, 1:])[0]
            torch.testing.assert_close(got[f"{side}_logps"][i : i + 1], expected, rtol=1e-4, atol=1e-4)


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
    base = AutoModelForImageTextToText.from_pretrained(checkpoint).train()
    with torch.no_grad():
        expected = pair_logps(base, batch)
    torch.testing.assert_close(ref_chosen, expected["chosen_logps"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ref_rejected, expected["rejected_logps"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_finetune_resume_with_precomputed_reference_is_exact(checkpoint, pairs_file, tmp_path):
    common = ["--precompute_ref_log_probs", "True", "--max_steps", "4", "--lr_scheduler_type", "constant"]
    assert main(_dpo_args(checkpoint, pairs_file, tmp_path / "full", *common, "--save_strategy", "no")) == 0
    interrupted = _dpo_args(checkpoint, pairs_file, tmp_path / "resumed", *common, "--save_strategy", "steps",
                            "--save_steps", "2")  # fmt: skip
    assert main(interrupted) == 0
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
def test_dpo_example_scripts_parse(script, monkeypatch):
    import re
    import shlex

    from any2text.data.loading import parse_dataset_specs

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    text = (repo / "examples" / script).read_text()
    variables = {name: re.fullmatch(r"\$\{\w+:-(.*)\}", value).group(1)
                 for name, value in re.findall(r"^([A-Z_0-9]+)=(.*)$", text, flags=re.M)}  # fmt: skip
    line = next(line for line in re.sub(r"\\\n", " ", text).splitlines() if "any2text.dpo" in line)
    words = shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), line))
    model_args, data_args, lora_args, dpo_args, training_args = parse_args(
        words[words.index("any2text.dpo") + 1 :] + ["--use_cpu", "True"]
    )
    specs = parse_dataset_specs(data_args.train_datasets, templates=data_args.train_template,
                                names=data_args.train_name, weights=data_args.train_weights,
                                media_roots=data_args.media_root)  # fmt: skip
    assert all(spec.template in ("RLAIF-V", "AA_TI2T", "AA_TA2T", "TRL-Preference") for spec in specs)
    assert dpo_args.loss_type == ["sigmoid"] and training_args.deepspeed


def test_stock_llava_pair_logps_equal_separate_forwards(tmp_path):
    from test_train_helpers import build_tiny_llava

    path = build_tiny_llava(tmp_path / "llava")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    pairs = [_mixed_pairs()[0], _mixed_pairs()[2]]
    with torch.no_grad():
        got = pair_logps(model, PreferenceCollator(processor)([{"messages": pair} for pair in pairs]))
    sft = MultimodalCollator(processor)
    for i, pair in enumerate(pairs):
        for side, conversation in (("chosen", list(pair)), ("rejected", [*pair.prompt, *pair.rejected])):
            single = sft([{"messages": conversation}])
            labels = single.pop("labels")
            with torch.no_grad():
                logits = model(**single).logits
            expected = answer_logps(logits[:, :-1], labels[:, 1:])[0]
            torch.testing.assert_close(got[f"{side}_logps"][i : i + 1], expected, rtol=1e-4, atol=1e-4)


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
