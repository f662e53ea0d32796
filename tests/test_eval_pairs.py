"""Pair benchmarks (`preference`, `reward`) and registered benchmarks on the one evaluation runner.

The first three tests are issue 18's `eval --benchmark preference` findings: on 4b017fb it silently overwrote an
earlier run, and rejected `--skip_bad_items`, `--overwrite` and `--allow_media_outside_root` (whose error told the
user to pass it).
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

import any2text.evaluation.preference as preference
from any2text.cli import main as cli_main
from any2text.evaluation import BENCHMARKS, EvalItem, ScorePairs, pair_scores, register_benchmark
from any2text.evaluation.evaluate import BadItemError, EvalArguments, read_predictions, run_evaluation
from any2text.evaluation.preference import reward_scorer
from conftest import tiny_models, tiny_text_config


def _write_pairs(folder: Path, n: int = 4, bad: dict[int, dict] | None = None) -> Path:
    """`n` TRL-format image pairs (`pairs.jsonl`, images beside it); `bad` replaces fields of some rows."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"images/{i}.png"
        rng = np.random.default_rng(i)
        PIL.Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name)
        row = {
            "id": f"p{i}",
            "prompt": "What colour is it?",
            "images": [name],
            "chosen": "red",
            "rejected": "a deep dark blue colour",
        }
        rows.append({**row, **(bad or {}).get(i, {})})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _eval(model, data, out, *extra) -> dict:
    argv = ["eval", "--benchmark", "preference", "--model", str(model), "--data", str(data), "--output_dir", str(out)]
    assert cli_main(argv + ["--batch_size", "2", *extra]) == 0
    return json.loads((Path(out) / "preference" / "scores.json").read_text())


def test_preference_refuses_to_overwrite_an_earlier_run(tiny_llava_checkpoint, tmp_path):
    data = _write_pairs(tmp_path / "data")
    first = _eval(tiny_llava_checkpoint, data, tmp_path / "out")
    predictions = tmp_path / "out" / "preference" / "predictions.jsonl"
    before = predictions.read_text()
    assert first["num_items"] == 4 and first["primary_score"] == "logp_accuracy"
    with pytest.raises(ValueError, match=r"another run \(`ref_model` None -> .*--overwrite True"):
        _eval(tiny_llava_checkpoint, data, tmp_path / "out", "--ref_model", str(tiny_llava_checkpoint))
    assert predictions.read_text() == before  # the earlier run is intact

    again = _eval(tiny_llava_checkpoint, data, tmp_path / "out", "--ref_model", str(tiny_llava_checkpoint),
                  "--overwrite", "True")  # fmt: skip
    records = read_predictions(predictions)
    assert len(records) == 4 and all("ref_chosen_logp" in r for r in records)
    # The policy is its own reference: every implicit reward is 0, so no pair is preferred (TRL's strict `>`).
    assert again["primary_score"] == "reward_accuracy" and again["scores"]["reward_accuracy"] == 0.0


def test_preference_skips_bad_items_when_asked(tiny_llava_checkpoint, tmp_path):
    data = _write_pairs(tmp_path / "data", n=5, bad={1: {"chosen": ""}, 3: {"images": ["images/missing.png"]}})
    with pytest.raises(BadItemError, match=r"Benchmark `preference`: item `p1` \(row 1\).*--skip_bad_items True"):
        _eval(tiny_llava_checkpoint, data, tmp_path / "out")
    result = _eval(tiny_llava_checkpoint, data, tmp_path / "out", "--skip_bad_items", "True")
    assert [(s["id"], s["row"]) for s in result["skipped_items"]] == [("p1", 1), ("p3", 3)]
    assert "missing.png" in result["skipped_items"][1]["error"]
    assert result["num_items"] == 3 and result["num_skipped"] == 2
    assert [r["id"] for r in read_predictions(tmp_path / "out" / "preference" / "predictions.jsonl")] == ["p0", "p2", "p4"]  # fmt: skip


def test_preference_reads_media_outside_the_root_only_when_allowed(tiny_llava_checkpoint, tmp_path):
    data = _write_pairs(tmp_path / "data", n=2, bad={0: {"images": ["../outside.png"]}})
    PIL.Image.new("RGB", (8, 8), "red").save(tmp_path / "outside.png")
    with pytest.raises(BadItemError, match=r"item `p0`.*outside `media_root=.*--allow_media_outside_root True"):
        _eval(tiny_llava_checkpoint, data, tmp_path / "out")
    result = _eval(tiny_llava_checkpoint, data, tmp_path / "out", "--allow_media_outside_root", "True")
    assert result["num_items"] == 2 and result["num_skipped"] == 0


