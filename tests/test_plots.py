"""`training_curves.png` in every run's output_dir (at each save and at the end), its panels, the card's link, and
`--report_to tensorboard`."""

import logging
from pathlib import Path

import pytest
from PIL import Image
from transformers import TrainerCallback

from any2text.training.plots import CURVES_FILE, TrainingCurvesCallback, curve_panels, plot_training_curves
from conftest import train_args

DPO_HISTORY = [
    {"loss": 0.69, "grad_norm": 1.5, "learning_rate": 5e-3, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
     "rewards/accuracies": 0.0, "rewards/margins": 0.0, "logps/chosen": -40.0, "logps/rejected": -42.0,
     "epoch": 0.25, "step": 1},
    {"loss": 0.52, "grad_norm": 1.1, "learning_rate": 2.5e-3, "rewards/chosen": 0.3, "rewards/rejected": -0.2,
     "rewards/accuracies": 0.75, "rewards/margins": 0.5, "logps/chosen": -37.0, "logps/rejected": -44.0,
     "epoch": 0.5, "step": 2},
    {"eval_loss": 0.55, "eval_rewards/accuracies": 0.5, "eval_rewards/margins": 0.4, "eval_runtime": 0.3,
     "eval_samples_per_second": 13.0, "eval_steps_per_second": 3.3, "epoch": 0.5, "step": 2},
    {"train_runtime": 4.2, "train_samples_per_second": 3.8, "train_steps_per_second": 0.9, "total_flos": 0.0,
     "train_loss": 0.6, "epoch": 0.5, "step": 2},
]  # fmt: skip


def _series(panels) -> dict[str, list[str]]:
    return {panel.title: list(panel.series) for panel in panels}


def test_panels_group_the_stages_own_metrics_and_leave_out_run_summaries():
    panels = curve_panels(DPO_HISTORY)
    assert _series(panels) == {
        "loss": ["loss", "eval_loss"],
        "learning rate": ["learning_rate"],
        "gradient norm": ["grad_norm"],
        "rewards": ["rewards/chosen", "rewards/rejected", "rewards/margins", "eval_rewards/margins"],
        "accuracy": ["rewards/accuracies", "eval_rewards/accuracies"],
        "logps": ["logps/chosen", "logps/rejected"],
    }
    loss = panels[0].series
    assert loss["loss"] == [(1.0, 0.69), (2.0, 0.52)] and loss["eval_loss"] == [(2.0, 0.55)]

    # A reward model's and GRPO's own keys (TRL's names); a non-finite value, a flag or a counter is not a point.
    reward_model = [{"loss": 0.7, "accuracy": 0.5, "margin": 0.1, "step": 1}, {"eval_accuracy": 0.6, "step": 1}]
    assert _series(curve_panels(reward_model)) == {
        "loss": ["loss"], "accuracy": ["accuracy", "eval_accuracy"], "margin": ["margin"],
    }  # fmt: skip
    grpo = [{"loss": 0.0, "reward": 0.2, "reward_std": 0.1, "kl": float("nan"), "completions/mean_length": 7.0,
             "num_tokens": 96.0, "skipped": True, "step": 1}]  # fmt: skip
    assert _series(curve_panels(grpo)) == {
        "loss": ["loss"], "reward": ["reward", "reward_std"], "completions": ["completions/mean_length"],
    }  # fmt: skip
    assert curve_panels([{"train_runtime": 1.0, "step": 0}]) == []


def test_plot_writes_one_image_and_nothing_without_data(tmp_path):
    path = plot_training_curves(DPO_HISTORY, tmp_path / "sub" / "curves.png", title="dpo")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height > 300  # 3 columns x 2 rows of panels
    assert plot_training_curves([{"train_runtime": 1.0}], tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()


def test_a_plotting_error_is_logged_and_training_goes_on(tmp_path, caplog):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    state = TrainerState(log_history=DPO_HISTORY)
    args = TrainingArguments(output_dir=str(blocker), use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING, logger="any2text"):
        TrainingCurvesCallback().on_train_end(args, state, TrainerControl())
    assert "Could not draw the training curves" in caplog.text and str(blocker / CURVES_FILE) in caplog.text


def test_sft_run_writes_the_curves_and_its_card_links_them(stage1_output):
    from any2text.training.model_card import _previous_card

    assert (stage1_output.path / CURVES_FILE).is_file()
    card = (stage1_output.path / "README.md").read_text()
    assert card.count(f"]({CURVES_FILE})") == 1
    # The next stage keeps this card below its own, without the link (it would show the next stage's image).
    kept = "\n".join(_previous_card(str(stage1_output.path)))
    assert "## What trained" in kept and CURVES_FILE not in kept


class _Snapshots(TrainerCallback):
    """The curves file as it is right after each save and at the end (callbacks run in order; this one is last)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / CURVES_FILE
        self.saves: list[bytes | None] = []
        self.end: bytes | None = None

    def _read(self) -> bytes | None:
        return self.path.read_bytes() if self.path.is_file() else None

    def on_save(self, args, state, control, **kwargs):
        self.saves.append(self._read())

    def on_train_end(self, args, state, control, **kwargs):
        self.end = self._read()


@pytest.mark.slow
def test_dpo_run_draws_its_metrics_at_each_save_and_at_the_end(tiny_checkpoint, tmp_path):
    from any2text.demo.synthetic_preference import generate_preference_data
    from any2text.training.dpo import build_dpo_trainer, parse_args
    from any2text.training.train import run_stage

    pairs = generate_preference_data(tmp_path / "pairs", n_train=8, n_test=4)["train"]
    output = tmp_path / "out"
    groups = parse_args([
        "--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(output),
        "--train_datasets", str(pairs), "--train_template", "TRL-Preference", "--use_peft", "True",
        "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--logging_steps", "1", "--max_steps", "3",
        "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none", "--use_cpu", "True",
        "--disable_tqdm", "True", "--seed", "0", "--freeze_language_model", "False", "--freeze_mm_proj", "True",
    ])  # fmt: skip
    trainer = build_dpo_trainer(*groups)
    snapshots = _Snapshots(output)
    trainer.add_callback(snapshots)
    run_stage(trainer, groups[0], groups[1], groups[2], groups[-1])

    # Saved at step 2 and at step 3 (the last step), drawn each time; the end's figure has all three steps.
    assert len(snapshots.saves) == 2 and all(snapshots.saves)
    assert snapshots.end is not None and snapshots.end != snapshots.saves[0]
    assert (output / CURVES_FILE).read_bytes() == snapshots.end
    titles = [panel.title for panel in curve_panels(trainer.state.log_history)]
    assert titles[:3] == ["loss", "learning rate", "gradient norm"]
    assert {"rewards", "accuracy", "logps"} <= set(titles)
    assert f"]({CURVES_FILE})" in (output / "README.md").read_text()


def test_report_to_tensorboard_writes_event_files(train_workdir, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the `dev` extra (`make test` installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from any2text.training.train import main

    output = tmp_path / "out"
    main(
        ["--model_name_or_path", str(train_workdir / "base"), "--output_dir", str(output)]
        + train_args(train_workdir, report_to="tensorboard", num_train_epochs="1")
    )
    (events,) = (output / "runs").glob("*/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/grad_norm"} <= set(tags)
    assert len(accumulator.Scalars("train/loss")) == 3  # 12 rows, batches of 4, one epoch, logged every step
