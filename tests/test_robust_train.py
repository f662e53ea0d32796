"""Robust training: non-finite losses, gradients and weights; torn checkpoints; `kill -9` during a save, then resume."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import get_last_checkpoint

from any2text.training.checkpoints import MANIFEST_NAME, checkpoint_problems, resolve_resume_checkpoint, write_manifest
from any2text.training.nonfinite import NonFiniteError
from any2text.training.train import build_trainer, main, parse_args
from conftest import train_args, write_llava_data

# Rows in order (sequential sampling, 2 per batch): step 1 = rows 0, 1; step 2 = rows 2, 3; step 3 = rows 4, 5; ...
KINDS = ["image", "audio", "both", "text"] * 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("robust")
    (root / "base").symlink_to(tiny_checkpoint, target_is_directory=True)
    write_llava_data(root / "data", KINDS)
    return root


def run_args(root: Path, output_dir: Path, **overrides) -> list[str]:
    """Rows in order, 2 a batch, 3 steps, a checkpoint every step."""
    return train_args(
        root,
        **{
            "model_name_or_path": str(root / "base"),
            "output_dir": str(output_dir),
            "train_datasets": str(root / "data" / "data.json"),
            "train_template": "LLaVA",
            "per_device_train_batch_size": "2",
            "train_sampling_strategy": "sequential",
            "max_steps": "3",
            "save_strategy": "steps",
            "save_steps": "1",
            **overrides,
        },
    )


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}


def tensors(obj):
    """Every tensor inside a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from tensors(value)


def non_finite_files(folder: Path) -> list[str]:
    """Files under `folder` holding a non-finite weight or optimizer value (safetensors and torch state dicts)."""
    bad = []
    for path in folder.rglob("*"):
        if path.suffix == ".safetensors":
            values = load_file(str(path)).values()
        elif path.name in ("optimizer.pt", "scheduler.pt"):
            values = tensors(torch.load(path, weights_only=True))
        else:
            continue
        if any(v.is_floating_point() and not torch.isfinite(v).all() for v in values):
            bad.append(str(path.relative_to(folder)))
    return bad


# ---------------------------------------------------------------------------------------------------------------------
# Torn checkpoints