def test_preference_resumes_after_a_crash_and_scores_with_media_withheld(tiny_llava_checkpoint, tmp_path, monkeypatch):
    data = _write_pairs(tmp_path / "data", n=6)
    real, calls = preference.score_pairs, []

    def crash_on_third_call(model, processor, pairs, batch_size=8):
        calls.append([len(m["content"]) for m in pairs[0].prompt])
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(model, processor, pairs, batch_size)

    monkeypatch.setattr(preference, "score_pairs", crash_on_third_call)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _eval(tiny_llava_checkpoint, data, tmp_path / "out")
    # One call with the media, one with the media withheld (image part gone), per batch; batch 1 was flushed.
    assert calls[:2] == [[2], [1]]
    path = tmp_path / "out" / "preference" / "predictions.jsonl"
    assert [r["id"] for r in read_predictions(path)] == ["p0", "p1"]

    calls.clear()
    monkeypatch.setattr(preference, "score_pairs", lambda m, p, pairs, batch_size=8: (calls.append(len(pairs)),
                        [(-1.0, -2.0) if len(pairs[0].prompt[0]["content"]) == 2 else (-2.0, -1.0)] * len(pairs))[1])  # fmt: skip
    result = _eval(tiny_llava_checkpoint, data, tmp_path / "out")
    assert calls == [2, 2, 2, 2]  # only the 4 missing pairs, with and without media
    records = read_predictions(path)
    assert [r["id"] for r in records] == [f"p{i}" for i in range(6)]
    assert {"id", "prompt", "chosen_logp", "rejected_logp", "correct", "blind_chosen_logp", "blind_correct"} <= set(
        records[-1]
    )
    assert records[-1]["prompt"] == "What colour is it?"
    assert result["scores"]["logp_accuracy"] == pytest.approx(
        (sum(r["chosen_logp"] > r["rejected_logp"] for r in records)) / 6
    )
    assert result["scores"]["blind_logp_accuracy"] == pytest.approx(
        sum(r["blind_chosen_logp"] > r["blind_rejected_logp"] for r in records) / 6
    )
    markdown = (tmp_path / "out" / "preference" / "scores.md").read_text()
    assert (
        markdown.startswith("# preference (pairwise_logp_accuracy, 6 items)") and "| blind_logp_accuracy |" in markdown
    )


def test_benchmark_specific_arguments_are_checked(tiny_llava_checkpoint, tmp_path):
    data = _write_pairs(tmp_path / "data", n=2)
    with pytest.raises(ValueError, match=r"`--max_new_tokens` does not apply to `--benchmark preference`"):
        _eval(tiny_llava_checkpoint, data, tmp_path / "out", "--max_new_tokens", "3")
    with pytest.raises(ValueError, match=r"`--ref_model` does not apply to `--benchmark reward`"):
        EvalArguments(model="m", benchmark="reward", output_dir="o", ref_model="r")
    with pytest.raises(ValueError, match=r"Template `LLaVA` gives single answers, not preference pairs"):
        _eval(tiny_llava_checkpoint, data, tmp_path / "out", "--template", "LLaVA")


# ---------------------------------------------------------------------------------------------------------------------
# The registry: a benchmark is a record; the reward route is a `ScorePairs` record


