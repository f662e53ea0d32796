"""Command-line flags or one `.yaml` / `.json` config file into argument dataclasses, for `any2text train` and `dpo`.

`HfArgumentParser` does the parsing; what is added here is the entry points' convention: the config file may be the
only argument (`python -m any2text.train stage2.yaml`, TRL's scripts take it as `--config stage2.yaml`), launcher
flags are accepted beside it, flags are never abbreviated, and an unknown flag names the closest known one. A config
file may list its datasets as records (`datasets: [{path, template, split, name, weight, media_root}]`, TRL's
`DatasetMixtureConfig` naming; see `arguments.dataset_records_to_arguments`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from typing import Any

import yaml
from transformers import HfArgumentParser

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def make_argument_parser(groups: tuple[type, ...]) -> HfArgumentParser:
    # No abbreviations: `--lora_alph 8` must fail rather than silently mean `--lora_alpha 8`.
    return HfArgumentParser(groups, allow_abbrev=False)


def config_file(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """The config file when it is the only argument besides launcher flags, and those flags (else `None, {}`).

    The DeepSpeed launcher puts `--local_rank=N` before the script's own arguments, so
    `deepspeed --module any2text.train stage2.yaml` arrives as `['--local_rank=0', 'stage2.yaml']`.
    """
    rest, launcher = [], {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("--local_rank="):
            launcher["local_rank"] = int(arg.split("=", 1)[1])
        elif arg == "--local_rank" and index + 1 < len(argv):
            launcher["local_rank"] = int(argv[index + 1])
            index += 1
        else:
            rest.append(arg)
        index += 1
    if len(rest) == 1 and rest[0].endswith(CONFIG_SUFFIXES):
        return rest[0], launcher
    return None, {}


def read_config(path: str) -> dict[str, Any]:
    """The mapping a config file holds (`json` for `.json`: YAML 1.1 would read JSON's `1e-4` as a string)."""
    with open(path, encoding="utf-8") as f:
        config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"`{path}` must hold a mapping of argument names to values, got {type(config).__name__}.")
    return config


def parse_argument_groups(groups: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse flags, or a single config file (plus launcher flags), into one instance of each of `groups`.

    Raises:
        ValueError: an unknown or misspelled flag (with the closest known flag) or config-file key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_argument_parser(groups)
    path, launcher = config_file(argv)
    if path is not None:
        from .arguments import dataset_records_to_arguments

        config = dataset_records_to_arguments(read_config(path))
        return parser.parse_dict({**config, **launcher}, allow_extra_keys=False)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        known = [f"--{field.name}" for group in groups for field in dataclasses.fields(group) if field.init]
        hints = []
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
                hints.append(f"`{arg}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise ValueError(
            f"Unknown arguments: {', '.join(hints) or unknown}. Flags are never abbreviated; see `--help` for the "
            "full list."
        )
    return tuple(parsed)


__all__ = ["CONFIG_SUFFIXES", "config_file", "make_argument_parser", "parse_argument_groups", "read_config"]