def make_checkpoint(folder: Path, step: int, manifest: bool = True) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(4)}, str(folder / "model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if manifest:
        write_manifest(str(folder))
    return folder


@pytest.fixture
def torn_output(tmp_path) -> Path:
    """checkpoint-1 complete; checkpoint-2 empty; checkpoint-3 with a 0-byte optimizer.pt and no trainer_state.json."""
    out = tmp_path / "out"
    make_checkpoint(out / "checkpoint-1", 1)
    (out / "checkpoint-2").mkdir()
    torn = out / "checkpoint-3"
    torn.mkdir()
    save_file({"w": torch.ones(4)}, str(torn / "model.safetensors"))
    (torn / "optimizer.pt").write_bytes(b"")
    return out


def test_resume_true_passes_over_torn_checkpoints_and_keeps_them(torn_output, caplog):
    assert get_last_checkpoint(str(torn_output)).endswith("checkpoint-3")  # what the stock lookup would pick
    with caplog.at_level(logging.WARNING, logger="any2text"):
        assert resolve_resume_checkpoint("True", str(torn_output)) == str(torn_output / "checkpoint-1")
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "2 incomplete checkpoint(s), left in place" in warning
    assert "checkpoint-2`: the folder is empty" in warning
    assert "`trainer_state.json` is missing" in warning and "`optimizer.pt` is empty" in warning
    # Passed over, never deleted.
    assert (torn_output / "checkpoint-2").is_dir()
    assert sorted(p.name for p in (torn_output / "checkpoint-3").iterdir()) == ["model.safetensors", "optimizer.pt"]


def test_explicit_torn_checkpoint_is_an_error(torn_output):
    with pytest.raises(ValueError, match=r"not a complete checkpoint: `trainer_state.json` is missing.*optimizer.pt` "
                       r"is empty.*Resume from `.*checkpoint-1`"):  # fmt: skip
        resolve_resume_checkpoint(str(torn_output / "checkpoint-3"), str(torn_output))
    with pytest.raises(ValueError, match="the folder is empty"):
        resolve_resume_checkpoint(str(torn_output / "checkpoint-2"), str(torn_output))
    assert resolve_resume_checkpoint(str(torn_output / "checkpoint-1"), "elsewhere") == str(
        torn_output / "checkpoint-1"
    )


def test_only_torn_checkpoints_is_an_error(torn_output):
    import shutil

    shutil.rmtree(torn_output / "checkpoint-1")
    with pytest.raises(ValueError, match=r"holds only incomplete ones.*leave the flag out to start from scratch"):
        resolve_resume_checkpoint(True, str(torn_output))


def test_manifest_catches_files_cut_after_the_save(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoint-5", 5)
    assert checkpoint_problems(str(folder)) == []
    assert set(json.loads((folder / MANIFEST_NAME).read_text())["files"]) == {
        "model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    }
    data = (folder / "optimizer.pt").read_bytes()
    (folder / "optimizer.pt").write_bytes(data[: len(data) // 2])  # e.g. an interrupted copy of the folder
    assert checkpoint_problems(str(folder)) == [f"`optimizer.pt` not the size `{MANIFEST_NAME}` records"]
    (folder / "optimizer.pt").unlink()
    assert checkpoint_problems(str(folder)) == [f"`optimizer.pt` listed in `{MANIFEST_NAME}` missing"]
    half_state = make_checkpoint(tmp_path / "checkpoint-6", 6, manifest=False)
    (half_state / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    assert "`trainer_state.json` cannot be read" in checkpoint_problems(str(half_state))[0]


# ---------------------------------------------------------------------------------------------------------------------
# kill -9 during a save, then `--resume_from_checkpoint True`

# Runs `any2text.train` and SIGKILLs itself at a named point of the save of `checkpoint-<step>`. Test-only
# instrumentation of the functions the save calls (the library itself has no test hooks).
KILL_DRIVER = """
import os, signal, sys
import torch
from transformers import TrainerState
from any2text.training import checkpoints
from any2text.training.train import main

point, step, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
target = os.sep + "checkpoint-" + step

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "optimizer":  # weights written; optimizer.pt left at 0 bytes (as a kill or a full disk leaves it)
    save = torch.save
    def torch_save(obj, f, *args, **kwargs):
        if str(f).endswith(target + os.sep + "optimizer.pt"):
            open(f, "wb").close()
            die()
        return save(obj, f, *args, **kwargs)
    torch.save = torch_save
elif point == "trainer_state":  # everything but half of trainer_state.json
    to_json = TrainerState.save_to_json
    def save_to_json(self, path):
        to_json(self, path)
        if target in str(path):
            text = open(path).read()
            open(path, "w").write(text[: len(text) // 2])
            die()
    TrainerState.save_to_json = save_to_json
elif point == "manifest":  # every file written, the manifest not yet
    write = checkpoints.write_manifest
    def write_manifest(folder):
        if str(folder).endswith(target):
            die()
        return write(folder)
    checkpoints.write_manifest = write_manifest
main(argv)
"""


def run_killed(point: str, step: int, argv: list[str]) -> str:
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, point, str(step), *argv],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = killed.stdout + killed.stderr
    assert killed.returncode == -signal.SIGKILL, output[-3000:]
    return output


@pytest.mark.slow
def test_kill_during_saves_then_resume_matches_an_uninterrupted_run(workdir, tmp_path, caplog):
    """`--save_steps 1`, SIGKILLed at three points of the step-2 save, each time resumed with `--resume_from_checkpoint
    True`: the final weights equal an uninterrupted run's."""
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "out"
    main(run_args(workdir, uninterrupted))
    resume = run_args(workdir, out, resume_from_checkpoint="True")
    passed_over = (
        f"Passing over 1 incomplete checkpoint(s), left in place (a save cut by a kill or a full disk): `{out}"
    )

    run_killed("optimizer", 2, run_args(workdir, out))
    assert checkpoint_problems(str(out / "checkpoint-2")) == [
        "`trainer_state.json` is missing",
        "`optimizer.pt` is empty",
    ]

    output = run_killed("trainer_state", 2, resume)  # resumes from checkpoint-1, dies writing trainer_state.json
    assert f"{passed_over}/checkpoint-2`: `trainer_state.json` is missing, `optimizer.pt` is empty." in output
    assert "`trainer_state.json` cannot be read" in checkpoint_problems(str(out / "checkpoint-2"))[0]

    output = run_killed("manifest", 2, resume)  # from checkpoint-1 again; dies after every file, before the manifest
    assert f"{passed_over}/checkpoint-2`: `trainer_state.json` cannot be read" in output
    assert checkpoint_problems(str(out / "checkpoint-2")) == []  # complete by its files: trainer_state.json came last
    assert not (out / "checkpoint-2" / MANIFEST_NAME).exists() and not (out / "checkpoint-3").exists()

    with caplog.at_level(logging.INFO, logger="any2text"):
        main(run_args(workdir, out, resume_from_checkpoint="True", log_level="info"))
    log = " ".join(record.getMessage() for record in caplog.records)
    assert f"Resuming from `{out / 'checkpoint-2'}`, the newest complete checkpoint" in log
    assert "Passing over" not in log

    expected, got = load_file(str(uninterrupted / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    for step in (1, 3):
        assert checkpoint_problems(str(out / f"checkpoint-{step}")) == []
        assert (out / f"checkpoint-{step}" / MANIFEST_NAME).is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite losses, gradients and weights


@pytest.mark.slow
def test_nan_run_exits_non_zero_and_saves_nothing_non_finite(workdir, tmp_path):
    """A learning rate of 1e30 diverges: step 1's weights are huge but finite, step 2's loss is NaN."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "any2text.train", *run_args(workdir, out, learning_rate="1e30", max_steps="4")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "NonFiniteError: Training stopped at step 2 on a non-finite loss" in output, output[-3000:]
    data = str(workdir / "data" / "data.json")
    assert f"row 2 of dataset `{data}` [train] (id `2`), row 3 of dataset `{data}` [train] (id `3`)" in output
    # No step-2 checkpoint, no final model (the curves are drawn at each save).
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "training_curves.png"]
    assert non_finite_files(out) == []
    assert (out / "checkpoint-1" / "model.safetensors").is_file()


class PoisonRows:
    """Test-only collator wrapper: the batches holding one of `ids` get NaN pixel values (a corrupt image)."""

    def __init__(self, collator, ids: set[str]):
        self.collator, self.ids = collator, ids

    def __call__(self, samples):
        batch = self.collator(samples)
        if any(sample.get("source", {}).get("id") in self.ids for sample in samples):
            batch["pixel_values"] = batch["pixel_values"] * float("nan")
        return batch


def poisoned_trainer(workdir: Path, out: Path, ids: set[str], **overrides):
    trainer = build_trainer(*parse_args(run_args(workdir, out, **overrides)))
    trainer.data_collator.collator = PoisonRows(trainer.data_collator.collator, ids)
    return trainer


@pytest.mark.slow
def test_non_finite_loss_names_the_step_and_rows(workdir, tmp_path):
    trainer = poisoned_trainer(workdir, tmp_path, {"4"})  # row 4 (an image row) is in step 3's batch
    with pytest.raises(NonFiniteError) as error:
        trainer.train()
    data = str(workdir / "data" / "data.json")
    assert f"step 3 on a non-finite loss (nan). The batch held row 4 of dataset `{data}` [train] (id `4`), row 5" in (
        str(error.value)
    )
    assert "--skip_nonfinite_steps True" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2", "training_curves.png"]


@pytest.mark.slow
def test_non_finite_gradient_is_an_error(workdir, tmp_path):
    trainer = build_trainer(*parse_args(run_args(workdir, tmp_path)))
    trainer.model.model.audio_projector.linear_1.weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteError, match=r"step 1 on a non-finite gradient norm. The batch held row 0 .*row 1 "):
        trainer.train()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_skip_nonfinite_steps_skips_the_update_and_counts_it(workdir, tmp_path, caplog):
    trainer = poisoned_trainer(workdir, tmp_path, {"4"}, max_steps="4", skip_nonfinite_steps="True")
    with caplog.at_level(logging.WARNING, logger="any2text"):
        trainer.train()
    assert trainer.num_nonfinite_steps_skipped == 1
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping step"))
    assert warning.startswith("Skipping step 3 (a non-finite loss; no optimizer update): its batch held row 4 of")
    assert "1 step(s) skipped so far" in warning
    # Step 3 changed neither the weights nor the optimizer state; step 4 trained again.
    weights = {step: load_file(str(tmp_path / f"checkpoint-{step}" / "model.safetensors")) for step in (2, 3, 4)}
    optimizer = {step: torch.load(tmp_path / f"checkpoint-{step}" / "optimizer.pt") for step in (2, 3)}
    assert all(torch.equal(weights[2][key], weights[3][key]) for key in weights[2])
    assert any(not torch.equal(weights[3][key], weights[4][key]) for key in weights[3])
    assert all(torch.equal(a, b) for a, b in zip(tensors(optimizer[2]["state"]), tensors(optimizer[3]["state"])))
    assert non_finite_files(tmp_path) == []


def test_save_refuses_non_finite_weights(workdir, tmp_path):
    trainer = build_trainer(*parse_args(run_args(workdir, tmp_path / "out")))
    with torch.no_grad():
        trainer.model.model.vision_projector.linear_2.bias[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"Refusing to save to .*1 weight value\(s\) are non-finite, e.g. in "
                       r"`model.vision_projector.linear_2.bias` \(1\)"):  # fmt: skip
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


def test_skip_nonfinite_steps_flag_is_parsed_beside_the_stock_arguments():
    """The flag is parsed with the stock training arguments and says how it differs from `logging_nan_inf_filter`."""
    _, _, _, training_args = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--skip_nonfinite_steps"])
    assert training_args.skip_nonfinite_steps is True
    assert training_args.logging_nan_inf_filter is True  # the stock flag is untouched


def test_zero3_shard_padding_is_not_read_as_a_non_finite_weight():
    """ZeRO-3 pads a parameter's last shard with uninitialised memory: NaN there is no weight; NaN in the values is."""
    from any2text.training.nonfinite import non_finite_parameters

    model = torch.nn.Linear(3, 1, bias=False)  # 3 values: on 2 ranks, shards of 2, rank 0 holds values 0-1
    weight = model.weight
    weight.ds_numel = 3
    weight.ds_tensor = torch.tensor([1.0, 2.0])
    assert non_finite_parameters(model) == {}
    weight.ds_numel = 1  # a 1-value parameter: rank 0's shard holds the value, then one padding slot
    weight.ds_tensor = torch.tensor([1.0, float("nan")])
    assert non_finite_parameters(model) == {}
    weight.ds_tensor = torch.tensor([float("nan"), 0.0])
    assert non_finite_parameters(model) == {"weight": 1}
