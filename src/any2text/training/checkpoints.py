"""Checkpoints that cannot look complete unless they are: a manifest written last, and resume that skips torn ones.

The stock `Trainer` writes `checkpoint-N/` in place: weights, then optimizer / scheduler / RNG state, then
`trainer_state.json`, then rotates old checkpoints (`save_total_limit`). A `kill -9` or a full disk during that save
leaves a folder that `get_last_checkpoint` still picks, and resuming from it crashes. Here:

- `CheckpointManifestCallback` writes `checkpoint_manifest.json` into each checkpoint once every rank has finished
  writing it: the names and sizes of its files, after syncing them to disk, written to a temporary name and renamed,
  so the manifest either lists a finished checkpoint or does not exist. The checkpoint folders keep the stock names,
  so `save_total_limit` rotation and `get_last_checkpoint` work as before.
- `checkpoint_problems` says why a folder is not a complete checkpoint (empty, no or unreadable `trainer_state.json`,
  no weights, an empty weight / optimizer file, a file that differs from its manifest). A checkpoint without a manifest
  (a stock `Trainer`'s, or one killed after `trainer_state.json` but before the manifest) is judged by its files:
  `trainer_state.json` is the last file a save writes, so an interrupted save never has a readable one.
- `resolve_resume_checkpoint` turns `--resume_from_checkpoint True` into the newest COMPLETE checkpoint, logging the
  torn ones it passed over (they are never deleted), and makes an explicit torn path a clear error.
"""

from __future__ import annotations

import json
import os
import re

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..data.loading import none_if_unset

logger = logging.get_logger(__name__)

