"""Media loading: turn an image or audio reference into a decoded RGB image or a mono float32 waveform.

A *reference* is whatever a dataset row holds for a media item:

- a path (`str` / `os.PathLike`); a relative path is resolved against `media_root`;
- a `{"bytes": ..., "path": ...}` dict, which is what `datasets` returns for `Image(decode=False)` and
  `Audio(decode=False)` columns (embedded bytes win; without bytes the path is read);
- an already decoded object: a `PIL.Image.Image`, a `{"array": ..., "sampling_rate": ...}` dict (or any object
  answering `["array"]` and `["sampling_rate"]`, such as torchcodec's `AudioDecoder`), or a numpy array.

Decoding is done here and nowhere else, so every part of the data path gets the same conversions and the same
errors. Audio is read with `soundfile` and resampled with `soxr` (`scipy.signal.resample_poly` when `soxr` is not
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
) -> str:
    """Resolve `path` against `media_root` (when relative) and check that the file exists.

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
    if not os.path.isfile(path):
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


def media_refs(messages: list[dict]) -> tuple[list[MediaRef], list[MediaRef]]:
    """The image and audio references of a conversation, in order of appearance (not loaded)."""
    images, audio = [], []
    for message in messages:
        content = message.get("content")
        for item in content if isinstance(content, list) else []:
            if item.get("type") == "image":
                images.append(item["image"])
            elif item.get("type") == "audio":
                audio.append(item["audio"])
    return images, audio
