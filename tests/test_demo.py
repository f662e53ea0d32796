"""A shortened `make demo`: the real builder, stages 1 and 2 through `train()`, reload with the Auto classes, score,
DPO."""

import json

import pytest

from any2text.demo import run_demo


@pytest.mark.slow
def test_short_demo_learns_to_use_image_and_audio(tmp_path):
    # Two thirds of the demo's rows. Counting beeps is the slowest skill: at this size (seed 1) 6 epochs of stage 2
    # left audio at 72-74% against a blind 42-44%, just under the bar below, so the test trains 8.
    results = run_demo(
        tmp_path / "demo", n_train=800, n_test=200, stage1_epochs=1, stage1_learning_rate=1e-3, stage2_epochs=8, seed=1
    )

    for modality in ("image", "audio"):
        r = results["per_modality"][modality]
        # The media carry the answers: the trained model must beat the same model without them by a wide margin,
        # and the blind model cannot do much better than chance.
        assert r["accuracy"] >= r["blind_accuracy"] + 0.3, (modality, r)
        assert r["accuracy"] >= r["chance"] + 0.3, (modality, r)
        assert r["blind_accuracy"] <= r["chance"] + 0.15, (modality, r)

    # Stage 3: DPO on a preference task stage 2 never taught; the preferred answer depends on the image / clip.
    dpo = results["dpo"]
    assert dpo["logp_accuracy_after"]["all"] >= dpo["logp_accuracy_before"]["all"] + 0.25, dpo
    assert dpo["reward_accuracy_after"]["all"] >= 0.75, dpo
    assert dpo["blind_logp_accuracy_after"]["all"] <= 0.7, dpo  # the media, not the wording, decide
    # ... and greedy answers follow the preferred one (stage 2 never produced these words: 0% before).
    assert dpo["generation_follows_after"]["all"] >= dpo["generation_follows_before"]["all"] + 0.5, dpo

    out = tmp_path / "demo"
    for name in ("results.json", "results.md", "loss_curves.png", "stage1/trainer_state.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["per_modality"] == results["per_modality"]
    # Every step's wall time is reported, and they add up to the total.
    timings = saved["timings"]
    steps = ("data_s", "build_s", "stage1_s", "stage2_s", "eval_s", "dpo_s")
    assert set(timings) == {*steps, "total_s"}
    assert sum(timings[s] for s in steps) == pytest.approx(timings["total_s"], rel=0.01)
    history = json.loads((out / "stage2/trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] / 3
