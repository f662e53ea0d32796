"""A synthetic video question whose answer depends on the ORDER of the frames: which colour does the shape turn?

Every clip shows one solid shape that keeps its place and size and changes colour exactly halfway: the first half of
the frames in one colour, the second half in another. A clip turning red -> blue is exactly the frames of a clip
turning blue -> red played backwards (`make_video("red", "blue")[::-1] == make_video("blue", "red")` for the same
draws), and both colours fill the same number of frames, so the *set* of frames says nothing about which colour came
last: a model that pools frames as a bag scores at most 50% on this question, chance is 25%, and only a model that
reads the frames in order can pass. Everything else (shape, size, position, brightness, the first colour) is drawn at
random, so nothing but the order tells the answer.

(A shape moving left or right has the same property, but the tiny demo model did not learn it: 640 clips x 8 epochs
stayed at chance, because the direction hides in where the shape is inside the first frame's pooled patch grid. The
last colour is read off the latest frame's tokens, which a 3-layer model learns in the demo's budget.)

What is written (`generate_video_data`), all relative to the output folder:

- `videos/<id>.mp4`: H.264 clips of `num_frames` frames (8 by default, the processor's default `num_frames`, so
  nothing is resampled) at the demo's image size, written with PyAV;
- `train.json` / `test.json`: rows in the LLaVA-Video-178K layout, `{"id", "video": "videos/<id>.mp4",
  "conversations": [{"from": "human", "value": "<video>\\nWhat colour does the shape turn?"}, {"from": "gpt",
  "value": "blue"}], "question_type": "video_color_change", "data_source": "synthetic"}` (`placeholder="<image>"`
  writes the `<image>` tag LLaVA-Video-178K uses for its videos); with `multiple_choice > 0` that fraction of the
  training rows asks the MVBench prompt instead (the question, the four colours as options, "Only give the best
  option.") and is answered with the letter, like LLaVA-Video-178K's multi-choice split;
- `test_mvbench.json`: the held-out clips as MVBench multiple-choice rows, `{"video", "question", "candidates",
  "answer"}` (the answer is the text of the right candidate), for `any2text eval --benchmark mvbench`;
- `meta.json`: the answers, chance, counts per split and the file names.

Example:

```python
>>> from any2text.demo.synthetic_video import generate_video_data, make_video
>>> frames = make_video("red", "blue", num_frames=8, image_size=32)
>>> frames.shape
(8, 32, 32, 3)
>>> meta = generate_video_data("video_data", n_train=400, n_test=100, seed=0)
>>> meta["chance"]
0.25
```

Writing needs PyAV (`pip install "any2text[video]"`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers.utils import logging

logger = logging.get_logger(__name__)

VIDEO_TOKEN = "<video>"
# Saturated colours (channels on / off), the image questions' own, so a random frozen encoder tells them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
}
COLOR_NAMES = tuple(COLORS)
QUESTION_TYPE = "video_color_change"
QUESTIONS = (
    "What colour does the shape turn?",
    "Which colour does the object change to?",
    "What colour is the shape at the end?",
    "The shape changes colour. Into which colour?",
)
MVBENCH_QUESTION = "What color does the shape change to?"
# Shape side as a fraction of the frame.
_SIDE_RANGE = (0.4, 0.6)


def make_video(
    first: str, then: str, num_frames: int = 8, image_size: int = 32, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frames of one solid shape, in colour `first` for the first half of the frames and `then` for the second half.

    Shape (circle or square), size, position and brightness are drawn once per clip and do not depend on the colours,
    so with the same `rng` state `make_video(a, b)[::-1]` equals `make_video(b, a)` (for an even `num_frames`).

    Args:
        first (`str`): the colour of the first half, one of `COLORS`.
        then (`str`): the colour of the second half, one of `COLORS`, not `first`.
        num_frames (`int`, *optional*, defaults to 8): frames in the clip (even, at least 2).
        image_size (`int`, *optional*, defaults to 32): frame width and height in pixels (at least 16, even, as
            H.264 needs).
        rng (`np.random.Generator`, *optional*): source of the shape, size, position and brightness; a fixed default
            when omitted.

    Returns:
        `np.ndarray`: uint8 frames `(num_frames, image_size, image_size, 3)`.
    """
    if first not in COLORS or then not in COLORS or first == then:
        raise ValueError(f"Expected two different colours from {list(COLORS)}, got {first!r} and {then!r}.")
    if num_frames < 2 or num_frames % 2:
        raise ValueError(f"Both colours fill half the clip: `num_frames` must be even and >= 2, got {num_frames}.")
    if image_size < 16 or image_size % 2:
        raise ValueError(f"`image_size` must be even and at least 16 pixels, got {image_size}.")
    rng = rng if rng is not None else np.random.default_rng(0)
    side = int(rng.integers(round(_SIDE_RANGE[0] * image_size), round(_SIDE_RANGE[1] * image_size) + 1))
    x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
    brightness = int(rng.integers(190, 256))
    circle = bool(rng.integers(2))
    halves = []
    for colour in (first, then):
        image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        fill = tuple(c * brightness for c in COLORS[colour])
        draw.ellipse(box, fill=fill) if circle else draw.rectangle(box, fill=fill)
        halves.append(np.repeat(np.asarray(image)[None], num_frames // 2, axis=0))
    return np.concatenate(halves)


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError('Writing the synthetic videos needs PyAV: `pip install "any2text[video]"`.') from error
    return av


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """H.264 (`yuv420p`, near-lossless `crf=10`) mp4 bytes of uint8 `frames` `(T, H, W, 3)`, one frame per time step."""
    av = _import_av()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "fast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def balanced_answers(n_rows: int, rng: np.random.Generator) -> list[str]:
    """`n_rows` final colours, as even as `n_rows` allows, in random order (chance stays `1 / len(COLORS)`)."""
    answers = [COLOR_NAMES[i % len(COLOR_NAMES)] for i in range(n_rows)]
    return [answers[i] for i in rng.permutation(n_rows)]


class DistinctClips:
    """Refuses a clip already drawn, so no clip is seen both in training and at test time."""

    def __init__(self):
        self.seen: set[bytes] = set()

    def admit(self, frames: np.ndarray) -> bool:
        digest = hashlib.sha1(frames.tobytes()).digest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True


def draw_clip(
    then: str, rng: np.random.Generator, clips: DistinctClips, num_frames: int, image_size: int
) -> np.ndarray:
    """A clip turning `then` (from another colour drawn at random) that `clips` has not seen, redrawn until it is."""
    others = [c for c in COLOR_NAMES if c != then]
    for _ in range(1000):
        frames = make_video(others[int(rng.integers(len(others)))], then, num_frames, image_size, rng)
        if clips.admit(frames):
            return frames
    raise ValueError(
        f"Drew the same clip 1000 times at `image_size={image_size}`: ask for fewer rows or a larger `image_size`."
    )


def _mvbench_row(video: str, answer: str, rng: np.random.Generator) -> dict:
    candidates = [COLOR_NAMES[i] for i in rng.permutation(len(COLOR_NAMES))]
    return {"video": video, "question": MVBENCH_QUESTION, "candidates": candidates, "answer": answer}


def generate_video_data(
    output_dir: str | Path,
    n_train: int = 400,
    n_test: int = 100,
    seed: int = 0,
    num_frames: int = 8,
    image_size: int = 32,
    placeholder: str = VIDEO_TOKEN,
    fps: int = 8,
    multiple_choice: float = 0.0,
) -> dict:
    """Writes the colour-change video question set (see the module docstring) and returns `meta.json`'s content.

    Args:
        output_dir (`str` or `Path`): created if needed; `videos/` and the json files in it are replaced.
        n_train (`int`, *optional*, defaults to 400): training rows.
        n_test (`int`, *optional*, defaults to 100): held-out rows (also written as MVBench rows); no clip is in both.
        seed (`int`, *optional*, defaults to 0): the output is a pure function of the arguments.
        num_frames (`int`, *optional*, defaults to 8): frames per clip.
        image_size (`int`, *optional*, defaults to 32): frame width and height.
        placeholder (`str`, *optional*, defaults to `"<video>"`): the tag standing for the video in the question;
            `"<image>"` is LLaVA-Video-178K's.
        fps (`int`, *optional*, defaults to 8): frame rate written in the mp4 files.
        multiple_choice (`float`, *optional*, defaults to 0.0): fraction of the training rows that ask the MVBench
            prompt (`any2text eval --benchmark mvbench`'s, with shuffled options) and answer with the letter.
    """
    from ..evaluation.benchmarks import get_benchmark

    mvbench = get_benchmark("mvbench").prompt_template
    if n_train < 1 or n_test < 0:
        raise ValueError(f"Expected `n_train` >= 1 and `n_test` >= 0, got {n_train} and {n_test}.")
    out = Path(output_dir)
    if (out / "videos").exists():
        shutil.rmtree(out / "videos")
    (out / "videos").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    clips = DistinctClips()
    counts: dict[str, dict[str, int]] = {}
    mc_rows = []
    for split, n_rows in (("train", n_train), ("test", n_test)):
        rows = []
        for i, answer in enumerate(balanced_answers(n_rows, rng)):
            row_id = f"{split}-{i:06d}"
            video = f"videos/{row_id}.mp4"
            (out / video).write_bytes(encode_mp4(draw_clip(answer, rng, clips, num_frames, image_size), fps))
            question, target = QUESTIONS[int(rng.integers(len(QUESTIONS)))], answer
            if split == "train" and rng.random() < multiple_choice:
                mc_row = _mvbench_row(video, answer, rng)
                question, target = mvbench.prompt(mc_row), mvbench.target(mc_row)
            rows.append({
                "id": row_id, "video": video, "question_type": QUESTION_TYPE, "data_source": "synthetic",
                "conversations": [{"from": "human", "value": f"{placeholder}\n{question}"},
                                  {"from": "gpt", "value": target}],
            })  # fmt: skip
            if split == "test":
                mc_rows.append(_mvbench_row(video, answer, rng))
            counts.setdefault(split, {}).setdefault(answer, 0)
            counts[split][answer] += 1
        (out / f"{split}.json").write_text(json.dumps(rows, indent=1))
    (out / "test_mvbench.json").write_text(json.dumps(mc_rows, indent=1))
    meta = {
        "seed": seed, "n_train": n_train, "n_test": n_test, "num_frames": num_frames, "image_size": image_size,
        "fps": fps, "multiple_choice": multiple_choice, "question_type": QUESTION_TYPE, "answers": list(COLOR_NAMES), "chance": 1 / len(COLOR_NAMES),
        "counts": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "files": {"train": "train.json", "test": "test.json", "mvbench": "test_mvbench.json", "videos": "videos/"},
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    logger.info(f"Wrote {n_train} train and {n_test} test video rows to {out}.")
    return meta


def main(argv: list[str] | None = None) -> None:
    """`python -m any2text.demo.synthetic_video`: writes the colour-change video question set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="video_data")
    parser.add_argument("--n_train", type=int, default=400)
    parser.add_argument("--n_test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--placeholder", default=VIDEO_TOKEN, help="`<video>`, or `<image>` as LLaVA-Video-178K")
    parser.add_argument("--multiple_choice", type=float, default=0.0, help="fraction of MVBench-prompt train rows")
    args = parser.parse_args(argv)
    meta = generate_video_data(**vars(args))
    print(
        f"Wrote {meta['n_train']} train / {meta['n_test']} test clips to {args.output_dir} (chance {meta['chance']})"
    )


if __name__ == "__main__":
    main()


__all__ = ["COLORS", "QUESTIONS", "QUESTION_TYPE", "encode_mp4", "generate_video_data", "make_video"]
