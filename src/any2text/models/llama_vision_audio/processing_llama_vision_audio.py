"""LlamaVisionAudio processor: tokenizer + image processor + audio feature extractor, on `ProcessorMixin`'s hooks.

Only numpy/PIL/transformers and relative imports at module level (PyAV, soxr, scipy are optional and imported
lazily), so `register_for_auto_class` can ship this file as remote code.
"""

import os
from collections.abc import Sequence
from math import isqrt
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import BatchFeature, ClapFeatureExtractor, ProcessorMixin
from transformers.audio_utils import AudioInput
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, Unpack
from transformers.utils import logging
from transformers.video_utils import VideoInput

from .feature_extraction_llama_vision_audio import (
    LlamaVisionAudioFeatureExtractor,
    list_audio,
    positive_int_rate,
    resample,
    to_mono_float,
)

logger = logging.get_logger(__name__)

# Llama-3 header format. Media items render as their placeholder; items of one message are joined by a newline,
# so [{"type": "image"}, {"type": "text", "text": "What is it?"}] becomes "<image>\nWhat is it?" (LLaVA's layout).
# `{% generation %}` marks assistant text, which `return_assistant_tokens_mask=True` turns into a mask.
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- if item['type'] == 'text' %}{{- item['text'] | trim }}"
    "{%- elif item['type'] == 'image' %}{{- '<image>' }}{%- elif item['type'] == 'audio' %}{{- '<audio>' }}"
    "{%- elif item['type'] == 'video' %}{{- '<video>' }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- if item['type'] == 'text' %}{{- item['text'] | trim }}"
    "{%- elif item['type'] == 'image' %}{{- '<image>' }}{%- elif item['type'] == 'audio' %}{{- '<audio>' }}"
    "{%- elif item['type'] == 'video' %}{{- '<video>' }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def image_to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """`image` as 8-bit RGB, with 16-bit and 32-bit (`I;16`, `I`, `F`) grayscale scaled down, not clipped.

    `convert("RGB")` clips high-depth grayscale at 255, so a 16-bit PNG comes out almost all white. Here the values are
    scaled from the range their type implies: 16-bit PNGs from 0-65535; `I` / `F` images from 0-255 or 0-65535 (`F`
    also 0-1) when their values fit, else from their own min-max.

    Only numpy and PIL, so it ships with the processor; `any2text.data.media` uses this one.

    Raises:
        ValueError: an `F` image holding NaN or infinite values.
    """
    mode = image.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"Image {name} holds {int((~np.isfinite(values)).sum())} non-finite pixel values (NaN or inf). "
            "Replace or remove the file."
        )
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        bottom, top = 0.0, 65535.0
    elif low >= 0 and high <= (1.0 if mode == "F" else 255.0):
        bottom, top = 0.0, 1.0 if mode == "F" else 255.0
    elif low >= 0 and high <= 255.0:
        bottom, top = 0.0, 255.0
    elif low >= 0 and high <= 65535.0:
        bottom, top = 0.0, 65535.0
    else:
        bottom, top = low, high
    scaled = (values - bottom) * (255.0 / (top - bottom)) if top > bottom else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _eight_bit(images):
    """High-depth grayscale PIL images (16-bit PNGs...) scaled to 8-bit RGB; the image processor would clip them."""
    if isinstance(images, Image.Image):
        return image_to_rgb(images) if images.mode.startswith("I") or images.mode == "F" else images
    if isinstance(images, (list, tuple)):
        return [_eight_bit(image) for image in images]
    return images


# ---------------------------------------------------------------------------------------------------------------------
# Video: decoded with PyAV (optional, imported lazily), sampled as transformers' `load_video` samples.

VIDEO_FILE_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
FRAME_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class VideoError(ValueError):
    """A video that cannot give the frames asked for; the data layer reports it as a named, skippable bad row."""


class MissingVideoError(VideoError):
    """The video file or frame folder does not exist."""


class CorruptVideoError(VideoError):
    """The container, stream or a frame image cannot be decoded."""


class EmptyVideoError(VideoError):
    """The video holds no decodable frame."""


class ShortVideoError(VideoError):
    """The video holds fewer frames than the sampling asks for."""


def sample_frame_indices(
    total_num_frames: int,
    num_frames: int | None = None,
    fps: float | None = None,
    video_fps: float | None = None,
    name: str = "The video",
) -> np.ndarray:
    """Indices of the frames to keep: transformers' `default_sample_indices_fn` rule.

    `num_frames` samples uniformly (`arange(n) * total // n`); `fps` keeps `max(1, int(total / video_fps * fps))`
    frames the same way; neither keeps every frame. `num_frames` and `fps` are mutually exclusive.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive (as in transformers' `load_video`): pass one.")
    if total_num_frames <= 0:
        raise EmptyVideoError(f"{name} holds no decodable frame. Replace the file or remove the row.")
    if fps is not None:
        if not video_fps:
            raise ValueError(
                f"{name} has no frame rate (frames given as images or an array), so `fps={fps}` sampling is "
                "impossible: sample with `num_frames` instead."
            )
        num_frames = max(1, int(total_num_frames / video_fps * fps))
    if num_frames is None:
        return np.arange(total_num_frames)
    if num_frames <= 0:
        raise ValueError(f"`num_frames` must be a positive number of frames, got {num_frames}.")
    if num_frames > total_num_frames:
        asked = f"`num_frames={num_frames}`" if fps is None else f"{num_frames} frames (`fps={fps}`)"
        raise ShortVideoError(
            f"{name} has {total_num_frames} decodable frame(s), fewer than the {asked} asked for. Sample fewer frames "
            "or remove the row."
        )
    return np.arange(num_frames) * total_num_frames // num_frames


def _import_av():
    try:
        import av
    except ImportError as err:
        raise ImportError(
            'Decoding video files needs PyAV: `pip install "any2text[video]"` (or `pip install av`).'
        ) from err
    return av


def _decode_file(path: str, wanted: set[int] | None, stop: int | None) -> tuple[dict[int, np.ndarray], int]:
    """Decode `path` sequentially from the start: the frames at `wanted` indices (all if None) and the count decoded.

    Decoding stops after index `stop` when given; otherwise it runs to the end (which counts the frames).
    """
    av = _import_av()
    frames, count = {}, 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise CorruptVideoError(f"Video `{path}` has no video stream. Replace the file or remove the row.")
            for count, frame in enumerate(container.decode(video=0), start=1):
                if wanted is None or count - 1 in wanted:
                    # One scaling thread: FFmpeg's slice-thread pool deadlocks in a forked process (a DataLoader
                    # worker) once the parent process has used it (its pthread state is copied mid-use).
                    frames[count - 1] = frame.to_ndarray(format="rgb24", threads=1)
                if stop is not None and count - 1 >= stop:
                    break
    except av.FFmpegError as err:
        raise CorruptVideoError(
            f"Video `{path}` cannot be decoded (after {count} frame(s)): {err}. Re-encode or replace the file, or "
            "remove the row."
        ) from err
    return frames, count


def _load_video_file(path: str, num_frames: int | None, fps: float | None) -> tuple[np.ndarray, dict]:
    av = _import_av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise CorruptVideoError(f"Video `{path}` has no video stream. Replace the file or remove the row.")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else None
            total = int(stream.frames or 0)
    except av.FFmpegError as err:
        raise CorruptVideoError(
            f"Video `{path}` cannot be opened: {err}. Replace the file or remove the row."
        ) from err
    name = f"Video `{path}`"
    if total <= 0:  # the container does not say (webm, some mkv): count by decoding once
        total = _decode_file(path, wanted=set(), stop=None)[1]
    indices = sample_frame_indices(total, num_frames, fps, video_fps, name)
    frames, decoded = _decode_file(path, set(indices.tolist()), stop=int(indices[-1]))
    if len(frames) < len(indices):  # fewer decodable frames than the container announced: sample those
        total = decoded
        indices = sample_frame_indices(total, num_frames, fps, video_fps, name)
        frames, _ = _decode_file(path, set(indices.tolist()), stop=int(indices[-1]))
    video = np.stack([frames[i] for i in indices.tolist()])
    duration = total / video_fps if video_fps else None
    return video, _metadata(total, video_fps, video, duration, indices)


def _metadata(total: int, fps: float | None, video: np.ndarray, duration: float | None, indices: np.ndarray) -> dict:
    return {
        "total_num_frames": total,
        "fps": fps,
        "width": int(video.shape[2]),
        "height": int(video.shape[1]),
        "duration": duration,
        "frames_indices": indices.tolist(),
    }


def _frames_from_images(images: Sequence, name: str) -> np.ndarray:
    """PIL frames (any mode, high-depth grayscale scaled) -> uint8 `(T, H, W, 3)`; frames must share one size."""
    arrays = [np.asarray(image_to_rgb(image, name)) for image in images]
    sizes = sorted({array.shape[:2] for array in arrays})
    if len(sizes) > 1:
        raise ValueError(f"{name} has frames of different sizes {sizes}: every frame of a video must have one size.")
    return np.stack(arrays)


def _load_frame_folder(path: Path, num_frames: int | None, fps: float | None) -> tuple[np.ndarray, dict]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_IMAGE_SUFFIXES and p.is_file())
    name = f"Frame folder `{path}`"
    indices = sample_frame_indices(len(files), num_frames, fps, None, name)
    images = []
    for index in indices.tolist():
        try:
            with Image.open(files[index]) as image:
                image.load()
                images.append(image.copy())
        except (OSError, SyntaxError) as err:
            raise CorruptVideoError(f"Frame `{files[index]}` of {name} cannot be read: {err}.") from err
    video = _frames_from_images(images, name)
    return video, _metadata(len(files), None, video, None, indices)


