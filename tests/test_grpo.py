"""GRPO: TRL's loss and advantages by hand, the group row (media encoded once), generation from one prefill per prompt,
rewards (functions' columns, the reward model), the entry point end to end, LoRA reference, kill-and-resume."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoProcessor, GenerationConfig

from any2text.data.collator import MultimodalCollator
from any2text.data.prompts import PromptCollator, PromptMessages, as_prompt
from any2text.data.templates import get_template
from any2text.training.grpo import (
    GRPOConfig,
    completion_logps,
    completion_valid_mask,
    generate_groups,
    group_advantages,
    group_rows,
    grpo_loss,
    main,
    parse_args,
    reward_model_scores,
)
from any2text.training.reward import load_reward_model
from conftest import make_image, write_llava_data

RECEIVED: list[dict] = []


def record_columns(prompts, completions, completion_ids, **kwargs):
    """A reward function that keeps what it was given (the columns test reads it); its scores vary with the tokens."""
    RECEIVED.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **kwargs})
    return [float(sum(ids) % 7) for ids in completion_ids]


def abstain_on_odd(prompts, completions, completion_ids, **kwargs):
    return [None if len(ids) % 2 else 1.0 for ids in completion_ids]


def _tone(seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    """TRL-Prompt rows: image, audio, image + audio and text prompts, with extra columns for the reward functions."""
    folder = tmp_path_factory.mktemp("prompts")
    rows = []
    for i in range(8):
        row = {"id": f"p{i}", "solution": f"answer {i}", "meta": {"k": i}}
        kind = ("image", "audio", "both", "text")[i % 4]
        if kind in ("image", "both"):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(folder / f"img{i}.png")
            row["images"] = [f"img{i}.png"]
        if kind in ("audio", "both"):
            sf.write(folder / f"snd{i}.wav", _tone(), 16000)
            row["audios"] = [f"snd{i}.wav"]
        row["prompt"] = {"image": "<image>What colour?", "audio": "What pitch? <audio>",
                         "both": "<image><audio>Both?", "text": "Say hi."}[kind]  # fmt: skip
        rows.append(row)
    path = folder / "prompts.json"
    path.write_text(json.dumps(rows))
    return path


def _grpo_args(checkpoint: Path, data: Path, output: Path, *extra: str, template: str = "TRL-Prompt") -> list[str]:
    return [
        "--model_name_or_path", str(checkpoint), "--train_datasets", str(data), "--train_template", template,
        "--output_dir", str(output), "--reward_funcs", "test_grpo:record_columns", "--num_generations", "2",
        "--per_device_train_batch_size", "4", "--max_completion_length", "4", "--max_steps", "2",
        "--learning_rate", "1e-3", "--freeze_language_model", "False", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--seed", "3", "--disable_dropout", "True", *extra,
    ]  # fmt: skip


def _prompt_batch(processor, rows: list[dict]) -> dict:
    template = get_template("TRL-Prompt")
    collator = PromptCollator(processor)
    return collator([{"messages": as_prompt(template(row)), "index": i} for i, row in enumerate(rows)])


MIXED_ROWS = [
    {"prompt": "<image>What colour is it?", "images": [make_image("red")]},
    {"prompt": "Pitch?", "audios": [{"array": _tone(), "sampling_rate": 16000}]},
    {"prompt": "Hello there, how are you today?"},
]


# ---------------------------------------------------------------------------------------------------------------------
# The loss and the advantages, by hand


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_grpo_loss_equals_hand_computation(loss_type, beta):
    # Two completions of three token slots; ratios chosen to hit both clipping bounds.
    logps = [[-1.0, -2.0, -0.5], [-0.3, -1.5, -9.0]]
    old = [[-1.5, -2.0, -0.2], [-0.3, -1.0, -9.0]]
    ref = [[-1.2, -1.9, -0.4], [-0.5, -1.4, -9.0]]
    mask = [[1, 1, 1], [1, 1, 0]]
    advantages = [0.8, -1.3]
    eps_low, eps_high, max_len, normalizer = 0.2, 0.28, 5, 2.0
    loss, terms = grpo_loss(
        torch.tensor(logps), torch.tensor(old), torch.tensor(advantages), torch.tensor(mask),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, beta=beta, ref_per_token_logps=torch.tensor(ref),
        max_completion_length=max_len, normalizer=normalizer,
    )  # fmt: skip
    per_token, clipped = [], 0
    for i in range(2):
        row = []
        for t in range(3):
            ratio = math.exp(logps[i][t] - old[i][t])
            a = advantages[i]
            clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
            value = -min(ratio * a, clipped_ratio * a)
            if beta:
                d = ref[i][t] - logps[i][t]
                value += beta * (math.exp(d) - d - 1)
            clipped += mask[i][t] and clipped_ratio != ratio
            row.append(value * mask[i][t])
        per_token.append(row)
    assert clipped >= 2  # both bounds were exercised
    sums = [sum(row) for row in per_token]
    tokens = [sum(row) for row in mask]
    expected = {
        "grpo": sum(s / n for s, n in zip(sums, tokens)) / 2 / normalizer,
        "bnpo": sum(sums) / sum(tokens) / normalizer,
        "dr_grpo": sum(sums) / (2 * max_len) / normalizer,
        "dapo": sum(sums) / normalizer,
    }[loss_type]
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert ("kl" in terms) == bool(beta)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_advantages_match_trl_with_weights_and_abstentions(scale_rewards):
    # Two prompts x three completions, two reward functions; the second abstains (NaN) on some completions.
    nan = float("nan")
    per_func = torch.tensor([[1.0, 0.5], [0.0, nan], [2.0, 1.0], [nan, nan], [1.0, 0.0], [3.0, nan]])
    weights = torch.tensor([1.0, 2.0])
    advantages, rewards, _ = group_advantages(per_func, weights, 3, scale_rewards)
    summed = [2.0, 0.0, 4.0, None, 1.0, 3.0]  # nan-aware weighted sums; every function abstained on the 4th
    torch.testing.assert_close(rewards[[0, 1, 2, 4, 5]], torch.tensor([2.0, 0.0, 4.0, 1.0, 3.0]))
    assert math.isnan(rewards[3])

    def std(values):
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    groups = [[2.0, 0.0, 4.0], [1.0, 3.0]]
    every = [v for v in summed if v is not None]
    expected = []
    for g, group in enumerate(groups):
        mean = sum(group) / len(group)
        scale = {"group": std(group) + 1e-4, "batch": std(every) + 1e-4, "none": 1.0}[scale_rewards]
        values = [v for v in summed[3 * g : 3 * g + 3]]
        expected += [0.0 if v is None else (v - mean) / scale for v in values]
    torch.testing.assert_close(advantages, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_grpo_config_keeps_trl_names_defaults_and_checks():
    args = GRPOConfig(output_dir="o", per_device_train_batch_size=8)
    assert (args.num_generations, args.max_completion_length, args.beta, args.epsilon, args.epsilon_high) == (
        8, 512, 0.0, 0.2, 0.2)  # fmt: skip
    assert (args.loss_type, args.scale_rewards, args.num_iterations, args.learning_rate) == ("dapo", "group", 1, 1e-6)
    assert (args.steps_per_generation, args.generation_batch_size) == (1, 8)
    assert GRPOConfig(output_dir="o", scale_rewards=False, per_device_train_batch_size=8).scale_rewards == "none"
    with pytest.raises(ValueError, match="multiple of `--num_generations`"):
        GRPOConfig(output_dir="o", per_device_train_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(output_dir="o", loss_type="ppo", per_device_train_batch_size=8)
    groups = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--num_generations", "4",
                         "--per_device_train_batch_size", "8", "--steps_per_generation", "2", "--reward_weights", "1",
                         "0.5", "--reward_funcs", "a:b", "c:d", "--epsilon_high", "0.28"])  # fmt: skip
    config = groups[3]
    assert (config.generation_batch_size, config.reward_weights, config.epsilon_high) == (16, [1.0, 0.5], 0.28)


# ---------------------------------------------------------------------------------------------------------------------
# The group row and generation


def test_group_row_logps_equal_separate_forwards_with_media_encoded_once(tester):
    model = tester.get_model(cheap_audio=True)
    processor = tester.get_cheap_processor()
    batch = _prompt_batch(processor, MIXED_ROWS)
    completions = torch.tensor(
        [[[11, 12, 13], [14, 15, -1]], [[16, -1, -1], [17, 18, 19]], [[20, 21, 22], [23, 24, 25]]]
    )
    valid = completions >= 0
    completions = completions.clamp(min=0)
    rows = group_rows(batch, completions, valid)
    seen = []
    model.model.vision_tower.register_forward_hook(lambda m, args, out: seen.append(("image", len(args[0]))))
    with torch.no_grad():
        logps, _ = completion_logps(model, rows, completions)
    assert seen == [("image", 1)]  # one image for the whole group of two completions
    sft = MultimodalCollator(processor)
    for b, row in enumerate(MIXED_ROWS):
        prompt = as_prompt(get_template("TRL-Prompt")(row))
        single = sft._encode(list(prompt) + [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}], 0)
        prompt_ids = PromptCollator(processor)([{"messages": prompt}])["input_ids"][0]
        for g in range(2):
            ids = completions[b, g][valid[b, g]]
            inputs = {"input_ids": torch.cat([prompt_ids, ids])[None]}
            inputs.update({key: value for key, value in single["media"].items() if key != "text_replacement_offsets"})
            with torch.no_grad():
                logits = model(**inputs).logits[0, len(prompt_ids) - 1 : -1]
            expected = logits.log_softmax(-1).gather(-1, ids[:, None])[:, 0]
            torch.testing.assert_close(logps[b, g][valid[b, g]], expected, rtol=1e-4, atol=1e-4)


def test_generation_from_one_prefill_equals_generating_from_repeated_prompts(tester):
    model = tester.get_model(cheap_audio=True)
    processor = tester.get_cheap_processor()
    batch = _prompt_batch(processor, MIXED_ROWS)
    config = GenerationConfig(max_new_tokens=5, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    seen = []
    model.model.vision_tower.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    got = generate_groups(model, batch, 3, config)
    assert seen == [1] and got.shape == (3, 3, 5)  # the image encoded once for its three completions
    assert model.training is False
    for b in range(3):
        single = {key: value[b : b + 1] for key, value in batch.items() if key in ("input_ids", "attention_mask",
                                                                                   "mm_token_type_ids")}  # fmt: skip
        single = {k: v[:, v.shape[1] - int(batch["attention_mask"][b].sum()) :] for k, v in single.items()}
        media = {"pixel_values": batch["pixel_values"]} if b == 0 else {}
        if b == 1:
            media = {"input_features": batch["input_features"], "is_longer": batch.get("is_longer")}
            media = {k: v for k, v in media.items() if v is not None}
        reference = model.generate(**single, **media, generation_config=config)[0, single["input_ids"].shape[1] :]
        for g in range(3):
            assert torch.equal(got[b, g], reference), (b, g)


def test_completion_mask_ends_at_the_first_eos():
    ids = torch.tensor([[[5, 9, 7, 9], [1, 2, 3, 4]]])
    assert completion_valid_mask(ids, [9]).tolist() == [[[True, True, False, False], [True, True, True, True]]]


# ---------------------------------------------------------------------------------------------------------------------
# Rewards


def test_reward_model_scores_like_auto_model_for_sequence_classification(tiny_checkpoint, tester):
    reward_model = load_reward_model(str(tiny_checkpoint)).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    batch = _prompt_batch(processor, MIXED_ROWS)
    pad = processor.tokenizer.pad_token_id
    completions = torch.tensor(
        [[[11, 12, 13], [14, pad, pad]], [[16, 17, pad], [17, 18, 19]], [[20, 21, 22], [23, 24, 25]]]
    )
    valid = torch.ones_like(completions, dtype=torch.bool)
    valid[0, 1, 1:] = False
    valid[1, 0, 2:] = False
    with torch.no_grad():
        scores = reward_model_scores(reward_model, group_rows(batch, completions, valid), completions, valid)
    auto = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint), num_labels=1).eval()
    auto.score.load_state_dict(reward_model.score.state_dict())
    for b in range(3):
        keep = batch["attention_mask"][b].bool()
        media = {}
        if "pixel_values" in batch and b == 0:
            media["pixel_values"] = batch["pixel_values"]
        if b == 1:
            media.update({k: batch[k] for k in ("input_features", "is_longer") if k in batch})
        for g in range(2):
            ids = torch.cat([batch["input_ids"][b][keep], completions[b, g][valid[b, g]]])[None]
            with torch.no_grad():
                expected = auto(input_ids=ids, **media).logits[0, 0]
            torch.testing.assert_close(scores[b, g], expected, rtol=1e-4, atol=1e-4)


def test_reward_functions_get_the_rows_columns_and_abstentions_count(tiny_checkpoint, prompts_file, tmp_path):
    RECEIVED.clear()
    args = _grpo_args(tiny_checkpoint, prompts_file, tmp_path / "out", "--max_steps", "1")
    args[args.index("test_grpo:record_columns") + 1 : args.index("test_grpo:record_columns") + 1] = [
        "test_grpo:abstain_on_odd"
    ]
    eval_args = [
        "--eval_datasets",
        str(prompts_file),
        "--eval_template",
        "TRL-Prompt",
        "--per_device_eval_batch_size",
        "8",
    ]
    assert main(args + ["--reward_weights", "1.0", "0.5", *eval_args]) == 0
    call = RECEIVED[0]
    assert len(call["completions"]) == 4 and len(call["prompts"]) == 4  # two prompts x two completions
    assert all(isinstance(p, str) for p in call["prompts"])  # TRL-Prompt's string prompts as the rows hold them
    assert call["prompts"][0] == call["prompts"][1] and call["solution"][0] == call["solution"][1]
    assert set(call["solution"]) <= {f"answer {i}" for i in range(8)} and call["meta"][0]["k"] in range(8)
    assert "images" not in call and "audios" not in call and call["trainer_state"] is not None
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    logged = state["log_history"][0]
    for name in ("reward", "reward_std", "rewards/record_columns/mean", "rewards/abstain_on_odd/std",
                 "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio", "entropy",
                 "clip_ratio/region_mean"):  # fmt: skip
        assert name in logged, name
    # Evaluation at the end: every prompt once (4 a batch), G completions each, TRL's metrics with `eval_`.
    assert len(RECEIVED) == 1 + 2 and all(len(call["completions"]) == 8 for call in RECEIVED[1:])
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_loss", "eval_reward", "eval_rewards/record_columns/mean", "eval_completions/mean_length"} <= set(
        metrics
    )


def test_sft_template_rows_reach_rewards_as_answer(tiny_checkpoint, tmp_path):
    data = write_llava_data(tmp_path / "data", ["image", "audio"])
    RECEIVED.clear()
    assert main(_grpo_args(tiny_checkpoint, data, tmp_path / "out", "--max_steps", "1", template="LLaVA")) == 0
    answers = RECEIVED[0]["answer"]
    assert len(answers) == 4 and set(answers) <= {"red", "green", "blue", "low", "high"}
    assert isinstance(RECEIVED[0]["completions"][0], list)  # message prompts get message completions, as TRL
    assert RECEIVED[0]["completions"][0][0]["role"] == "assistant"


# ---------------------------------------------------------------------------------------------------------------------
# The stage end to end


def test_mixed_image_audio_batch_trains_with_media_encoded_once_per_prompt(tiny_checkpoint, prompts_file, tmp_path):
    from any2text.training.grpo import build_grpo_trainer

    groups = parse_args(_grpo_args(tiny_checkpoint, prompts_file, tmp_path / "out", "--beta", "0.1",
                                   "--per_device_train_batch_size", "8", "--num_generations", "4",
                                   "--skip_bad_rows", "True"))  # fmt: skip
    trainer = build_grpo_trainer(*groups)
    encoded = []
    trainer.model.model.vision_tower.register_forward_hook(lambda m, a, o: encoded.append(("image", len(a[0]))))
    start = {k: v.clone() for k, v in trainer.model.named_parameters() if "language_model" in k}
    trainer.train()
    # Per step: two prompts (image + audio, image + audio or text), each encoded once in the prefill, once in the
    # loss forward and once in the reference's; TRL would encode each image num_generations (4) times in each.
    assert encoded and all(n <= 2 for _, n in encoded)
    moved = any(not torch.equal(v, dict(trainer.model.named_parameters())[k]) for k, v in start.items())
    assert moved
    logged = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logged) == 2 and all(math.isfinite(h["kl"]) for h in logged)


def test_prompt_over_max_length_is_a_bad_row_and_text_truncation_keeps_its_end(tiny_checkpoint, prompts_file):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    template = get_template("TRL-Prompt")
    prompt = as_prompt(template({"prompt": "Say hi " * 20}))
    full = PromptCollator(processor)([{"messages": prompt}])["input_ids"][0]
    cut = PromptCollator(processor, max_length=12, truncation="text")([{"messages": prompt}])["input_ids"][0]
    assert len(cut) == 12 and torch.equal(cut, full[-12:])  # the generation prompt stays
    with pytest.raises(ValueError, match="max_length"):
        PromptCollator(processor, max_length=12)([{"messages": prompt}])
    with pytest.raises(ValueError, match="placeholder"):
        template({"prompt": "<image><image>Two?", "images": ["a.png"]})
    assert isinstance(as_prompt(template({"prompt": [{"role": "user", "content": "Hi"}]})), PromptMessages)


def test_lora_reference_is_the_model_with_adapters_disabled(tiny_checkpoint, prompts_file, tmp_path):
    from any2text.training.grpo import build_grpo_trainer

    groups = parse_args(_grpo_args(tiny_checkpoint, prompts_file, tmp_path / "out", "--use_peft", "True",
                                   "--beta", "0.1", "--learning_rate", "5e-2"))  # fmt: skip
    trainer = build_grpo_trainer(*groups)
    assert trainer.ref_model is None
    trainer.train()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    batch = _prompt_batch(processor, MIXED_ROWS[:1])
    completions = torch.tensor([[[11, 12, 13], [14, 15, 16]]])
    rows = group_rows(batch, completions, torch.ones_like(completions, dtype=torch.bool))
    reference, context = trainer._reference_model()
    with torch.no_grad(), context:
        ref_logps, _ = completion_logps(reference, rows, completions)
    with torch.no_grad():
        policy_logps, _ = completion_logps(trainer.model, rows, completions)
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        base_logps, _ = completion_logps(base, rows, completions)
    torch.testing.assert_close(ref_logps, base_logps, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-4)


def test_kill_and_resume_ends_equal_to_an_uninterrupted_run(tiny_checkpoint, prompts_file, tmp_path):
    args = _grpo_args(tiny_checkpoint, prompts_file, tmp_path / "resumed", "--max_steps", "4", "--save_strategy",
                      "steps", "--save_steps", "2", "--lr_scheduler_type", "constant", "--beta", "0.1")  # fmt: skip
    assert main(args) == 0
    shutil.copytree(tmp_path / "resumed", tmp_path / "full", ignore=shutil.ignore_patterns("checkpoint-*"))
    assert main(args + ["--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-2")]) == 0
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for key in full:
        torch.testing.assert_close(full[key], resumed[key], rtol=1e-5, atol=1e-6, msg=key)
    start = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert any(not torch.equal(start[k], full[k]) for k in full if "language_model" in k)
    history = json.loads((tmp_path / "full" / "trainer_state.json").read_text())["log_history"]
    resumed_history = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())["log_history"]
    rewards = [h["reward"] for h in history if "reward" in h]
    assert rewards[2:] == [h["reward"] for h in resumed_history if "reward" in h][2:]  # the same completions drawn


@pytest.mark.slow
def test_zero3_two_ranks_mixed_modality_grpo(torchrun, tiny_checkpoint, prompts_file, tmp_path):
    """Rank 0 gets image prompts, rank 1 audio prompts (sequential, one prompt per rank and step): generation (prefill,
    decoding) and the loss must run the same towers on both ranks, or ZeRO-3's parameter gathers hang."""
    rows = json.loads(prompts_file.read_text())
    ordered = [rows[0], rows[1], rows[4], rows[5]]  # image, audio, image, audio
    for row in ordered:
        for key in ("images", "audios"):
            if key in row:
                row[key] = [str(prompts_file.parent / path) for path in row[key]]
    data = tmp_path / "prompts.json"
    data.write_text(json.dumps(ordered))
    out = tmp_path / "out"
    rewards = tmp_path / "my_rewards.py"  # a reward function given by its file (the launched ranks lack `tests/`)
    rewards.write_text("def varied(prompts, completions, completion_ids, **kw):\n"
                       "    return [float(sum(ids) % 7) for ids in completion_ids]\n")  # fmt: skip
    args = _grpo_args(tiny_checkpoint, data, out, "--train_sampling_strategy", "sequential",
                      "--per_device_train_batch_size", "2", "--beta", "0.1", "--use_peft", "True",
                      "--allow_media_outside_root", "True", "--disable_tqdm", "True")  # fmt: skip
    args[args.index("test_grpo:record_columns")] = f"{rewards}:varied"
    torchrun("any2text.grpo", *args)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("kl" in h for h in history) == 2
    assert (out / "adapter_model.safetensors").is_file()


