"""Every shipped example config and script parses with the real argument parser, so a stale example fails CI."""

import json
from pathlib import Path

import pytest
import yaml

from any2text.data.loading import parse_dataset_specs
from any2text.training.merge import make_merge_parser
from any2text.training.train import parse_args
from conftest import run_example_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Stage-3 scripts (`dpo_*.sh`) run `any2text.dpo`; tests/test_dpo.py parses them with its parser.
SCRIPTS = sorted(path for path in EXAMPLES.glob("*.sh") if not path.name.startswith("dpo_"))
DS_CONFIGS = sorted(EXAMPLES.glob("ds_*.json"))


def train_and_merge_commands(script: Path, tmp_path: Path, **env: str) -> dict[str, list[list[str]]]:
    """`{"train": [args...], "merge-lora": [args...]}`: what the script passes when bash runs it."""
    commands = run_example_script(script, tmp_path, **env)
    merges = [words[1:] for words in commands.cli if words[:1] == ["merge-lora"]]
    return {"train": commands.modules.get("any2text.train", []), "merge-lora": merges}


def test_there_are_examples():
    names = {path.name for path in SCRIPTS}
    assert {"stage1_vision.sh", "stage2_vision.sh", "stage1_vision_audio.sh", "stage2_vision_audio.sh"} <= names
    assert {"stage2_multidataset.sh", "stage2_lora.sh"} <= names
    assert {"ds_z3_config.json", "ds_z2_config.json"} <= {path.name for path in DS_CONFIGS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_arguments_parse(script, monkeypatch, tmp_path):
    monkeypatch.chdir(EXAMPLES.parent)  # scripts name `examples/ds_*.json` relative to the repository root
    commands = train_and_merge_commands(script, tmp_path, OUTPUT_DIR=str(tmp_path / "out"))
    assert len(commands["train"]) == 1, "one training command per script"
    # `--bf16 True` is checked against the hardware; this CPU-only CI says `--use_cpu True` (the last flag wins).
    model_args, data_args, lora_args, training_args = parse_args(commands["train"][0] + ["--use_cpu", "True"])
    assert model_args.model_name_or_path and training_args.output_dir == str(tmp_path / "out")  # `OUTPUT_DIR=` wins
    # The comma lists line up (one value per dataset) and every template name exists.
    specs = parse_dataset_specs(
        data_args.train_datasets,
        templates=data_args.train_template,
        splits=data_args.train_split,
        data_files=data_args.train_data_files,
        names=data_args.train_name,
        weights=data_args.train_weights,
        media_roots=data_args.media_root,
    )
    assert specs
    if lora_args.use_peft:
        assert not model_args.freeze_language_model
    for merge in commands["merge-lora"]:
        assert make_merge_parser().parse_args(merge).model == training_args.output_dir  # merges what it trained


def test_seed_multidataset_lists(tmp_path):
    args = train_and_merge_commands(EXAMPLES / "stage2_multidataset.sh", tmp_path)["train"][0]
    data_args = parse_args(args + ["--use_cpu", "True"])[1]
    assert data_args.train_datasets == "liuhaotian/LLaVA-Instruct-150K,HuggingFaceM4/A-OKVQA,HuggingFaceM4/VQAv2,"
    assert data_args.train_template == "LLAVA,A-OKVQA,VQAv2,"
    assert data_args.train_split == "train,train,train,"


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_configs_parse(config, monkeypatch, tmp_path):
    monkeypatch.chdir(EXAMPLES.parent)
    values = yaml.safe_load(config.read_text())
    (tmp_path / config.name).write_text(yaml.safe_dump({**values, "use_cpu": True}))  # CPU-only CI, see above
    model_args, data_args, _, training_args = parse_args([str(tmp_path / config.name)])
    assert model_args.model_name_or_path and data_args.train_datasets and training_args.deepspeed
    # `deepspeed --module any2text.train config.yaml` puts `--local_rank=N` first.
    _, _, _, launched = parse_args(["--local_rank=0", str(tmp_path / config.name)])
    assert launched.local_rank == 0 and launched.output_dir == training_args.output_dir


@pytest.mark.parametrize("config", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_configs(config):
    ds = json.loads(config.read_text())
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    stage = ds["zero_optimization"]["stage"]
    assert stage in (2, 3)
    if stage == 3:  # the final save gathers the partitioned weights into one checkpoint
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # A "scheduler" section would replace the Trainer's (`--lr_scheduler_type`, `--warmup_steps`) without a word.
    assert "scheduler" not in ds
    if "cpu" in config.name:  # an "optimizer" section would compile DeepSpeed's fused Adam (~80 s, CPU-unfriendly)
        assert "optimizer" not in ds
