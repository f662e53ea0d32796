"""Media loading: turn an image, audio or video reference into a decoded RGB image, a mono float32 waveform or frames.

A *reference* is whatever a dataset row holds for a media item:

- a path (`str` / `os.PathLike`); a relative path is resolved against `media_root`;
- a `{"bytes": ..., "path": ...}` dict, which is what `datasets` returns for `Image(decode=False)` and
  `Audio(decode=False)` columns (embedded bytes win; without bytes the path is read);
- an already decoded object: a `PIL.Image.Image`, a `{"array": ..., "sampling_rate": ...}` dict (or any object
  answering `["array"]` and `["sampling_rate"]`, such as torchcodec's `AudioDecoder`), or a numpy array.

A video reference may also be a folder of frame images (sorted by name) or a list of PIL images, and a uint8 array
`(T, H, W, 3)`. Decoding is done here and nowhere else, so every part of the data path gets the same conversions and
the same errors; the modality table (`any2text.modalities`) names the decoder of each medium. Audio is read with `soundfile` and resampled with `soxr` (`scipy.signal.resample_poly` when `soxr` is not
installed): `datasets`' own `Audio()` decoding needs torchcodec, which is an optional, CUDA-linked dependency.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image
import soundfile as sf

# One implementation of PCM scaling, down-mixing and resampling: the processor's (which must stand alone as remote
# code), so dataset audio and audio handed to the processor directly are treated identically.
from ..models.llama_vision_audio.processing_llama_vision_audio import image_to_rgb as _image_to_rgb
from ..models.llama_vision_audio.processing_llama_vision_audio import resample, to_mono_float

MediaRef = Any
_MEDIA_ROOT_FIX = "set the dataset's `media_root` to the folder the relative media paths start from"


class MediaOutsideRootError(ValueError):
    """A media path that leads out of the dataset's media root (`../../x.png`, `/etc/x.png`)."""

    cause = "media_outside_root"


class NonFiniteMediaError(ValueError):
    """Media holding NaN or infinite values, which would make the loss (and then every weight) NaN."""

    cause = "non_finite_media"


class MediaDecodeError(ValueError):
    """A media file or embedded bytes that cannot be decoded."""

    cause = "undecodable_media"


class OversizedImageError(ValueError):
    """An image with more pixels than PIL decodes safely (`PIL.Image.MAX_IMAGE_PIXELS`): a decompression bomb."""

    cause = "oversized_media"


def _describe(ref: MediaRef) -> str:
    """A short, human-readable name for a reference, for error messages (never dumps raw bytes)."""
    if isinstance(ref, str | os.PathLike):
        return f"`{os.fspath(ref)}`"
    if isinstance(ref, Mapping):
        if ref.get("path"):
            return f"`{ref['path']}`" + (" (embedded bytes)" if ref.get("bytes") else "")
        if ref.get("bytes") is not None:
            return f"<{len(ref['bytes'])} embedded bytes>"
    if isinstance(ref, np.ndarray):
        return f"<array of shape {ref.shape} and dtype {ref.dtype}>"
    return f"<{type(ref).__name__}>"


def _inside(path: str, root: str) -> bool:
    """Whether `path` lies inside `root`, judged on the normalised names (as archive tools judge members).

    Names, not `realpath`s: a media root whose sub-folders are symlinks to another disk stays usable.
    """
    root, path = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root, path]) == root