def _is_frame(frame) -> bool:
    return isinstance(frame, Image.Image) or (hasattr(frame, "ndim") and frame.ndim == 3)


def _as_frame_array(video, name: str = "The video") -> np.ndarray:
    """A list of PIL frames, or a uint8 array / tensor `(T, H, W, 3)`, as a uint8 numpy `(T, H, W, 3)`."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise EmptyVideoError(f"{name} is an empty list of frames.")
        if all(isinstance(frame, Image.Image) for frame in video):
            return _frames_from_images(video, name)
        video = np.stack([np.asarray(frame.detach().cpu() if hasattr(frame, "detach") else frame) for frame in video])
    if hasattr(video, "detach"):
        video = video.detach().cpu().numpy()
    if not isinstance(video, np.ndarray):
        raise TypeError(
            f"A video must be a path (file or frame folder), a list of PIL images or a uint8 array `(T, H, W, 3)`, got "
            f"`{type(video).__name__}`."
        )
    if video.ndim == 4 and video.shape[-1] != 3 and video.shape[1] == 3:
        video = video.transpose(0, 2, 3, 1)  # channels first, as transformers' test videos are
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name} must have shape `(T, H, W, 3)` (RGB frames), got {video.shape}.")
    if video.dtype != np.uint8:
        raise ValueError(f"{name} has dtype `{video.dtype}`; pass uint8 pixel values (0-255).")
    if video.shape[0] == 0:
        raise EmptyVideoError(f"{name} holds no frame.")
    return video


def load_video(video, num_frames: int | None = None, fps: float | None = None) -> tuple[np.ndarray, dict]:
    """Decode and sample one video: frames as uint8 `(T, H, W, 3)` and metadata as transformers' `VideoMetadata`.

    `video` is a video file (mp4, webm, mkv, avi... decoded with PyAV, sequentially from the start, keeping only the
    sampled frames), a folder of frame images (sorted by name, only the sampled ones are read), a list of PIL images,
    or a uint8 array / tensor `(T, H, W, 3)`. The four forms of one clip give the same frames. Sampling is
    transformers' (`sample_frame_indices`): `num_frames` uniformly, or `fps` frames per second of a file; neither
    keeps every frame. Metadata keys: `total_num_frames`, `fps`, `width`, `height`, `duration`, `frames_indices`.

    Raises:
        MissingVideoError, CorruptVideoError, EmptyVideoError, ShortVideoError: all `ValueError`s, naming the video.
        ImportError: a video file without PyAV installed.
    """
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            return _load_frame_folder(path, num_frames, fps)
        if not path.is_file():
            raise MissingVideoError(f"Video `{video}` does not exist (neither a video file nor a frame folder).")
        return _load_video_file(str(path), num_frames, fps)
    frames = _as_frame_array(video)
    indices = sample_frame_indices(len(frames), num_frames, fps, None)
    sampled = frames[indices]
    return sampled, _metadata(len(frames), None, sampled, None, indices)


class LlamaVisionAudioProcessorKwargs(ProcessingKwargs, total=False):
    """transformers' per-modality kwargs; the audio ones reach `LlamaVisionAudioFeatureExtractor`."""