MANIFEST_NAME = "checkpoint_manifest.json"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Any one of these means the folder holds weights (full model, sharded, LoRA adapter, or DeepSpeed's own layout).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
# Files that are never legitimately empty: a 0-byte one is what a full disk or a kill mid-write leaves behind.
_NON_EMPTY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def _files(folder: str) -> dict[str, int]:
    """Relative path -> size of every regular file under `folder` (the manifest itself excluded)."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != MANIFEST_NAME and not name.endswith(".tmp") and os.path.isfile(path):
                sizes[relative] = os.path.getsize(path)
    return sizes


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: str) -> str:
    """Sync every file of `folder` to disk, then atomically write `checkpoint_manifest.json` listing them.

    Written last, so its presence means the save finished; the sizes let a later reader notice a file that was cut
    afterwards (an interrupted copy of the folder, say). Returns the manifest's path.
    """
    sizes = _files(folder)
    for relative in sizes:
        _fsync(os.path.join(folder, relative))
    path = os.path.join(folder, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": sizes}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(folder)  # the rename itself
    return path


def _weight_problems(folder: str, files: dict[str, int]) -> list[str]:
    if any(name in files for name in _WEIGHT_FILES) or any(name.startswith("global_step") for name in files):
        problems = []
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if files.get(index_name):
                try:
                    with open(os.path.join(folder, index_name), encoding="utf-8") as f:
                        shards = set(json.load(f)["weight_map"].values())
                except (OSError, ValueError, KeyError) as error:
                    return [f"`{index_name}` cannot be read ({error})"]
                missing = sorted(shard for shard in shards if shard not in files)
                if missing:
                    problems.append(f"`{index_name}` lists missing shards {missing}")
        return problems
    return [f"no weights (none of {', '.join(f'`{name}`' for name in _WEIGHT_FILES[::2])})"]


def checkpoint_problems(folder: str) -> list[str]:
    """Why `folder` is not a complete checkpoint; an empty list when it is one.

    Complete means: `trainer_state.json` readable (the stock `Trainer` writes it last), weights present, no empty
    weight / optimizer / state file, and, when the folder has a manifest, every file it lists there at its size.
    """
    if not os.path.isdir(folder):
        return ["the folder does not exist"]
    files = _files(folder)
    if not files:
        return ["the folder is empty"]
    problems = []
    if TRAINER_STATE_NAME not in files:
        problems.append(f"`{TRAINER_STATE_NAME}` is missing")
    else:
        try:
            with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as f:
                if "global_step" not in json.load(f):
                    problems.append(f"`{TRAINER_STATE_NAME}` has no `global_step`")
        except (OSError, ValueError) as error:
            problems.append(f"`{TRAINER_STATE_NAME}` cannot be read ({error})")
    problems += _weight_problems(folder, files)
    empty = sorted(name for name, size in files.items() if size == 0 and name.endswith(_NON_EMPTY_SUFFIXES))
    if empty:
        problems.append(f"{', '.join(f'`{name}`' for name in empty)} {'is' if len(empty) == 1 else 'are'} empty")
    manifest = os.path.join(folder, MANIFEST_NAME)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as f:
                listed = json.load(f)["files"]
        except (OSError, ValueError, KeyError) as error:
            return problems + [f"`{MANIFEST_NAME}` cannot be read ({error})"]
        missing = sorted(name for name in listed if name not in files and name != TRAINER_STATE_NAME)
        if missing:
            problems.append(f"{', '.join(f'`{name}`' for name in missing)} listed in `{MANIFEST_NAME}` missing")
        changed = sorted(name for name, size in listed.items() if name in files and files[name] != size)
        if changed:
            problems.append(f"{', '.join(f'`{name}`' for name in changed)} not the size `{MANIFEST_NAME}` records")
    return problems


def list_checkpoints(output_dir: str) -> list[str]:
    """`checkpoint-N` folders of `output_dir`, oldest (lowest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def newest_complete_checkpoint(output_dir: str) -> tuple[str | None, dict[str, list[str]]]:
    """The newest complete `checkpoint-N` of `output_dir` (or `None`) and the torn ones newer than it, with why."""
    torn = {}
    for path in reversed(list_checkpoints(output_dir)):
        problems = checkpoint_problems(path)
        if not problems:
            return path, torn
        torn[path] = problems
    return None, torn


def _describe(torn: dict[str, list[str]]) -> str:
    return "; ".join(f"`{path}`: {', '.join(problems)}" for path, problems in torn.items())


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint` as a checkpoint path (or `None`: start from scratch).

    `True` / `last` / `latest` mean the newest complete checkpoint in `output_dir`; torn ones newer than it are
    logged and left where they are. A path must be a complete checkpoint.

    Raises:
        ValueError: no complete checkpoint to resume from, or an explicit path that is not a complete checkpoint.
    """
    if value is False or none_if_unset(value) is None or str(value).lower() == "false":
        return None
    if value is True or str(value).lower() in ("true", "last", "latest"):
        newest, torn = newest_complete_checkpoint(output_dir)
        if torn:
            logger.warning(
                f"Passing over {len(torn)} incomplete checkpoint(s), left in place (a save cut by a kill or a full "
                f"disk): {_describe(torn)}."
            )
        if newest is None:
            found = f"only incomplete ones ({_describe(torn)})" if torn else "no `checkpoint-*` folder"
            raise ValueError(
                f"`--resume_from_checkpoint {value}` but `{output_dir}` holds {found}. Pass a complete checkpoint "
                "path, or leave the flag out to start from scratch."
            )
        logger.info(f"Resuming from `{newest}`, the newest complete checkpoint in `{output_dir}`.")
        return newest
    problems = checkpoint_problems(value)
    if problems:
        newest, _ = newest_complete_checkpoint(os.path.dirname(os.path.abspath(value)))
        hint = (
            f"Resume from `{newest}` (the newest complete checkpoint beside it), or pass `--resume_from_checkpoint True` "
            "to pick it."
            if newest
            else "Pass a complete `checkpoint-*` folder."
        )
        raise ValueError(
            f"`--resume_from_checkpoint {value}` is not a complete checkpoint: {'; '.join(problems)}. A save cut by a "
            f"kill or a full disk leaves such a folder. {hint}"
        )
    return value


class CheckpointManifestCallback(TrainerCallback):
    """After each checkpoint save, once every rank has written its part, write the checkpoint's manifest."""

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # DeepSpeed ranks write their own optimizer shards into the folder
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            write_manifest(folder)


__all__ = [
    "MANIFEST_NAME",
    "CheckpointManifestCallback",
    "checkpoint_problems",
    "list_checkpoints",
    "newest_complete_checkpoint",
    "resolve_resume_checkpoint",
    "write_manifest",
]
