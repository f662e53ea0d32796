"""Synthetic preference pairs for the DPO stage of `make demo`: a task SFT never taught, decided by the media.

- Images (the demo's shapes): "Is this colour warm or cool?" -> `warm` for red / yellow, `cool` for green / blue.
- Audio (the demo's beeps): "Would a bird or a lion make this sound?" -> `bird` for high beeps, `lion` for low ones.

The preferred answer is read off the medium only and both answers occur equally often, so a model that has not
learned the task (or does not look at the medium) prefers the right answer half of the time. The two answers of a
task start with different tokens, neither a prefix of the other (`bird` / `lion`, not `bird` / `bear`, which the
demo's tokenizer splits `b|ir|d` / `be|ar`), so the first generated token decides the greedy answer. Rows are written in
TRL's preference format as JSON lines, with media as paths relative to the file (`--media_root` / the file's
folder)::

    {"id": "img-0", "prompt": "<image>\\nIs this colour warm or cool?", "images": ["images/img-0.png"],
     "chosen": "warm", "rejected": "cool", "kind": "image_warmth"}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from .synthetic import COLOR_NAMES, POSITIONS, SHAPES, make_audio, make_image

WARM = {"red": "warm", "yellow": "warm", "green": "cool", "blue": "cool"}
SOURCE = {"high": "bird", "low": "lion"}
IMAGE_PROMPT = "Is this colour warm or cool?"
AUDIO_PROMPT = "Would a bird or a lion make this sound?"


def _pair_row(kind: str, index: int, answer: str, other: str, media: str) -> dict:
    if kind == "image_warmth":
        return {"id": f"img-{index}", "prompt": f"<image>\n{IMAGE_PROMPT}", "images": [media],
                "chosen": answer, "rejected": other, "kind": kind}  # fmt: skip
    return {"id": f"aud-{index}", "prompt": f"<audio>\n{AUDIO_PROMPT}", "audios": [media],
            "chosen": answer, "rejected": other, "kind": kind}  # fmt: skip


def generate_preference_data(
    folder: str | Path,
    n_train: int = 400,
    n_test: int = 100,
    seed: int = 0,
    image_size: int = 32,
    sampling_rate: int = 16000,
    modalities: tuple[str, ...] = ("image", "audio"),
) -> dict[str, Path]:
    """Write `train.jsonl` / `test.jsonl` (balanced answers, modalities alternating) and their media under `folder`.

    Returns the paths of the two files.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    counter = 0
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            modality = modalities[i % len(modalities)]
            # Balanced answers: the answer alternates every `len(modalities)` rows.
            first = (i // len(modalities)) % 2 == 0
            if modality == "image":
                colours = [c for c in COLOR_NAMES if (WARM[c] == "warm") == first]
                colour = colours[int(rng.integers(len(colours)))]
                image = make_image(
                    colour, SHAPES[int(rng.integers(len(SHAPES)))], POSITIONS[int(rng.integers(2))], image_size, rng
                )
                name = f"images/{counter}.png"
                image.save(folder / name)
                answer = WARM[colour]
                rows.append(_pair_row("image_warmth", counter, answer, "cool" if answer == "warm" else "warm", name))
            else:
                pitch = "high" if first else "low"
                wave = make_audio(pitch, int(rng.integers(1, 4)), sampling_rate, 1.0, rng)
                name = f"audio/{counter}.wav"
                sf.write(folder / name, wave, sampling_rate)
                answer = SOURCE[pitch]
                rows.append(_pair_row("audio_source", counter, answer, "lion" if answer == "bird" else "bird", name))
            counter += 1
        order = rng.permutation(len(rows))
        paths[split] = folder / f"{split}.jsonl"
        with open(paths[split], "w", encoding="utf-8") as f:
            for j in order:
                f.write(json.dumps(rows[j]) + "\n")
    return paths


__all__ = ["generate_preference_data"]
