"""Synthetic image / audio / text question answering data for `make demo`.

The demo has to show, on a CPU and without any pretrained weights, that a tiny model learns to *use* its media:
held-out accuracy on image and audio questions far above chance, while the same model with the media withheld stays
near chance. So every question here has a small, fixed set of one-word answers, balanced within each split (chance is
`1 / len(answers)`), and every answer can be read straight off the medium and nowhere else.

The signals are chosen so that a *randomly initialised, frozen* encoder keeps the answer in its features:

- Images: one big solid shape (circle / square / triangle) in a saturated colour on a black background, wholly inside
  the left or the right half. Colour, shape and side are independent; size, position and brightness are jittered so
  held-out images are new.
- Audio: one to three sine beeps, all low (~200-400 Hz) or all high (~4-6 kHz). The two bands land in different halves
  of CLAP's 64 mel bins (0-14 kHz, HTK scale: the middle bin is ~2.5 kHz), and beeps are separated by clear silences.
- Text: deterministic facts ("What comes after two?" -> "three") so the mixture has text-only rows.

Two formats are written from the same rows, so one LLaVA-style template can read both:

- `llava/{train,test}.json`: a list of `{"id", "image": "images/<id>.png" | "audio": "audio/<id>.wav",
  "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "red"}],
  "question_type"}`, media paths relative to the json file; text-only rows have neither key (LLaVA convention).
- `parquet/{train,test}.parquet`: columns `id`, `question_type`, `conversations` (same list of dicts), `image`
  (`datasets.Image()`, null when absent) and `audio` (`datasets.Audio(decode=False)`: `{"bytes": <WAV>, "path"}`,
  null when absent).

Example:

```python
>>> from any2text.demo.synthetic import generate_demo_data
>>> meta = generate_demo_data("demo_data", n_train=2000, n_test=500, seed=0)
>>> sorted(meta["question_types"])[:2]
['audio_count', 'audio_pitch']
```
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image, ImageDraw
from transformers.utils import logging

logger = logging.get_logger(__name__)

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"

# Saturated colours whose channels differ by a lot, so even a random patch projection separates them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle")
# Shape side as a fraction of the half width, and vertical jitter as a fraction of the free space. Shape is the one
# attribute a random frozen CLIP hides: with sides of 0.55-0.85 and full vertical jitter a per-token MLP probe reached
# only ~0.80-0.90 on 500 images; with these mild ranges it reaches 0.94-0.99 (see the `make demo` issue).
SIDE_RANGE = (0.75, 0.9)
Y_JITTER = 0.3
POSITIONS = ("left", "right")
PITCHES = ("low", "high")
# Frequency bands (Hz) of the two pitches: far apart on the mel scale, both far from CLAP's mid bin (~2.5 kHz).
PITCH_BANDS: dict[str, tuple[float, float]] = {"low": (200.0, 400.0), "high": (4000.0, 6000.0)}
BEEP_COUNTS = ("one", "two", "three")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
OPPOSITES: dict[str, str] = {
    "high": "low",
    "low": "high",
    "left": "right",
    "right": "left",
    "big": "small",
    "small": "big",
    "hot": "cold",
    "cold": "hot",
    "up": "down",
    "down": "up",
}


@dataclass(frozen=True)
class QuestionType:
    """One kind of question: which medium it needs, its answer set and the paraphrased prompts."""

    name: str
    modality: str  # "image", "audio" or "text"
    answers: tuple[str, ...]
    templates: tuple[str, ...]


QUESTION_TYPES: dict[str, QuestionType] = {
    q.name: q
    for q in (
        QuestionType(
            "image_color",
            "image",
            COLOR_NAMES,
            (
                "What colour is the shape?",
                "What color is the shape in the picture?",
                "Which colour is the object?",
                "Name the colour of the shape.",
            ),
        ),
        QuestionType(
            "image_shape",
            "image",
            SHAPES,
            (
                "What shape is shown?",
                "Which shape is in the picture?",
                "Is it a circle, a square or a triangle?",
                "Name the shape.",
            ),
        ),
        QuestionType(
            "image_position",
            "image",
            POSITIONS,
            (
                "Is the shape on the left or on the right?",
                "On which side is the shape?",
                "Where is the object, left or right?",
                "Which side of the picture is the shape on?",
            ),
        ),
        QuestionType(
            "audio_pitch",
            "audio",
            PITCHES,
            (
                "Is the sound high or low?",
                "Is the pitch of the beeps high or low?",
                "What is the pitch of the tone?",
                "Are these high or low beeps?",
            ),
        ),
        QuestionType(
            "audio_count",
            "audio",
            BEEP_COUNTS,
            (
                "How many beeps are there?",
                "Count the beeps.",
                "How many times does it beep?",
                "How many tones do you hear?",
            ),
        ),
        QuestionType(
            "text_next_number",
            "text",
            NUMBER_WORDS[2:],
            ("What comes after {x}?", "Which number follows {x}?", "What number is one more than {x}?"),
        ),
        QuestionType(
            "text_opposite",
            "text",
            tuple(sorted(set(OPPOSITES.values()))),
            ("What is the opposite of {x}?", "Give the opposite of {x}.", "Which word means the opposite of {x}?"),
        ),
    )
}
# Relative frequency of each question type in the mixture: text rows are a small minority, media rows are balanced.
DEFAULT_WEIGHTS: dict[str, float] = {
    "image_color": 1.0,
    "image_shape": 1.0,
    "image_position": 1.0,
    "audio_pitch": 1.0,
    "audio_count": 1.0,
    "text_next_number": 0.25,
    "text_opposite": 0.25,
}


def make_image(
    color: str,
    shape: str,
    position: str,
    image_size: int = 32,
    rng: np.random.Generator | None = None,
) -> Image.Image:
    """Draws one solid `shape` of `color` on a black background, wholly inside the `position` half.

    Args:
        color (`str`): one of `COLORS`.
        shape (`str`): one of `SHAPES`.
        position (`str`): `"left"` or `"right"`.
        image_size (`int`, *optional*, defaults to 32): width and height in pixels (at least 16).
        rng (`np.random.Generator`, *optional*): source of the jitter (size, offset, brightness); a fixed default
            generator when omitted.

    Returns:
        `PIL.Image.Image`: an RGB image.
    """
    if color not in COLORS or shape not in SHAPES or position not in POSITIONS:
        raise ValueError(
            f"Expected `color` in {list(COLORS)}, `shape` in {list(SHAPES)} and `position` in {list(POSITIONS)}, "
            f"got {color!r}, {shape!r}, {position!r}."
        )
    if image_size < 16:
        raise ValueError(f"`image_size` must be at least 16 pixels so a shape fits in one half, got {image_size}.")
    rng = rng if rng is not None else np.random.default_rng(0)
    half = image_size // 2
    # The shape fills most of its half so it covers several encoder patches; its size varies only mildly because a
    # size change blurs the area cues that tell a circle from a square through a random encoder.
    side = int(rng.integers(round(SIDE_RANGE[0] * half), round(SIDE_RANGE[1] * half) + 1))
    x0 = int(rng.integers(0, half - side + 1)) + (half if position == "right" else 0)
    y_mid = (image_size - side) / 2
    y0 = int(round(y_mid + rng.uniform(-1, 1) * Y_JITTER * y_mid))
    x1, y1 = x0 + side - 1, y0 + side - 1
    # Brightness jitter on the "on" channels only; "off" channels stay 0 so the colour name is unambiguous.
    fill = tuple(int(c * rng.integers(190, 256)) for c in COLORS[color])

    image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    return image


def make_audio(
    pitch: str,
    n_beeps: int,
    sampling_rate: int = 16000,
    seconds: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Synthesises `n_beeps` sine beeps of one `pitch`, separated by silence.

    Args:
        pitch (`str`): `"low"` (200-400 Hz) or `"high"` (4-6 kHz).
        n_beeps (`int`): 1, 2 or 3.
        sampling_rate (`int`, *optional*, defaults to 16000): must be above twice the highest tone (12 kHz).
        seconds (`float`, *optional*, defaults to 1.0): clip length, at least 0.8 s so three beeps and their gaps fit.
        rng (`np.random.Generator`, *optional*): source of the jitter (frequency, amplitude, timing).

    Returns:
        `np.ndarray`: mono float32 waveform of `round(seconds * sampling_rate)` samples in [-1, 1].
    """
    if pitch not in PITCH_BANDS:
        raise ValueError(f"Expected `pitch` in {list(PITCH_BANDS)}, got {pitch!r}.")
    if not 1 <= n_beeps <= len(BEEP_COUNTS):
        raise ValueError(f"Expected `n_beeps` between 1 and {len(BEEP_COUNTS)}, got {n_beeps}.")
    if sampling_rate < 2 * PITCH_BANDS["high"][1]:
        raise ValueError(
            f"`sampling_rate` {sampling_rate} cannot represent a {PITCH_BANDS['high'][1]:.0f} Hz tone; use >= 12000."
        )
    if seconds < 0.8:
        raise ValueError(f"`seconds` must be at least 0.8 so three beeps with gaps fit, got {seconds}.")
    rng = rng if rng is not None else np.random.default_rng(0)
    n = round(seconds * sampling_rate)
    beep_s, min_gap_s = 0.12, 0.1
    beep = round(beep_s * sampling_rate)
    # Spread the free time randomly over the gaps (each gap keeps at least `min_gap_s` of silence).
    free = seconds - n_beeps * beep_s - (n_beeps + 1) * min_gap_s
    gaps = min_gap_s + free * rng.dirichlet(np.ones(n_beeps + 1))
    freq = rng.uniform(*PITCH_BANDS[pitch])
    amplitude = rng.uniform(0.3, 0.8)
    t = np.arange(beep) / sampling_rate
    # 10 ms raised-cosine edges: a hard onset is a broadband click that would smear the pitch over all mel bins.
    ramp = round(0.01 * sampling_rate)
    envelope = np.ones(beep)
    envelope[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[-ramp:] = envelope[:ramp][::-1]
    tone = amplitude * envelope * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))

    # A faint noise floor keeps the log-mel spectrogram finite and realistic between beeps.
    wave = rng.normal(0.0, 1e-3, n)
    start = 0.0
    for i in range(n_beeps):
        start += gaps[i]
        s = round(start * sampling_rate)
        wave[s : s + beep] += tone
        start += beep_s
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _make_row(
    qtype: QuestionType, answer: str, rng: np.random.Generator, image_size: int, audio_seconds: float, sr: int
) -> dict:
    """One sample with the given `answer`: the prompt and the medium (a PIL image, a waveform or nothing).

    Only the asked attribute is fixed; the others are drawn at random so they carry no hint about the answer.
    """
    template = qtype.templates[int(rng.integers(len(qtype.templates)))]
    row: dict = {"question_type": qtype.name, "image": None, "audio": None}
    if qtype.modality == "image":
        attrs = {
            "image_color": COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))],
            "image_shape": SHAPES[int(rng.integers(len(SHAPES)))],
            "image_position": POSITIONS[int(rng.integers(len(POSITIONS)))],
        }
        attrs[qtype.name] = answer
        row["image"] = make_image(attrs["image_color"], attrs["image_shape"], attrs["image_position"], image_size, rng)
        prompt = f"{IMAGE_TOKEN}\n{template}"
    elif qtype.modality == "audio":
        attrs = {
            "audio_pitch": PITCHES[int(rng.integers(len(PITCHES)))],
            "audio_count": BEEP_COUNTS[int(rng.integers(len(BEEP_COUNTS)))],
        }
        attrs[qtype.name] = answer
        n_beeps = BEEP_COUNTS.index(attrs["audio_count"]) + 1
        row["audio"] = make_audio(attrs["audio_pitch"], n_beeps, sr, audio_seconds, rng)
        prompt = f"{AUDIO_TOKEN}\n{template}"
    elif qtype.name == "text_next_number":
        prompt = template.format(x=NUMBER_WORDS[NUMBER_WORDS.index(answer) - 1])
    else:
        prompt = template.format(x=OPPOSITES[answer])
    row["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
    return row


def _balanced_plan(
    n_rows: int, names: list[str], probs: np.ndarray, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """(question type, answer) for each row: type counts follow `probs` and answers are as even as `n_rows` allows.

    Exact balance (not i.i.d. draws) keeps the chance level of each type at `1 / len(answers)` even on a small test
    split, so "blind stays near chance" is measured against the right number.
    """
    quotas = np.floor(probs * n_rows).astype(int)
    # Largest remainders get the rows that flooring left over.
    for i in np.argsort(-(probs * n_rows - quotas), kind="stable")[: n_rows - quotas.sum()]:
        quotas[i] += 1
    plan = []
    for name, quota in zip(names, quotas):
        answers = list(QUESTION_TYPES[name].answers)
        cycle = [answers[i] for i in rng.permutation(len(answers))]
        plan += [(name, cycle[i % len(cycle)]) for i in range(quota)]
    return [plan[i] for i in rng.permutation(len(plan))]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(wave: np.ndarray, sampling_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@dataclass
class _Sample:
    """One row ready to write: the question type, the conversation, and its medium as file bytes (or `None`)."""

    question_type: str
    conversations: list[dict]
    image: bytes | None
    audio: bytes | None


class _DistinctMedia:
    """Refuses a medium already drawn (in either split), so no image or clip is seen in training and at test time.

    Text facts are few by nature, so identical text rows are allowed (the blind model is expected to get them right).
    """

    def __init__(self, max_collisions: int = 1000):
        self.seen: set[bytes] = set()
        self.collisions = 0
        self.max_collisions = max_collisions

    def admit(self, media: bytes | None) -> bool:
        if media is None:
            return True
        digest = hashlib.sha1(media).digest()
        if digest not in self.seen:
            self.seen.add(digest)
            return True
        self.collisions += 1
        if self.collisions > self.max_collisions:
            raise ValueError(
                f"Drew the same medium {self.collisions} times: the rows asked for do not fit in this `image_size`; "
                "ask for fewer rows or a larger `image_size`."
            )
        return False


def _draw_sample(name: str, answer: str, rng: np.random.Generator, media: _DistinctMedia, **render) -> _Sample:
    """A row of type `name` with `answer` whose medium is new, redrawn until it is."""
    while True:
        row = _make_row(QUESTION_TYPES[name], answer, rng, **render)
        image = _png_bytes(row["image"]) if row["image"] is not None else None
        audio = _wav_bytes(row["audio"], render["sr"]) if row["audio"] is not None else None
        if media.admit(image or audio):
            return _Sample(name, row["conversations"], image, audio)


_MEDIA_FILES = {"image": ("images", "png"), "audio": ("audio", "wav")}


def _save_medium(llava_dir: Path, row_id: str, key: str, data: bytes | None) -> dict | None:
    """Writes `images/<id>.png` or `audio/<id>.wav` and returns the parquet reference (`None` for no medium)."""
    if data is None:
        return None
    folder, suffix = _MEDIA_FILES[key]
    path = f"{folder}/{row_id}.{suffix}"
    (llava_dir / path).write_bytes(data)
    return {"bytes": data, "path": path}


def _write_split(samples: list[_Sample], split: str, llava_dir: Path, parquet_dir: Path) -> None:
    """`llava/<split>.json` with its media files, and `parquet/<split>.parquet` with the same bytes embedded."""
    json_rows, parquet_rows = [], []
    for i, sample in enumerate(samples):
        row_id = f"{split}-{i:06d}"
        refs = {key: _save_medium(llava_dir, row_id, key, getattr(sample, key)) for key in _MEDIA_FILES}
        # LLaVA convention: a row without an image has no `image` key at all.
        media_paths = {key: ref["path"] for key, ref in refs.items() if ref is not None}
        common = {"conversations": sample.conversations, "question_type": sample.question_type}
        json_rows.append({"id": row_id, **media_paths, **common})
        parquet_rows.append(
            {"id": row_id, "question_type": sample.question_type, "conversations": sample.conversations, **refs}
        )
    with open(llava_dir / f"{split}.json", "w") as f:
        json.dump(json_rows, f, indent=1)
    # Small row groups: each row carries media bytes, and readers stream parquet one row group at a time.
    table = pa.Table.from_pylist(parquet_rows, schema=_parquet_schema())
    pq.write_table(table, parquet_dir / f"{split}.parquet", 256)


def _answer_counts(samples: list[_Sample]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for sample in samples:
        per_answer = counts.setdefault(sample.question_type, {})
        answer = sample.conversations[1]["value"]
        per_answer[answer] = per_answer.get(answer, 0) + 1
    return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}


def _parquet_schema() -> pa.Schema:
    # Built through `datasets.Features` so the file carries the feature metadata: `load_dataset("parquet", ...)` then
    # decodes `image` to PIL and keeps `audio` as {"bytes", "path"} (decode=False), with no torchcodec needed.
    from datasets import Audio, Features, List, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "id": Value("string"),
            "question_type": Value("string"),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "image": ImageFeature(),
            "audio": Audio(decode=False),
        }
    ).arrow_schema


def _mixture(weights: dict[str, float] | None) -> tuple[list[str], np.ndarray]:
    """The question types with a positive weight and their weights; unknown names are an error."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - set(QUESTION_TYPES))
    if unknown:
        raise ValueError(f"Unknown question types {unknown} in `weights`; expected names from {list(QUESTION_TYPES)}.")
    names = [name for name, w in weights.items() if w > 0]
    return names, np.array([weights[name] for name in names], dtype=np.float64)


def _fresh_dirs(output_dir: Path) -> tuple[Path, Path]:
    llava_dir, parquet_dir = output_dir / "llava", output_dir / "parquet"
    for stale in (llava_dir, parquet_dir):
        if stale.exists():
            shutil.rmtree(stale)
    (llava_dir / "images").mkdir(parents=True)
    (llava_dir / "audio").mkdir(parents=True)
    parquet_dir.mkdir(parents=True)
    return llava_dir, parquet_dir


def _question_types_meta(names: list[str], weights: np.ndarray) -> dict:
    return {
        name: {
            "modality": QUESTION_TYPES[name].modality,
            "answers": list(QUESTION_TYPES[name].answers),
            # Answers are balanced, so a model that ignores the medium scores about this. Text questions are
            # answerable from the prompt alone; their chance is that of guessing among the answer words.
            "chance": 1.0 / len(QUESTION_TYPES[name].answers),
            "weight": float(w),
        }
        for name, w in zip(names, weights)
    }


def generate_demo_data(
    output_dir: str | Path,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    image_size: int = 32,
    audio_seconds: float = 1.0,
    sampling_rate: int = 16000,
    weights: dict[str, float] | None = None,
) -> dict:
    """Writes the synthetic train / test splits in LLaVA json and parquet form, plus `meta.json`.

    Args:
        output_dir (`str` or `Path`): created if needed; the `llava/`, `parquet/` and `meta.json` in it are replaced.
        n_train (`int`, *optional*, defaults to 2000): training rows.
        n_test (`int`, *optional*, defaults to 500): held-out rows; no medium appears in both splits.
        seed (`int`, *optional*, defaults to 0): the output is a pure function of the arguments.
        image_size (`int`, *optional*, defaults to 32): image width and height in pixels.
        audio_seconds (`float`, *optional*, defaults to 1.0): clip length.
        sampling_rate (`int`, *optional*, defaults to 16000): WAV rate; the media loader resamples to the encoder's
            rate (48 kHz for CLAP). 16 kHz keeps the files three times smaller than 48 kHz.
        weights (`dict[str, float]`, *optional*): relative frequency of each question type; `DEFAULT_WEIGHTS` when
            omitted. A type with weight 0 is left out.

    Returns:
        `dict`: the content of `meta.json` (question types, answer sets, chance, counts per split and the paths).
    """
    names, raw_weights = _mixture(weights)
    if n_train < 1 or n_test < 0:
        raise ValueError(f"Expected `n_train` >= 1 and `n_test` >= 0, got {n_train} and {n_test}.")
    output_dir = Path(output_dir)
    llava_dir, parquet_dir = _fresh_dirs(output_dir)
    rng = np.random.default_rng(seed)
    media = _DistinctMedia()
    render = {"image_size": image_size, "audio_seconds": audio_seconds, "sr": sampling_rate}
    counts = {}
    for split, n_rows in (("train", n_train), ("test", n_test)):
        plan = _balanced_plan(n_rows, names, raw_weights / raw_weights.sum(), rng)
        samples = [_draw_sample(name, answer, rng, media, **render) for name, answer in plan]
        _write_split(samples, split, llava_dir, parquet_dir)
        counts[split] = _answer_counts(samples)

    meta = {
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "image_size": image_size,
        "audio_seconds": audio_seconds,
        "sampling_rate": sampling_rate,
        "question_types": _question_types_meta(names, raw_weights),
        "counts": counts,
        "files": {
            "llava": {split: f"llava/{split}.json" for split in ("train", "test")},
            "parquet": {split: f"parquet/{split}.parquet" for split in ("train", "test")},
        },
    }
    with open(output_dir / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    logger.info(f"Wrote {n_train} train and {n_test} test rows to {output_dir}.")
    return meta


def main(argv: list[str] | None = None) -> None:
    """`any2text demo-data`: writes the synthetic demo data set."""
    parser = argparse.ArgumentParser(
        prog="any2text demo-data", description="Write the synthetic image/audio/text QA data used by `make demo`."
    )
    parser.add_argument(
        "--output_dir", default="demo_output/data", help="Folder to write llava/, parquet/, meta.json."
    )
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=32, help="Image width and height in pixels.")
    parser.add_argument("--audio_seconds", type=float, default=1.0)
    parser.add_argument("--sampling_rate", type=int, default=16000, help="WAV sampling rate (resampled at load).")
    args = parser.parse_args(argv)
    meta = generate_demo_data(
        args.output_dir,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        image_size=args.image_size,
        audio_seconds=args.audio_seconds,
        sampling_rate=args.sampling_rate,
    )
    print(f"Wrote {meta['n_train']} train / {meta['n_test']} test rows to {args.output_dir}")
    for name, info in meta["question_types"].items():
        print(f"  {name:18s} {info['modality']:5s} chance {info['chance']:.2f} answers {info['answers']}")


if __name__ == "__main__":
    main()
