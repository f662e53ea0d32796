"""LlamaVisionAudio's audio feature extractor: CLAP's, plus the policy that turns any clip into CLAP's input.

Only numpy/transformers imports at module level (soxr/scipy are optional and imported lazily), so it ships as remote
code beside the processor.
"""

from math import gcd

import numpy as np
from transformers import ClapFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)

# CLAP's own values of its `padding` / `truncation` options. Other values (`True`, `"max_length"`, `"longest"`...) are
# the tokenizer's, which a processor call also hands to the audio side when given flat.
CLAP_PADDING = ("repeatpad", "repeat", "pad")
CLAP_TRUNCATION = ("fusion", "rand_trunc")


def fuses_long_clips(extractor) -> bool:
    """Whether a feature extractor hears a clip longer than its window whole (CLAP's fusion, 64 mel bins only)."""
    return getattr(extractor, "truncation", None) != "fusion" or extractor.feature_size == 64


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float waveform with soxr (high quality), falling back to scipy's polyphase filter."""
    if orig_sr == target_sr:
        return waveform
    try:
        import soxr

        return soxr.resample(waveform, orig_sr, target_sr).astype(np.float32)
    except ImportError:
        pass
    try:
        from scipy.signal import resample_poly
    except ImportError as err:
        raise ImportError(
            f"Resampling audio from {orig_sr} Hz to {target_sr} Hz needs `soxr` or `scipy`: `pip install soxr`."
        ) from err
    g = gcd(orig_sr, target_sr)
    return resample_poly(waveform, target_sr // g, orig_sr // g).astype(np.float32)


def to_mono_float(audio, name: int | str = 0) -> np.ndarray:
    """numpy / torch / list, int PCM or float, mono or multi-channel -> finite float32 mono numpy.

    `name` identifies the clip in errors: its index in a call, or a file name.
    """
    label = f"clip {name}" if isinstance(name, int) else name
    if hasattr(audio, "detach"):  # torch tensor
        audio = audio.detach().cpu().numpy()
    from_list = not isinstance(audio, np.ndarray)
    array = np.asarray(audio)
    if array.size == 0:
        raise ValueError(f"Audio {label} is empty (0 samples). Remove the row or replace the file.")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"Audio {label} has dtype `{array.dtype}`; expected integer PCM or floating point samples.")
    if from_list and np.issubdtype(array.dtype, np.integer):
        # A Python list of ints lost its sample width (numpy makes it int64); 16-bit PCM is what such lists hold.
        if array.min() < -(2**15) or array.max() >= 2**15:
            raise ValueError(
                f"Audio {label} is a list of integers outside the 16-bit range: pass a numpy array with its "
                "PCM dtype (e.g. `np.int32`) so it can be scaled."
            )
        array = array.astype(np.int16)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        # Unsigned PCM (8-bit WAV) is centred on the middle of its range.
        offset = (int(info.max) + 1) / 2 if info.min == 0 else 0.0
        array = (array.astype(np.float64) - offset) / max(abs(info.min), info.max - offset)
    elif not np.isfinite(array).all():
        # NaN/inf samples give NaN features, NaN logits and NaN gradients that reach the saved weights silently.
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(
            f"Audio {label} holds {bad} NaN or infinite sample(s) of {array.size}. Re-export or replace the file, or "
            "remove the row."
        )
    array = array.astype(np.float32)
    if array.ndim == 2:
        # soundfile gives (samples, channels), torchaudio (channels, samples): channels are the short axis.
        channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
        array = array.mean(axis=channel_axis)
    elif array.ndim != 1:
        raise ValueError(f"Audio {label} must be 1-D (mono) or 2-D (multi-channel), got shape {array.shape}.")
    return np.ascontiguousarray(array)