def test_one_generation_serves_steps_per_generation_times_num_iterations_steps(
    tiny_checkpoint, prompts_file, tmp_path
):
    from any2text.training.grpo import build_grpo_trainer

    groups = parse_args(_grpo_args(tiny_checkpoint, prompts_file, tmp_path / "out", "--steps_per_generation", "2",
                                   "--num_iterations", "2", "--max_steps", "4", "--learning_rate", "5e-2",
                                   "--train_sampling_strategy", "sequential"))  # fmt: skip
    trainer = build_grpo_trainer(*groups)
    generated, sliced = [], []
    generate = trainer.generate_completions
    trainer.generate_completions = lambda *a, **k: generated.append(1) or generate(*a, **k)
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda model, inputs, **k: (
        sliced.append(inputs["index"].tolist()) or compute_loss(model, inputs, **k)
    )
    trainer.train()
    # Four prompts generated once (image, audio, image + audio, text; their media split with them), served as two
    # slices of two prompts, twice, against the generating policy's log-probs (ratio 1 on the first slice).
    assert len(generated) == 1
    assert sliced == [[0, 1], [2, 3], [0, 1], [2, 3]]
    ratios = [h["clip_ratio/region_mean"] for h in trainer.state.log_history if "clip_ratio/region_mean" in h]
    assert ratios[0] == 0.0 and len(ratios) == 4