def resolve_path(
    path: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    *,
    allow_outside_root: bool = False,
    folders: bool = False,
) -> str:
    """Resolve `path` against `media_root` (when relative) and check that the file (or, with `folders`, folder) exists.

    With a `media_root`, a path that leads out of it (`../../x.png`, or an absolute path elsewhere) is refused unless
    `allow_outside_root=True`: a dataset row should not be able to make training read any file on the machine.

    Raises:
        FileNotFoundError: naming the path that was tried and how to fix it.
        MediaOutsideRootError: the path escapes `media_root` (a `ValueError`).
        ValueError: for remote URLs, which are never fetched during training.
    """
    path = os.path.expanduser(os.fspath(path))
    if path.startswith(("http://", "https://")):
        raise ValueError(
            f"Media reference `{path}` is a URL; remote media are not fetched while training. "
            "Download the files and point the dataset at the local copies."
        )
    if media_root is not None:
        root = os.path.expanduser(os.fspath(media_root))
        joined = path if os.path.isabs(path) else os.path.join(root, path)
        if not allow_outside_root and not _inside(joined, root):
            raise MediaOutsideRootError(
                f"Media path `{path}` leads outside `media_root={root}`. Media are only read from inside the media "
                "root; move the file there, or pass `--allow_media_outside_root True` (`allow_outside_root=True`) "
                "if the dataset is trusted."
            )
        path = joined
    if not (os.path.isfile(path) or (folders and os.path.isdir(path))):
        if media_root is None and not os.path.isabs(path):
            fix = f"the path is relative and no `media_root` was given: {_MEDIA_ROOT_FIX}"
        elif media_root is not None:
            fix = f"it was resolved against `media_root={os.fspath(media_root)}`; check that folder, or {_MEDIA_ROOT_FIX}"
        else:
            fix = "check that the file exists"
        raise FileNotFoundError(f"Media file `{path}` does not exist ({fix}).")
    return path


def _as_path_or_bytes(
    ref: MediaRef, media_root: str | os.PathLike | None, allow_outside_root: bool = False
) -> tuple[str | io.BytesIO, str] | None:
    """For file-like references return `(path or BytesIO, description)`; `None` for decoded objects."""
    if isinstance(ref, str | os.PathLike):
        return resolve_path(ref, media_root, allow_outside_root=allow_outside_root), _describe(ref)
    if isinstance(ref, Mapping) and "array" not in ref and ("bytes" in ref or "path" in ref):
        if ref.get("bytes") is not None:
            return io.BytesIO(ref["bytes"]), _describe(ref)
        if ref.get("path"):
            return resolve_path(ref["path"], media_root, allow_outside_root=allow_outside_root), _describe(ref)
        raise ValueError(f"Media reference {ref!r} has neither `bytes` nor `path`; the row holds no media.")
    return None


def image_to_rgb(image: PIL.Image.Image, name: str = "image") -> PIL.Image.Image:
    """The processor's `image_to_rgb` (high-depth grayscale scaled, not clipped), with NaN / inf pixels a bad row.

    Raises:
        NonFiniteMediaError: an `F` image holding NaN or infinite values.
    """
    try:
        return _image_to_rgb(image, name)
    except ValueError as error:  # the one error it raises: non-finite pixels
        raise NonFiniteMediaError(str(error)) from error