def positive_int_rate(rate) -> int:
    """A sampling rate as an `int`; a fractional one is refused rather than truncated."""
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"`sampling_rate` must be an integer number of Hz, got `{rate!r}`.")
    if float(rate) != int(rate) or rate <= 0:
        raise ValueError(
            f"`sampling_rate` must be a positive whole number of Hz, got {rate}. Pass the clip's true rate (e.g. "
            "`22050`); resampling from a rounded rate would shift every pitch."
        )
    return int(rate)


def list_audio(audio) -> list:
    """One clip per item; a single array / tensor, or a list of numbers, is ONE (multi-channel / plain) clip."""
    if isinstance(audio, np.ndarray) or hasattr(audio, "detach"):
        return [audio]
    if isinstance(audio, (list, tuple)):
        if len(audio) and all(isinstance(x, (int, float, np.number)) for x in audio[:16]):
            return [np.asarray(audio)]
        return list(audio)
    raise TypeError(f"`audio` must be a numpy array, torch tensor or list of them, got `{type(audio).__name__}`.")


class LlamaVisionAudioFeatureExtractor(ClapFeatureExtractor):
    r"""
    CLAP's feature extractor with the audio policy of LlamaVisionAudio: any clip in, CLAP's features out.

    Clips may be numpy / torch / lists, int PCM (scaled from its type's range) or float, mono or multi-channel
    (averaged to mono). They are resampled from `sampling_rate` to this extractor's rate (48 kHz for CLAP); without
    `sampling_rate`, as transformers' audio processors do, the clips are taken to be at this extractor's rate and a
    warning names it. `is_longer` marks exactly the clips longer than the window (CLAP's marks a random clip when
    none is). An extractor that cannot fuse long clips (not 64 mel bins) hears a long clip's first window.

    The window (`max_length`, in samples) fixes the number of audio tokens, so a call's `max_length` is not read, and
    `padding` / `truncation` are read only with CLAP's values (`"repeatpad"`, `"repeat"`, `"pad"` / `"fusion"`,
    `"rand_trunc"`): a processor call's flat `padding=True` or `max_length=100` is about text tokens.

    Takes the arguments of [`ClapFeatureExtractor`].
    """

    def __call__(
        self,
        raw_speech,
        truncation: str | None = None,
        padding: str | None = None,
        max_length: int | None = None,
        sampling_rate: int | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        target = self.sampling_rate
        if sampling_rate is None:
            logger.warning(
                f"No `sampling_rate` given with the audio: the clips are taken to be at {target} Hz, this feature "
                "extractor's rate. Pass `sampling_rate=` with the clips' true rate to have them resampled."
            )
            rate = target
        else:
            rate = positive_int_rate(sampling_rate)
        clips = [resample(to_mono_float(clip, i), rate, target) for i, clip in enumerate(list_audio(raw_speech))]
        window = self.nb_max_samples
        if not fuses_long_clips(self):
            # transformers' CLAP extractor fuses long clips at a hard-coded 64 mel bins and fails obscurely otherwise;
            # like Whisper at 30 s, such an extractor hears the first window. (Training refuses such clips instead:
            # any2text.data.collator names the row.)
            cut = [i for i, clip in enumerate(clips) if len(clip) > window]
            if cut:
                logger.warning(
                    f"Audio clip(s) {cut} are longer than this feature extractor's {window / target:g} s window and "
                    f"its {self.feature_size} mel bins cannot fuse long clips: each keeps its first window."
                )
                clips = [clip[:window] for clip in clips]
        features = super().__call__(
            clips,
            truncation=truncation if truncation in CLAP_TRUNCATION else None,
            padding=padding if padding in CLAP_PADDING else None,
            sampling_rate=target,
            return_tensors=return_tensors,
        )
        if "is_longer" in features:
            # CLAP's extractor marks a RANDOM clip "longer" when none is; mark exactly the clips over the window.
            features["is_longer"] = np.array([[len(clip) > window] for clip in clips])
            if return_tensors is not None:
                features = BatchFeature(dict(features), tensor_type=return_tensors)
        return features


__all__ = ["LlamaVisionAudioFeatureExtractor"]