def test_bad_prompt_rows_are_skipped_counted_and_capped_as_in_every_stage(tiny_checkpoint, prompts_file, tmp_path):
    from any2text.data.bad_rows import TooManyBadRowsError

    rows = json.loads(prompts_file.read_text())
    rows[2] = {**rows[0], "id": "broken", "images": ["missing.png"]}
    data = prompts_file.parent / "with_bad.json"
    data.write_text(json.dumps(rows))
    with pytest.raises(TooManyBadRowsError, match="max_bad_rows"):
        main(_grpo_args(tiny_checkpoint, data, tmp_path / "zero", "--skip_bad_rows", "True", "--max_bad_rows", "0",
                        "--max_steps", "1", "--validate_rows", "True"))  # fmt: skip
    out = tmp_path / "one"
    assert main(_grpo_args(tiny_checkpoint, data, out, "--skip_bad_rows", "True", "--max_bad_rows", "1",
                           "--max_steps", "1", "--validate_rows", "True")) == 0  # fmt: skip
    logged = [json.loads(line) for line in (out / "bad_rows.jsonl").read_text().splitlines()]
    assert [row["id"] for row in logged] == ["broken"]


def test_video_prompts_train_with_each_video_encoded_once_per_prompt(tiny_checkpoint, tmp_path):
    """TRL-Prompt rows with `videos` (frame folders) beside image prompts: the vision tower sees each prompt's frames
    once per pass, never `num_generations` copies of them."""
    from any2text.training.grpo import build_grpo_trainer

    frames = 8
    rows = []
    for i in range(4):
        folder = tmp_path / f"clip{i}"
        folder.mkdir()
        for t in range(frames):
            Image.new("RGB", (16, 16), (30 * t if i % 2 else 240 - 30 * t, 0, 0)).save(folder / f"{t:02d}.png")
        rows.append({"prompt": "<video>Brighter or darker?", "videos": [f"clip{i}"], "solution": "brighter"})
    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "img.png")
    rows.append({"prompt": "<image>What colour?", "images": ["img.png"], "solution": "green"})
    data = tmp_path / "video_prompts.json"
    data.write_text(json.dumps(rows))
    groups = parse_args(_grpo_args(tiny_checkpoint, data, tmp_path / "out", "--per_device_train_batch_size", "8",
                                   "--num_generations", "4", "--beta", "0.1"))  # fmt: skip
    trainer = build_grpo_trainer(*groups)
    seen = []
    trainer.model.model.vision_tower.register_forward_hook(lambda m, a, o: seen.append(len(a[0])))
    trainer.train()
    # Two prompts a step: at most two videos' frames (or a video's and an image) per tower call; TRL would send 4x.
    assert seen and max(seen) <= 2 * frames
    assert max(seen) > 1  # video frames did go through the tower
    logged = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logged) == 2 and all(math.isfinite(h["kl"]) and math.isfinite(h["loss"]) for h in logged)
    assert any("brighter" in call.get("solution", []) for call in RECEIVED)  # the video rows' columns arrived