class _ToyRewardModel(torch.nn.Module):
    """`AutoModelForSequenceClassification`-shaped: reward = +/- the number of tokens, + with an image, - without."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, input_ids, attention_mask, pixel_values=None, **kwargs):
        self.seen.append(pixel_values is not None)
        lengths = attention_mask.sum(-1, keepdim=True).float()
        sign = -1.0 if pixel_values is not None else 1.0
        return SequenceClassifierOutput(logits=sign * lengths + self.bias)


def test_a_registered_toy_reward_benchmark_runs_on_the_runner(tiny_llava_checkpoint, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_checkpoint)
    model = _ToyRewardModel()
    loads = []

    def load_model(path, args):
        loads.append(path)
        return model, processor

    register_benchmark(
        "toy_reward",
        template="TRL-Preference",
        predict=ScorePairs(name="reward", load_model=load_model, make_scorer=reward_scorer),
        metric=pair_scores("reward"),
        primary_score="accuracy",
        replace=True,
    )
    try:
        data = _write_pairs(tmp_path / "data", n=3)  # the chosen answer is the shorter one
        argv = ["eval", "--benchmark", "toy_reward", "--model", "toy", "--data", str(data), "--output_dir",
                str(tmp_path / "out"), "--batch_size", "2"]  # fmt: skip
        assert cli_main(argv) == 0
        result = json.loads((tmp_path / "out" / "toy_reward" / "scores.json").read_text())
        # With the image the shorter answer wins (accuracy 1), without it the longer one (blind accuracy 0).
        assert result["scores"]["accuracy"] == 1.0 and result["scores"]["blind_accuracy"] == 0.0
        assert result["scores"]["margin"] > 0 > result["scores"]["blind_margin"]
        assert result["primary_score"] == "accuracy" and loads == ["toy"]
        # chosen + rejected, with and without the image, per batch of 2 then 1.
        assert model.seen == [True, True, False, False] * 2
        # A rerun resumes: nothing left, so the model is not even loaded.
        assert cli_main(argv) == 0 and loads == ["toy"]
        with pytest.raises(ValueError, match="already registered"):
            register_benchmark("toy_reward", template="TRL-Preference", metric=pair_scores("reward"),
                               primary_score="accuracy")  # fmt: skip
    finally:
        BENCHMARKS.pop("toy_reward")


class _Echo:
    """A custom predictor: the answer is the row's `text`; every record says so."""

    options = ()
    run_keys = ()

    def check(self, benchmark, template):
        pass

    def build_item(self, benchmark, row, row_index, template, prompt_suffix=None):
        return EvalItem(
            id=str(row["id"]), messages=[{"role": "user", "content": row["text"]}], references=[row["ref"]]
        )

    def load(self, benchmark, args, model=None, processor=None):
        return lambda items: [{"prediction": item.messages[0]["content"]} for item in items]


def test_a_registered_custom_predictor_and_packaged_metric(tmp_path):
    rows = [{"id": i, "text": t, "ref": r} for i, (t, r) in enumerate([("yes", "yes"), ("no", "yes"), ("no", "no")])]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    register_benchmark("toy_echo", template="LLaVA", predict=_Echo(), metric="exact_match",
                       primary_score="exact_match", required_columns=("text", "ref"), replace=True)  # fmt: skip
    try:
        args = EvalArguments(model="none", benchmark="toy_echo", data=str(data), output_dir=str(tmp_path / "out"))
        result = run_evaluation(args)
        assert result["scores"]["exact_match"] == pytest.approx(2 / 3) and result["metric"] == "exact_match"
        assert [r["prediction"] for r in read_predictions(tmp_path / "out" / "toy_echo" / "predictions.jsonl")] == [
            "yes", "no", "no",
        ]  # fmt: skip
    finally:
        BENCHMARKS.pop("toy_echo")


def test_reward_benchmark_loads_a_sequence_classification_checkpoint(tmp_path):
    """`--benchmark reward` on a stock `LlamaForSequenceClassification` (text-only pairs): the record's rewards are the
    model's scores at each sequence's last token, whatever the batch (padding) around it."""
    from transformers import LlamaForSequenceClassification

    tester = tiny_models()
    config = tiny_text_config(vocab_size=len(tester.tokenizer))
    config.pad_token_id, config.num_labels = tester.tokenizer.pad_token_id, 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tester.get_llava_processor().save_pretrained(tmp_path / "rm")
    rows = [{"id": f"t{i}", "prompt": "Say hi" + "!" * i, "chosen": "hi", "rejected": "hello there " * (i + 1)}
            for i in range(3)]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    runs = {}
    for batch_size in (1, 3):
        argv = ["eval", "--benchmark", "reward", "--model", str(tmp_path / "rm"), "--data", str(data),
                "--output_dir", str(tmp_path / f"out{batch_size}"), "--batch_size", str(batch_size)]  # fmt: skip
        assert cli_main(argv) == 0
        runs[batch_size] = read_predictions(tmp_path / f"out{batch_size}" / "reward" / "predictions.jsonl")
    for alone, batched in zip(runs[1], runs[3]):
        assert batched["chosen_reward"] == pytest.approx(alone["chosen_reward"], abs=1e-5)
        assert batched["rejected_reward"] == pytest.approx(alone["rejected_reward"], abs=1e-5)
        # No media to withhold: the blind score is the same.
        assert batched["blind_chosen_reward"] == pytest.approx(alone["chosen_reward"], abs=1e-5)
    assert len({r["chosen_reward"] for r in runs[1]}) == 3  # the prompts differ, so do the scores
    scores = json.loads((tmp_path / "out3" / "reward" / "scores.json").read_text())["scores"]
    assert scores["accuracy"] == sum(r["chosen_reward"] > r["rejected_reward"] for r in runs[3]) / 3