class LlamaVisionAudioProcessor(ProcessorMixin):
    r"""
    Tokenizer, image processor (CLIP) and audio feature extractor (CLAP) in one processor.

    Each `<image>` in the text becomes `image_seq_length` image tokens, each `<audio>` `audio_seq_length` audio tokens
    and each `<video>` `T * video_frame_seq_length` video tokens for its `T` sampled frames (`replace_image_token` /
    `replace_audio_token` / `replace_video_token`), so that after the processor the sequence length is final. A video
    is a path (a video file, or a folder of frame images), a list of PIL images or a uint8 array `(T, H, W, 3)`,
    sampled with `num_frames` or `fps` (saved with the processor, or per call) by `load_video`; its frames go through
    the image processor into `pixel_values_videos`: `(num_videos, T, 3, H, W)`, one row per video, when every video of
    the call has the same number of frames `T` (the layout serving engines such as vLLM split per video), else the
    frames of all videos one after the other, `(total_frames, 3, H, W)`; the model reads both. Audio goes through
    [`LlamaVisionAudioFeatureExtractor`] (mono, int PCM scaled, resampled from `sampling_rate` to its rate; without
    `sampling_rate` its rate is assumed, with a warning). Per-call options follow transformers: flat
    (`rescale_factor=...`, `padding=...`) or per modality (`images_kwargs=`, `audio_kwargs=`, `videos_kwargs=`,
    `text_kwargs=`); `audios=` and `raw_speech=` are aliases of `audio=`.

    Args:
        image_processor ([`CLIPImageProcessor`], *optional*): the image processor.
        feature_extractor ([`LlamaVisionAudioFeatureExtractor`], *optional*): the audio feature extractor; a plain
            [`ClapFeatureExtractor`] (processors saved before it existed) is turned into one with the same settings.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*): the tokenizer; must know `image_token` and `audio_token`.
        chat_template (`str`, *optional*): Jinja chat template; defaults to the Llama-3 header format.
        image_token (`str`, *optional*, defaults to `"<image>"`): the image placeholder.
        audio_token (`str`, *optional*, defaults to `"<audio>"`): the audio placeholder.
        image_seq_length (`int`, *optional*, defaults to 576): tokens per image (`config.image_seq_length`).
        audio_seq_length (`int`, *optional*, defaults to 64): tokens per audio clip (`config.audio_seq_length`).
        video_token (`str`, *optional*, defaults to `"<video>"`): the video placeholder.
        video_frame_seq_length (`int`, *optional*): tokens per video frame (`config.video_frame_seq_length`); by
            default the config's rule at 2x2 pooling, from `image_seq_length` (576 -> 144, 577 with CLS -> 145).
        num_frames (`int`, *optional*, defaults to 8): frames sampled uniformly from each video.
        fps (`float`, *optional*): frames sampled per second of video instead (with `num_frames=None`).
    """

    valid_processor_kwargs = LlamaVisionAudioProcessorKwargs
    return_mm_token_type_ids = True

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        audio_token: str = "<audio>",
        image_seq_length: int = 576,
        audio_seq_length: int = 64,
        video_token: str = "<video>",
        video_frame_seq_length: int | None = None,
        num_frames: int | None = 8,
        fps: float | None = None,
    ):
        self.image_token, self.audio_token, self.video_token = image_token, audio_token, video_token
        self.image_seq_length, self.audio_seq_length = image_seq_length, audio_seq_length
        if video_frame_seq_length is None:
            # The config's rule at its default 2x2 pooling: CLS (kept only when the image count has it) + pooled grid.
            grid = isqrt(image_seq_length)
            video_frame_seq_length = (image_seq_length - grid * grid) + (grid // 2) ** 2
        self.video_frame_seq_length = video_frame_seq_length
        if num_frames is not None and fps is not None:
            raise ValueError(
                "`num_frames` and `fps` are mutually exclusive (as in transformers' `load_video`): pass "
                "`num_frames=None` with `fps`."
            )
        self.num_frames, self.fps = num_frames, fps
        if type(feature_extractor) is ClapFeatureExtractor:
            feature_extractor = LlamaVisionAudioFeatureExtractor.from_dict(feature_extractor.to_dict())
        chat_template = DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int | None:
        return self._token_id(self.image_token)

    @property
    def audio_token_id(self) -> int | None:
        return self._token_id(self.audio_token)

    @property
    def video_token_id(self) -> int | None:
        return self._token_id(self.video_token)

    def _token_id(self, token: str) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        return None if token_id is None or token_id == self.tokenizer.unk_token_id else token_id

    def __call__(
        self,
        images: ImageInput | None = None,
        text: str | list[str] | None = None,
        audio: AudioInput | None = None,
        videos: VideoInput | None = None,
        **kwargs: Unpack[LlamaVisionAudioProcessorKwargs],
    ) -> BatchFeature:
        for alias in ("audios", "raw_speech"):  # lmms-eval passes `audios=`, older audio processors `raw_speech=`
            if alias in kwargs:
                if audio is not None:
                    raise ValueError(f"Pass audio as `audio=` or `{alias}=`, not both.")
                audio = kwargs.pop(alias)
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        mask = outputs.get("attention_mask", outputs["input_ids"])
        for index, row in enumerate(mask):
            if len(row) == 0 or ("attention_mask" in outputs and not any(row)):
                # Without this, `text=""` gives an empty float tensor that crashes `generate` deep in the embedding.
                raise ValueError(
                    f"Sample {index} of `text` has no tokens (empty text, no special tokens added): there is nothing "
                    "to condition on. Pass a prompt, or keep the tokenizer's `add_special_tokens`."
                )
        return outputs

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        images, text, _, _ = super().prepare_inputs_layout(images=images, text=text, **kwargs)
        return _eight_bit(images), text, self._list_videos(videos), None if audio is None else list_audio(audio)

    @staticmethod
    def _list_videos(videos) -> list | None:
        """One item per video, each a path (`str`) or a uint8 array `(T, H, W, 3)`; nested lists (a batch of
        conversations) are flattened, and `[]` is no video."""
        if videos is None:
            return None
        items = []

        def walk(item):
            if isinstance(item, (str, os.PathLike)):
                items.append(str(item))
            elif hasattr(item, "ndim") and item.ndim == 5:  # (num_videos, T, ...)
                items.extend(_as_frame_array(video) for video in item)
            elif hasattr(item, "ndim") or (
                isinstance(item, (list, tuple)) and item and all(_is_frame(frame) for frame in item)
            ):
                items.append(_as_frame_array(item, f"Video {len(items)}"))
            elif isinstance(item, (list, tuple)):
                for inner in item:
                    walk(inner)
            else:
                raise TypeError(
                    "A video must be a path (file or frame folder), a list of PIL images or a uint8 array "
                    f"`(T, H, W, 3)`, got `{type(item).__name__}`."
                )

        walk(videos)
        return items or None

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if text is None:
            raise ValueError("`text` is required: it says where each `<image>`, `<audio>` and `<video>` goes.")
        if isinstance(text, (list, tuple)) and not text:
            raise ValueError("`text` is an empty list: pass one prompt (a string) per sample.")
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        for items, token in ((images, self.image_token), (audio, self.audio_token), (videos, self.video_token)):
            if items is not None and self._token_id(token) is None:
                raise ValueError(
                    f"The tokenizer does not know `{token}`: add it with `tokenizer.add_special_tokens("
                    f"{{'additional_special_tokens': ['{token}']}})` and resize the model's embeddings (the builders "
                    "do this)."
                )

    @property
    def video_processor(self):
        """Video frames go through the image processor (transformers' video processors need torchvision).

        Absent when the tokenizer has no `<video>` (a checkpoint without video): serving engines, which look for this
        attribute, then offer no video input, and `videos=` is an error naming the missing token.
        """
        if self.video_token_id is None:
            raise AttributeError(f"`{type(self).__name__}` takes no video: its tokenizer has no `{self.video_token}`.")
        return self.image_processor

    def _process_videos(self, videos: list, **kwargs) -> tuple[dict, list[str]]:
        """Sample and decode each video (`load_video`), then every frame through the image processor.

        Sampling: the call's `num_frames` or `fps` (`do_sample_frames=False`: every frame), else the processor's own.
        """
        num_frames, fps = kwargs.pop("num_frames", None), kwargs.pop("fps", None)
        if kwargs.pop("do_sample_frames", None) is False:
            num_frames = fps = None
        elif num_frames is None and fps is None:
            num_frames, fps = self.num_frames, self.fps
        clips = [load_video(video, num_frames=num_frames, fps=fps)[0] for video in videos]
        accepted = set(getattr(self.image_processor, "valid_kwargs", dict).__annotations__) | {"return_tensors"}
        frames = [frame for clip in clips for frame in clip]
        pixels = self.image_processor(frames, **{k: v for k, v in kwargs.items() if k in accepted})["pixel_values"]
        counts = [len(clip) for clip in clips]
        if len(set(counts)) == 1 and hasattr(pixels, "reshape"):
            # One row per video (vLLM's per-item split needs it); differing frame counts stay flat frames.
            pixels = pixels.reshape(len(clips), counts[0], *pixels.shape[1:])
        inputs = {"pixel_values_videos": pixels, "video_num_frames": counts}
        return inputs, [self.replace_video_token(inputs, i) for i in range(len(clips))]

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return self.video_token * (video_inputs["video_num_frames"][video_idx] * self.video_frame_seq_length)

    @property
    def unused_input_names(self) -> list[str]:
        return ["video_num_frames"]

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def replace_audio_token(self, audio_inputs: dict, audio_idx: int, **kwargs) -> str:
        return self.audio_token * self.audio_seq_length

    def _get_num_multimodal_tokens(
        self, image_sizes=None, video_sizes=None, audio_lengths=None, **kwargs
    ) -> MultiModalData:
        """Tokens each image / video / clip becomes, for vLLM: fixed per image (one resized image) and per clip (one
        extractor window); per video, its frames (`video_sizes` = `(num_frames, height, width)`) times
        `video_frame_seq_length`."""
        data = {}
        if image_sizes is not None:
            data["num_image_tokens"] = [self.image_seq_length] * len(image_sizes)
            data["num_image_patches"] = [1] * len(image_sizes)
        if video_sizes is not None:
            data["num_video_tokens"] = [int(size[0]) * self.video_frame_seq_length for size in video_sizes]
        if audio_lengths is not None:
            data["num_audio_tokens"] = [self.audio_seq_length] * len(audio_lengths)
        return MultiModalData(**data)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + ["mm_token_type_ids"]
        names += self.image_processor.model_input_names + ["pixel_values_videos"]
        names += self.feature_extractor.model_input_names
        return list(dict.fromkeys(names))

    def apply_chat_template(self, conversation, *args, sampling_rate: int | None = None, **kwargs):
        """transformers' `apply_chat_template`, plus: audio given as arrays in the messages may say their rate.

        Content items may carry audio as a path or URL (loaded and resampled by transformers) or as an array, with
        the rate in the item (`{"type": "audio", "audio": array, "sampling_rate": 16000}`) or as `sampling_rate=`.
        Arrays are resampled here to the feature extractor's rate, which is what transformers then assumes (also for
        an array without a rate, with a warning).
        """
        if kwargs.get("tokenize"):
            conversation = self._resample_audio_items(conversation, sampling_rate)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _resample_audio_items(self, conversation, sampling_rate: int | None):
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        target = self.feature_extractor.sampling_rate
        out = []
        for messages in conversation if batched else [conversation]:
            new_messages = []
            for message in messages:
                content = message.get("content")
                if isinstance(content, list):
                    content = [self._resampled_item(item, sampling_rate, target) for item in content]
                new_messages.append({**message, "content": content})
            out.append(new_messages)
        return out if batched else out[0]

    @staticmethod
    def _resampled_item(item: dict, sampling_rate: int | None, target: int) -> dict:
        audio = item.get("audio") if item.get("type") == "audio" else None
        if audio is None or isinstance(audio, str):
            return item
        rate = item.get("sampling_rate", sampling_rate)
        if rate is None:
            logger.warning(
                f"An audio item holds an array but no sampling rate: it is taken to be at {target} Hz, the feature "
                "extractor's rate. Add `'sampling_rate': RATE` to the item or pass `sampling_rate=RATE` to "
                "`apply_chat_template` to have it resampled."
            )
            return item
        clean = {key: value for key, value in item.items() if key != "sampling_rate"}
        return {**clean, "audio": resample(to_mono_float(audio), positive_int_rate(rate), target)}


__all__ = [
    "CorruptVideoError",
    "EmptyVideoError",
    "LlamaVisionAudioProcessor",
    "MissingVideoError",
    "ShortVideoError",
    "VideoError",
    "load_video",
]