def _finite_mono(array, name: str) -> np.ndarray:
    """`to_mono_float`, after refusing NaN / inf samples as a `NonFiniteMediaError` (a bad row with its own cause)."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise NonFiniteMediaError(
                f"Audio {name} holds {bad} non-finite samples (NaN or inf) out of {array.size}; it would make the "
                "loss NaN. Replace or remove the file."
            )
    return to_mono_float(array, name)


def load_image(
    ref: MediaRef, media_root: str | os.PathLike | None = None, *, allow_outside_root: bool = False
) -> PIL.Image.Image:
    """Load an image reference as an RGB `PIL.Image.Image` (high-depth grayscale scaled, see `image_to_rgb`).

    Args:
        ref: a path, a `{"bytes", "path"}` dict, a `PIL.Image.Image` or a `uint8` numpy array (H, W[, C]).
        media_root: folder that relative paths are resolved against.
        allow_outside_root: read paths that lead outside `media_root` (see `resolve_path`).

    Raises:
        FileNotFoundError: the file does not exist.
        MediaOutsideRootError: the path leads outside `media_root`.
        ValueError: the file or bytes are not a readable image, it holds non-finite values, or it has more pixels than
            `PIL.Image.MAX_IMAGE_PIXELS` (`OversizedImageError`: a decompression bomb).
        TypeError: the reference is of an unsupported type.

    Example:
        >>> import numpy as np
        >>> load_image(np.zeros((4, 6, 3), dtype=np.uint8)).size
        (6, 4)
    """
    if isinstance(ref, PIL.Image.Image):
        return ref if ref.mode == "RGB" else image_to_rgb(ref, _describe(ref))
    if isinstance(ref, np.ndarray):
        if ref.dtype != np.uint8 or ref.ndim not in (2, 3):
            raise ValueError(
                f"Image array {_describe(ref)} is not supported: expected a `uint8` array of shape (H, W) or "
                "(H, W, C). Convert it with `(array * 255).astype(np.uint8)` or pass a PIL image."
            )
        return PIL.Image.fromarray(ref).convert("RGB")
    source = _as_path_or_bytes(ref, media_root, allow_outside_root)
    if source is None:
        raise TypeError(
            f"Unsupported image reference {_describe(ref)}: expected a path, a `{{'bytes', 'path'}}` dict, "
            "a PIL image or a uint8 numpy array."
        )
    file, name = source
    try:
        with warnings.catch_warnings():
            # Past `MAX_IMAGE_PIXELS` PIL only warns (an error from twice that): decoding such an image would take
            # gigabytes of RAM in every DataLoader worker, so either is a bad row, found before anything is decoded.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(file) as image:
                return image_to_rgb(image, name)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise OversizedImageError(
            f"Image {name} is too large to decode safely ({error}). Resize the image, or raise "
            "`PIL.Image.MAX_IMAGE_PIXELS` if images that large are intended."
        ) from error
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise MediaDecodeError(f"Image {name} could not be decoded ({error}). Replace or remove the file.") from error


def load_audio(
    ref: MediaRef,
    sampling_rate: int,
    media_root: str | os.PathLike | None = None,
    *,
    allow_outside_root: bool = False,
) -> np.ndarray:
    """Load an audio reference as a mono float32 waveform at `sampling_rate`.

    Args:
        ref: a path, a `{"bytes", "path"}` dict, a `{"array", "sampling_rate"}` dict (or an object answering those
            two keys, like torchcodec's `AudioDecoder`), or a numpy array. A bare array carries no rate and is taken
            to be at `sampling_rate` already; a 2-D array is down-mixed over its shorter axis (the channels).
        sampling_rate: the rate the audio encoder expects (CLAP: 48000).
        media_root: folder that relative paths are resolved against.
        allow_outside_root: read paths that lead outside `media_root` (see `resolve_path`).

    Raises:
        FileNotFoundError: the file does not exist.
        MediaOutsideRootError: the path leads outside `media_root`.
        NonFiniteMediaError: the audio holds NaN or infinite samples (a `ValueError`).
        ValueError: the file or bytes are not readable audio, or the audio is empty.
        TypeError: the reference is of an unsupported type.

    Example:
        >>> import numpy as np
        >>> clip = {"array": np.zeros(16000, dtype=np.int16), "sampling_rate": 16000}
        >>> load_audio(clip, sampling_rate=48000).shape
        (48000,)
    """
    if not isinstance(sampling_rate, int | np.integer) or sampling_rate <= 0:
        raise ValueError(f"`sampling_rate` must be a positive integer, got {sampling_rate!r}.")
    if isinstance(ref, np.ndarray):
        return _finite_mono(ref, _describe(ref))
    source = _as_path_or_bytes(ref, media_root, allow_outside_root)
    if source is not None:
        file, name = source
        try:
            # soundfile converts integer PCM to float itself; always_2d gives (frames, channels) for every file.
            array, orig_rate = sf.read(file, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as error:
            raise MediaDecodeError(
                f"Audio {name} could not be decoded ({error}). soundfile reads wav/flac/ogg/mp3; "
                "convert the file or remove the row."
            ) from error
        waveform = _finite_mono(array, name)
    else:
        name = _describe(ref)
        try:
            array, orig_rate = ref["array"], ref["sampling_rate"]
        except (KeyError, TypeError, IndexError) as error:
            raise TypeError(
                f"Unsupported audio reference {name}: expected a path, a `{{'bytes', 'path'}}` dict, a "
                "`{'array', 'sampling_rate'}` dict or a numpy array."
            ) from error
        if hasattr(array, "numpy"):  # a torch tensor, as decoders may return
            array = array.numpy()
        waveform = _finite_mono(array, name)
    return resample(waveform, int(orig_rate), int(sampling_rate))


# ---------------------------------------------------------------------------------------------------------------------
# The decoders of the modality table: one signature, `(ref, media_root=None, *, allow_outside_root=False, **options)`,
# each reading the options it needs (`any2text.modalities.Modality.decoder_options`) and ignoring the others.


def decode_image(
    ref: MediaRef, media_root: str | os.PathLike | None = None, *, allow_outside_root: bool = False, **options: Any
) -> PIL.Image.Image:
    """`load_image` as the modality table calls it."""
    return load_image(ref, media_root, allow_outside_root=allow_outside_root)


def decode_audio(
    ref: MediaRef,
    media_root: str | os.PathLike | None = None,
    *,
    allow_outside_root: bool = False,
    sampling_rate: int | None = None,
    **options: Any,
) -> np.ndarray:
    """`load_audio` at `sampling_rate` (the feature extractor's), as the modality table calls it.

    Raises:
        RuntimeError: no `sampling_rate` was given (a set-up mistake, not a bad row).
    """
    if sampling_rate is None:
        raise RuntimeError(
            "Decoding audio needs `sampling_rate` (the audio encoder's rate); `MultimodalDataset` needs "
            "`sampling_rate` to decode audio (the stage set-up passes the feature extractor's)."
        )
    return load_audio(ref, sampling_rate, media_root, allow_outside_root=allow_outside_root)


def check_clip_lengths(processor: Any, clips: list[np.ndarray]) -> None:
    """Training never hears part of a clip: one longer than a non-fusing extractor's window is a bad row.

    (The processor itself keeps the first window, as serving engines need; here that would be silent data loss.)
    """
    from ..models.llama_vision_audio.feature_extraction_llama_vision_audio import fuses_long_clips

    extractor = processor.feature_extractor
    if fuses_long_clips(extractor):
        return
    window, rate = extractor.nb_max_samples, extractor.sampling_rate
    for i, clip in enumerate(clips):
        if len(clip) > window:
            raise ValueError(
                f"Audio clip {i} lasts {len(clip) / rate:.1f} s, longer than this feature extractor's "
                f"{window / rate:g} s window, and its {extractor.feature_size} mel bins cannot use CLAP's "
                "fusion of long clips (64 bins only). Trim the clip, or use a 64-bin feature extractor."
            )


class VideoDecodeError(MediaDecodeError):
    """A video that cannot give the frames asked for: corrupt, empty, or shorter than `num_frames`."""

    def __init__(self, message: str, cause: str = "undecodable_media"):
        super().__init__(message)
        self.cause = cause


_VIDEO_FIXES = {
    "missing_media": "Check the path, or the dataset's `media_root` (relative paths start there).",
    "undecodable_media": "Replace or re-encode the file (mp4/webm/mkv/avi, or a folder of frame images).",
    "empty_media": "The video holds no frames: replace the file or remove the row.",
    "too_short_media": "Lower the processor's `num_frames`, sample by `fps` instead, or remove the row.",
}


def _video_cause(error: BaseException) -> str:
    """What a decoder error says went wrong (`missing_media`, `too_short_media`, `empty_media`,
    `undecodable_media`), from its `cause`, or its class and message (the processor's `ShortVideoError`...)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, str):
        return cause
    kind = type(error).__name__.lower()
    if "missing" in kind or isinstance(error, FileNotFoundError):
        return "missing_media"
    if "short" in kind:
        return "too_short_media"
    if "empty" in kind:
        return "empty_media"
    return "undecodable_media"


def _video_source(
    ref: MediaRef, media_root: str | os.PathLike | None, allow_outside_root: bool
) -> tuple[Any, str, bytes | None]:
    """`(what the processor's load_video takes, description, embedded bytes)` for a video reference."""
    if isinstance(ref, str | os.PathLike):
        return resolve_path(ref, media_root, allow_outside_root=allow_outside_root, folders=True), _describe(ref), None
    if isinstance(ref, Mapping) and ("bytes" in ref or "path" in ref):
        if ref.get("bytes") is not None:
            return None, _describe(ref), ref["bytes"]
        if ref.get("path"):
            path = resolve_path(ref["path"], media_root, allow_outside_root=allow_outside_root, folders=True)
            return path, _describe(ref), None
        raise ValueError(f"Media reference {ref!r} has neither `bytes` nor `path`; the row holds no media.")
    if isinstance(ref, np.ndarray) or hasattr(ref, "numpy") or isinstance(ref, list | tuple):
        return ref, _describe(ref), None
    raise TypeError(
        f"Unsupported video reference {_describe(ref)}: expected a path (a video file or a folder of frames), a "
        "`{'bytes', 'path'}` dict, a list of PIL images or a uint8 array (T, H, W, 3)."
    )


def _in_memory(source: Any) -> bool:
    return source is not None and not isinstance(source, str)


def load_video(
    ref: MediaRef,
    media_root: str | os.PathLike | None = None,
    *,
    allow_outside_root: bool = False,
    num_frames: int | None = None,
    fps: float | None = None,
    **options: Any,
) -> np.ndarray:
    """Load a video reference as uint8 frames `(T, H, W, 3)`, sampled as the processor samples (`num_frames` uniform
    frames, or `fps` frames per second), through the processor module's `load_video` (PyAV).

    Frames already in memory (a list or an array) under `fps` are taken as sampled already, every one kept (they
    carry no frame rate; as a bare audio array is taken to be at the encoder's rate): what a dataset decoded is not
    sampled twice. Under `num_frames` they are sampled to `num_frames` (unchanged when they are that many).

    Args:
        ref: a path to a video file (mp4/webm/mkv/avi) or to a folder of frame images (sorted by name), a
            `{"bytes", "path"}` dict, a list of PIL images or a uint8 array `(T, H, W, 3)`.
        media_root: folder that relative paths are resolved against.
        num_frames / fps: the processor's sampling (mutually exclusive), as transformers' `load_video` names them.

    Raises:
        FileNotFoundError: the file or folder does not exist.
        MediaOutsideRootError: the path leads outside `media_root`.
        VideoDecodeError: (a `ValueError`, a bad row) the video is corrupt (`undecodable_media`), has no frames
            (`empty_media`) or fewer decodable frames than `num_frames` (`too_short_media`); names the file and fix.
        ImportError: PyAV is not installed (`pip install "any2text[video]"`).
    """
    from ..models.llama_vision_audio.processing_llama_vision_audio import load_video as decode

    source, name, data = _video_source(ref, media_root, allow_outside_root)
    if fps is not None and _in_memory(source):
        fps = None  # frames in memory carry no frame rate: taken as sampled already (see above)
    try:
        if data is None:
            frames, _ = decode(source, num_frames=num_frames, fps=fps)
        else:
            import tempfile

            # PyAV reads a file; embedded bytes (a `datasets` video column) go through a temporary one.
            suffix = os.path.splitext(str(ref.get("path") or ""))[1] or ".mp4"
            with tempfile.NamedTemporaryFile(suffix=suffix) as file:
                file.write(data)
                file.flush()
                frames, _ = decode(file.name, num_frames=num_frames, fps=fps)
    except ImportError:
        raise
    except (ValueError, OSError, RuntimeError) as error:
        cause = _video_cause(error)
        raise VideoDecodeError(f"Video {name} cannot be used ({error}). {_VIDEO_FIXES[cause]}", cause) from error
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoDecodeError(f"Video {name} gave no frames. {_VIDEO_FIXES['empty_media']}", "empty_media")
    return frames


def video_num_frames(
    ref: MediaRef,
    media_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    **options: Any,
) -> int:
    """How many frames `load_video` will give for `ref`, without decoding a video file.

    With `num_frames` it is `num_frames`. With `fps`, a file's container metadata (frame count, frame rate) give
    `max(1, int(total / video_fps * fps))`, transformers' rule; a folder of frames, a list or an array is counted.
    """
    if fps is None:
        if num_frames is None:
            raise ValueError("Counting a video's frames needs the processor's `num_frames` or `fps`.")
        return int(num_frames)
    source, name, data = _video_source(ref, media_root, allow_outside_root)
    if _in_memory(source):
        return len(source)
    if data is not None or not os.path.isfile(source):
        return len(load_video(ref, media_root, allow_outside_root=allow_outside_root, num_frames=num_frames, fps=fps))
    import av

    try:
        with av.open(source) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 0)
            total = stream.frames or (int(float(stream.duration * stream.time_base) * rate) if stream.duration else 0)
    except (av.FFmpegError, IndexError, OSError) as error:
        raise VideoDecodeError(
            f"Video {name} cannot be used ({error}). {_VIDEO_FIXES['undecodable_media']}"
        ) from error
    if total <= 0 or rate <= 0:
        raise VideoDecodeError(f"Video {name} has no frames. {_VIDEO_FIXES['empty_media']}", "empty_media")
    return max(1, int(total / rate * fps))
