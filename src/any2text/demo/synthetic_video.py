"""A synthetic video question whose answer depends on the ORDER of the frames: which way does the shape move?

Every clip shows one solid shape gliding in a straight line from near one edge of the frame to near the opposite
edge: `left`, `right`, `up` or `down`. A clip moving left is exactly the frames of a clip moving right played
backwards (`make_video` draws the same path and reverses it), so the *set* of frames says nothing about left against
right (or up against down): a model that pools frames as a bag scores at most 50% on this question, chance is 25%,
and only a model that reads the frames in order can pass. Everything else (colour, shape, size, the cross-axis
position, the start and end points) is drawn at random, so nothing but the motion tells the answer.

What is written (`generate_video_data`), all relative to the output folder:

- `videos/<id>.mp4`: H.264 clips of `num_frames` frames (8 by default, the processor's default `num_frames`, so
  nothing is resampled) at the demo's image size, written with PyAV;
- `train.json` / `test.json`: rows in the LLaVA-Video-178K layout, `{"id", "video": "videos/<id>.mp4",
  "conversations": [{"from": "human", "value": "<video>\\nWhich way does the shape move?"}, {"from": "gpt",
  "value": "left"}], "question_type": "video_direction", "data_source": "synthetic"}` (`placeholder="<image>"` writes
  the `<image>` tag LLaVA-Video-178K uses for its videos); with `multiple_choice > 0` that fraction of the training
  rows asks the MVBench prompt instead (the question, the four directions as options, "Only give the best option.")
  and is answered with the letter, like LLaVA-Video-178K's multi-choice split;
- `test_mvbench.json`: the held-out clips as MVBench multiple-choice rows, `{"video", "question", "candidates",
  "answer"}` (the answer is the text of the right candidate), for `any2text eval --benchmark mvbench`;
- `meta.json`: the answers, chance, counts per split and the file names.

Example:

```python
>>> from any2text.demo.synthetic_video import generate_video_data, make_video
>>> frames = make_video("right", num_frames=8, image_size=32)
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
DIRECTIONS = ("left", "right", "up", "down")
# The direction each one is the time reversal of: the same frames, played backwards.
REVERSED = {"left": "right", "right": "left", "up": "down", "down": "up"}
QUESTION_TYPE = "video_direction"
QUESTIONS = (
    "Which way does the shape move?",
    "In which direction is the shape moving?",
    "Does the object move left, right, up or down?",
    "Which direction does the shape travel?",
)
MVBENCH_QUESTION = "Which direction is the shape moving in?"
# Saturated colours (channel on/off), as the image questions use, so a random frozen encoder still sees the shape.
_COLORS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0))
# Shape side as a fraction of the frame, and how close to the edges a path starts and ends (fraction of the frame).
_SIDE_RANGE = (0.3, 0.4)
_EDGE_MARGIN = 0.1


def make_video(
    direction: str, num_frames: int = 8, image_size: int = 32, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frames of one solid shape moving in `direction`, from near one edge to near the opposite one.

    The path is drawn for `right` (or `down`) and reversed for `left` (or `up`): with the same `rng` state,
    `make_video("left", ...)` is `make_video("right", ...)[::-1]`.

    Args:
        direction (`str`): one of `DIRECTIONS`.
        num_frames (`int`, *optional*, defaults to 8): frames in the clip (at least 2).
        image_size (`int`, *optional*, defaults to 32): frame width and height in pixels (at least 16, even, as
            H.264 needs).
        rng (`np.random.Generator`, *optional*): source of the colour, shape, size and path; a fixed default when
            omitted.

    Returns:
        `np.ndarray`: uint8 frames `(num_frames, image_size, image_size, 3)`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"Expected `direction` in {list(DIRECTIONS)}, got {direction!r}.")
    if num_frames < 2:
        raise ValueError(f"A motion needs at least 2 frames, got `num_frames={num_frames}`.")
    if image_size < 16 or image_size % 2:
        raise ValueError(f"`image_size` must be even and at least 16 pixels, got {image_size}.")
    rng = rng if rng is not None else np.random.default_rng(0)
    side = int(rng.integers(round(_SIDE_RANGE[0] * image_size), round(_SIDE_RANGE[1] * image_size) + 1))
    margin = round(_EDGE_MARGIN * image_size)
    start = int(rng.integers(0, margin + 1))
    end = int(rng.integers(image_size - side - margin, image_size - side + 1))
    across = int(rng.integers(0, image_size - side + 1))
    fill = tuple(int(c * rng.integers(190, 256)) for c in _COLORS[int(rng.integers(len(_COLORS)))])
    circle = bool(rng.integers(2))

    frames = []
    for along in np.round(np.linspace(start, end, num_frames)).astype(int):
        x0, y0 = (along, across) if direction in ("left", "right") else (across, along)
        image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        draw.ellipse(box, fill=fill) if circle else draw.rectangle(box, fill=fill)
        frames.append(np.asarray(image))
    video = np.stack(frames)
    return video[::-1].copy() if direction in ("left", "up") else video


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
    """`n_rows` directions, as even as `n_rows` allows, in random order (chance stays `1 / len(DIRECTIONS)`)."""
    answers = [DIRECTIONS[i % len(DIRECTIONS)] for i in range(n_rows)]
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
    direction: str, rng: np.random.Generator, clips: DistinctClips, num_frames: int, image_size: int
) -> np.ndarray:
    """A clip moving in `direction` that `clips` has not seen, redrawn until it is new."""
    for _ in range(1000):
        frames = make_video(direction, num_frames, image_size, rng)
        if clips.admit(frames):
            return frames
    raise ValueError(
        f"Drew the same clip 1000 times at `image_size={image_size}`: ask for fewer rows or a larger `image_size`."
    )


def _mvbench_row(video: str, answer: str, rng: np.random.Generator) -> dict:
    candidates = [DIRECTIONS[i] for i in rng.permutation(len(DIRECTIONS))]
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
    """Writes the direction-of-motion video question set (see the module docstring) and returns `meta.json`'s content.

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
        "fps": fps, "multiple_choice": multiple_choice, "question_type": QUESTION_TYPE, "answers": list(DIRECTIONS), "chance": 1 / len(DIRECTIONS),
        "counts": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "files": {"train": "train.json", "test": "test.json", "mvbench": "test_mvbench.json", "videos": "videos/"},
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    logger.info(f"Wrote {n_train} train and {n_test} test video rows to {out}.")
    return meta


def main(argv: list[str] | None = None) -> None:
    """`python -m any2text.demo.synthetic_video`: writes the direction-of-motion video question set."""
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


__all__ = ["DIRECTIONS", "QUESTIONS", "QUESTION_TYPE", "encode_mp4", "generate_video_data", "make_video"]
