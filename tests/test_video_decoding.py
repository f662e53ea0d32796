"""`load_video`: every input form of one clip gives the same frames, transformers' sampling rules, and bad videos are
clear `ValueError`s (the data layer turns them into named, skippable bad rows)."""

import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from any2text.models.llama_vision_audio.processing_llama_vision_audio import (
    CorruptVideoError,
    EmptyVideoError,
    MissingVideoError,
    ShortVideoError,
    VideoError,
    load_video,
    sample_frame_indices,
)

NUM_FRAMES, FPS = 20, 10


def write_video(path, codec: str, num_frames: int = NUM_FRAMES, fps: int = FPS):
    """A 32x24 clip whose frames all differ: a red bar moving right and green rising with time."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        container.start_encoding()  # writes the header even when no frame follows
        for i in range(num_frames):
            frame = np.zeros((24, 32, 3), dtype=np.uint8)
            frame[:, i + 4 :, 0] = 255
            frame[:, :, 1] = 10 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module", params=[("clip.mp4", "libx264"), ("clip.webm", "libvpx-vp9")], ids=["mp4", "webm"])
def clip(request, tmp_path_factory):
    name, codec = request.param
    return write_video(tmp_path_factory.mktemp("video") / name, codec)


def all_frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_the_four_input_forms_give_the_same_frames(clip, tmp_path):
    decoded = all_frames(clip)
    assert len(decoded) == NUM_FRAMES and len({frame.tobytes() for frame in decoded}) == NUM_FRAMES
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(decoded):  # names sort in frame order only when read as names, not numbers
        Image.fromarray(frame).save(folder / f"frame_{i:03d}.png")
    (folder / "notes.txt").write_text("not a frame")
    forms = {
        "file": clip,
        "file as str": str(clip),
        "frame folder": folder,
        "PIL list": [Image.fromarray(frame) for frame in decoded],
        "array": decoded,
        "tensor": torch.from_numpy(decoded),
        "channels-first array": decoded.transpose(0, 3, 1, 2),
    }
    expected = decoded[np.arange(8) * NUM_FRAMES // 8]
    for name, form in forms.items():
        frames, metadata = load_video(form, num_frames=8)
        assert frames.dtype == np.uint8 and frames.shape == (8, 24, 32, 3), name
        np.testing.assert_array_equal(frames, expected, err_msg=name)
        assert metadata["total_num_frames"] == NUM_FRAMES and metadata["frames_indices"] == [
            0,
            2,
            5,
            7,
            10,
            12,
            15,
            17,
        ]
        assert (metadata["width"], metadata["height"]) == (32, 24)
    # Only a file knows its frame rate and duration.
    assert load_video(clip, num_frames=2)[1]["fps"] == FPS and load_video(clip, num_frames=2)[1]["duration"] == 2.0
    assert load_video(decoded, num_frames=2)[1]["fps"] is None
    # Neither `num_frames` nor `fps`: every frame; an array of exactly `num_frames` frames is not resampled.
    np.testing.assert_array_equal(load_video(clip)[0], decoded)
    np.testing.assert_array_equal(load_video(decoded[:8], num_frames=8)[0], decoded[:8])


def test_sampling_is_transformers_rule(clip):
    video_utils = pytest.importorskip("transformers.video_utils")  # imports without torchvision
    for total in (1, 7, 8, 20, 33, 1000):
        for num_frames in (1, 3, 7, 8):
            if num_frames <= total:
                metadata = video_utils.VideoMetadata(total_num_frames=total, fps=25.0)
                want = video_utils.default_sample_indices_fn(metadata, num_frames=num_frames)
                np.testing.assert_array_equal(sample_frame_indices(total, num_frames=num_frames), want)
        for fps in (0.5, 1, 2, 24):
            metadata = video_utils.VideoMetadata(total_num_frames=total, fps=25.0)
            if max(1, int(total / 25.0 * fps)) <= total:
                want = video_utils.default_sample_indices_fn(metadata, fps=fps)
                np.testing.assert_array_equal(sample_frame_indices(total, fps=fps, video_fps=25.0), want)
    # On a file: 2 frames per second of a 2 s, 10 fps clip = 4 frames, evenly spaced.
    frames, metadata = load_video(clip, fps=2)
    assert metadata["frames_indices"] == [0, 5, 10, 15]
    np.testing.assert_array_equal(frames, all_frames(clip)[[0, 5, 10, 15]])


def test_num_frames_and_fps_are_exclusive_and_fps_needs_a_frame_rate(clip):
    with pytest.raises(ValueError, match="mutually exclusive"):
        load_video(clip, num_frames=4, fps=2)
    with pytest.raises(ValueError, match="no frame rate.*`num_frames` instead"):
        load_video(np.zeros((10, 4, 4, 3), dtype=np.uint8), fps=2)


def test_bad_videos_are_named_value_errors(clip, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 this is no video " * 64)
    empty_folder = tmp_path / "no_frames"
    empty_folder.mkdir()
    broken_folder = tmp_path / "broken_frames"
    broken_folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), "red").save(broken_folder / f"{i}.png")
    (broken_folder / "1.png").write_bytes(b"not a png")
    no_frames = write_video(tmp_path / "empty.avi", "mpeg4", num_frames=0)  # a video stream without frames
    no_stream = write_video(tmp_path / "no_stream.mp4", "mpeg4", num_frames=0)  # mp4 drops the empty stream
    cases = [
        (tmp_path / "missing.mp4", {}, MissingVideoError, "missing.mp4` does not exist"),
        (corrupt, {}, CorruptVideoError, "corrupt.mp4` cannot be opened"),
        (no_frames, {"num_frames": 8}, EmptyVideoError, "empty.avi` holds no decodable frame"),
        (no_stream, {}, CorruptVideoError, "no_stream.mp4` has no video stream"),
        (empty_folder, {"num_frames": 8}, EmptyVideoError, "no_frames` holds no decodable frame"),
        ([], {"num_frames": 8}, EmptyVideoError, "empty list of frames"),
        (np.zeros((0, 4, 4, 3), dtype=np.uint8), {}, EmptyVideoError, "holds no frame"),
        (broken_folder, {"num_frames": 3}, CorruptVideoError, "1.png` of Frame folder .* cannot be read"),
        (clip, {"num_frames": 30}, ShortVideoError, "has 20 decodable frame\\(s\\), fewer than the `num_frames=30`"),
        (clip, {"fps": 20}, ShortVideoError, "fewer than the 40 frames \\(`fps=20`\\)"),
        (np.zeros((4, 4, 4, 3), dtype=np.float32), {}, ValueError, "dtype `float32`; pass uint8"),
        (np.zeros((4, 4, 4), dtype=np.uint8), {}, ValueError, "must have shape `\\(T, H, W, 3\\)`"),
        ([Image.new("RGB", (4, 4)), Image.new("RGB", (8, 8))], {}, ValueError, "frames of different sizes"),
    ]
    for video, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            load_video(video, **kwargs)
        assert issubclass(error, ValueError)
    assert all(issubclass(e, VideoError) for e in (MissingVideoError, CorruptVideoError, EmptyVideoError))


def test_a_video_file_without_pyav_says_how_to_install_it(clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(ImportError, match='pip install "any2text\\[video\\]"'):
        load_video(clip, num_frames=2)
    # Frames already in memory need no decoder.
    assert load_video(np.zeros((4, 4, 4, 3), dtype=np.uint8), num_frames=2)[0].shape == (2, 4, 4, 3)


_FORK_SCRIPT = """
import sys, numpy as np, av, torch
from any2text.models.llama_vision_audio.processing_llama_vision_audio import load_video
path = sys.argv[1]
with av.open(path, "w") as c:
    s = c.add_stream("mpeg4", rate=8); s.width = 64; s.height = 64; s.pix_fmt = "yuv420p"
    for i in range(16):
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 10, np.uint8), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
for _ in range(3):
    load_video(path, num_frames=8)
class Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 32
    def __getitem__(self, i):
        return int(load_video(path, num_frames=8)[0].sum())
for _ in range(2):
    for batch in torch.utils.data.DataLoader(Clips(), batch_size=4, num_workers=1):
        load_video(path, num_frames=8)
print("decoded in workers")
"""


def test_decoding_in_a_forked_dataloader_worker_after_the_parent_decoded_does_not_hang(tmp_path):
    """The parent decodes (as the demo and the length index do), then a forked DataLoader worker decodes: FFmpeg's
    scaling slice threads deadlocked there (the demo's training hung) until decoding used one scaling thread."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, str(tmp_path / "clip.mp4")], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "decoded in workers" in result.stdout
