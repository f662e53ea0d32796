"""LlamaVisionAudio processor: tokenizer + image processor + audio feature extractor, with placeholder expansion.

Only torch/numpy/transformers imports at module level (soxr/scipy are optional and imported lazily), so
`register_for_auto_class` can ship this file as remote code.
"""

from math import gcd

import numpy as np
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

# transformers' convention for `mm_token_type_ids`.
TEXT_TYPE, IMAGE_TYPE, AUDIO_TYPE = 0, 1, 3

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
    "{%- elif item['type'] == 'image' %}{{- '<image>' }}{%- elif item['type'] == 'audio' %}{{- '<audio>' }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- if item['type'] == 'text' %}{{- item['text'] | trim }}"
    "{%- elif item['type'] == 'image' %}{{- '<image>' }}{%- elif item['type'] == 'audio' %}{{- '<audio>' }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


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
    """numpy / torch / list, int PCM or float, mono or multi-channel -> float32 mono numpy.

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
    array = array.astype(np.float32)
    if array.ndim == 2:
        # soundfile gives (samples, channels), torchaudio (channels, samples): channels are the short axis.
        channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
        array = array.mean(axis=channel_axis)
    elif array.ndim != 1:
        raise ValueError(f"Audio {label} must be 1-D (mono) or 2-D (multi-channel), got shape {array.shape}.")
    return np.ascontiguousarray(array)


class LlamaVisionAudioProcessor(ProcessorMixin):
    r"""
    Tokenizer, image processor (CLIP) and audio feature extractor (CLAP) in one processor.

    Each `<image>` in the text becomes `image_seq_length` image tokens and each `<audio>` becomes `audio_seq_length`
    audio tokens, so that after the processor the sequence length is final. Audio is resampled to the feature
    extractor's rate (48 kHz for CLAP) and down-mixed to mono.

    Args:
        image_processor ([`CLIPImageProcessor`], *optional*): the image processor.
        feature_extractor ([`ClapFeatureExtractor`], *optional*): the audio feature extractor.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*): the tokenizer; must know `image_token` and `audio_token`.
        chat_template (`str`, *optional*): Jinja chat template; defaults to the Llama-3 header format.
        image_token (`str`, *optional*, defaults to `"<image>"`): the image placeholder.
        audio_token (`str`, *optional*, defaults to `"<audio>"`): the audio placeholder.
        image_seq_length (`int`, *optional*, defaults to 576): tokens per image (`config.image_seq_length`).
        audio_seq_length (`int`, *optional*, defaults to 64): tokens per audio clip (`config.audio_seq_length`).
    """

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
        **kwargs,
    ):
        self.image_token = image_token
        self.audio_token = audio_token
        self.image_seq_length = image_seq_length
        self.audio_seq_length = audio_seq_length
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template, **kwargs)

    @property
    def image_token_id(self) -> int | None:
        return self._token_id(self.image_token)

    @property
    def audio_token_id(self) -> int | None:
        return self._token_id(self.audio_token)

    def _token_id(self, token: str) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        return None if token_id is None or token_id == self.tokenizer.unk_token_id else token_id

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "input_features", "is_longer"]

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        audio=None,
        sampling_rate: int | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        raw_speech=None,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        padding_side: str | None = None,
        videos=None,  # transformers' `apply_chat_template` always passes it; this processor takes no video
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            text (`str` or `list[str]`): prompts; each `<image>` / `<audio>` holds the place of one item.
            images (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a (nested) list of them): images in the order their
                placeholders appear across the batch.
            audio (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of them): audio clips in the order their
                placeholders appear; mono or multi-channel, int PCM or float. `raw_speech` is accepted as an alias.
            sampling_rate (`int`): the rate of the given clips. Required with audio: a wrong guess silently ruins
                every clip, so it is never guessed.
            truncation (`bool` or `str`, *optional*): `True` truncates to `max_length` and raises if that would cut
                through an image or audio span; `"text_only"` removes text tokens only and keeps every media span
                whole.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`.
        """
        if raw_speech is not None:
            if audio is not None:
                raise ValueError("Pass audio as `audio=` or `raw_speech=`, not both.")
            audio = raw_speech
        if text is None:
            raise ValueError("`text` is required: it says where each `<image>` and `<audio>` goes.")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("`text` must be a string or a list of strings.")

        image_list = self._flatten_images(images)
        audio_list = self._list_audio(audio)
        self._check_counts(texts, self.image_token, image_list, "image", "images")
        self._check_counts(texts, self.audio_token, audio_list, "audio", "audio")

        data: dict = {}
        if image_list:
            data["pixel_values"] = self.image_processor(image_list, return_tensors="pt")["pixel_values"]
        if audio_list:
            data.update(self._process_audio(audio_list, sampling_rate))

        encoded = self.tokenizer(
            texts, add_special_tokens=add_special_tokens, return_offsets_mapping=return_offsets_mapping, **kwargs
        )
        rows = [self._expand(i, encoded, return_offsets_mapping) for i in range(len(texts))]
        if truncation and max_length is None:
            # transformers' convention: truncation without `max_length` means the model's maximum length.
            max_length = self.tokenizer.model_max_length
        if truncation and max_length is not None:
            rows = [self._truncate(i, row, max_length, truncation) for i, row in enumerate(rows)]
        features = {key: [row[key] for row in rows] for key in rows[0]}
        features["attention_mask"] = [[1] * len(ids) for ids in features["input_ids"]]
        if padding and padding != "do_not_pad":
            features = self._pad(features, padding, max_length, padding_side)
        data.update(features)
        return BatchFeature(data, tensor_type=return_tensors)

    def _flatten_images(self, images) -> list:
        if images is None:
            return []
        if isinstance(images, (list, tuple)):
            flat = []
            for item in images:
                flat.extend(self._flatten_images(item) if isinstance(item, (list, tuple)) else [item])
            return flat
        return [images]

    @staticmethod
    def _list_audio(audio) -> list:
        if audio is None:
            return []
        if isinstance(audio, np.ndarray) or hasattr(audio, "detach"):
            # One clip, unless it is a batch of equal-length clips passed as a 2-D array of many rows.
            return [audio]
        if isinstance(audio, (list, tuple)):
            if len(audio) and all(isinstance(x, (int, float, np.number)) for x in audio[:16]):
                return [np.asarray(audio)]
            return list(audio)
        raise TypeError(f"`audio` must be a numpy array, torch tensor or list of them, got `{type(audio).__name__}`.")

    def _check_counts(self, texts: list[str], token: str, items: list, name: str, plural: str) -> None:
        per_sample = [t.count(token) for t in texts]
        if sum(per_sample) != len(items):
            raise ValueError(
                f"The text holds {sum(per_sample)} `{token}` placeholder(s) (per sample: {per_sample}) but "
                f"{len(items)} {plural} were given. Put exactly one `{token}` in the text for each {name}."
            )
        if items and self._token_id(token) is None:
            raise ValueError(
                f"The tokenizer does not know `{token}`: add it with `tokenizer.add_special_tokens("
                f"{{'additional_special_tokens': ['{token}']}})` and resize the model's embeddings (the builders do this)."
            )

    def _process_audio(self, clips: list, sampling_rate: int | None) -> dict:
        if sampling_rate is None:
            raise ValueError(
                "`sampling_rate` is required with audio: pass the rate the clips were recorded at (e.g. "
                f"`sampling_rate=16000`); they are resampled to {self.feature_extractor.sampling_rate} Hz here."
            )
        target = self.feature_extractor.sampling_rate
        rates = sampling_rate if isinstance(sampling_rate, (list, tuple)) else [sampling_rate] * len(clips)
        if len(rates) != len(clips):
            raise ValueError(f"Got {len(rates)} sampling rates for {len(clips)} audio clips.")
        mono = [resample(to_mono_float(clip, i), int(sr), target) for i, (clip, sr) in enumerate(zip(clips, rates))]
        window = self.feature_extractor.nb_max_samples
        fe = self.feature_extractor
        if getattr(fe, "truncation", None) == "fusion" and fe.feature_size != 64:
            # transformers' CLAP extractor fuses long clips at a hard-coded 64 mel bins and fails obscurely otherwise.
            for i, clip in enumerate(mono):
                if len(clip) > window:
                    raise ValueError(
                        f"Audio clip {i} lasts {len(clip) / target:.1f} s, longer than this feature extractor's "
                        f"{window / target:g} s window, and its {fe.feature_size} mel bins cannot use CLAP's fusion "
                        "of long clips (64 bins only). Trim the clip, or use a 64-bin feature extractor."
                    )
        out = self.feature_extractor(mono, sampling_rate=target, return_tensors="pt")
        # CLAP's extractor marks a RANDOM clip as "longer" when none is, which makes features nondeterministic;
        # mark exactly the clips that exceed the window instead.
        import torch

        out["is_longer"] = torch.tensor([[len(clip) > window] for clip in mono], dtype=torch.bool)
        return {"input_features": out["input_features"], "is_longer": out["is_longer"]}

    def _expand(self, index: int, encoded, with_offsets: bool) -> dict:
        """Replace each single placeholder id by its full run of media tokens, and type every token."""
        spans = {}
        if (image_id := self.image_token_id) is not None:
            spans[image_id] = (self.image_seq_length, IMAGE_TYPE)
        if (audio_id := self.audio_token_id) is not None:
            spans[audio_id] = (self.audio_seq_length, AUDIO_TYPE)
        ids_in = encoded["input_ids"][index]
        offsets_in = encoded["offset_mapping"][index] if with_offsets else None
        ids, types, offsets = [], [], []
        for pos, token_id in enumerate(ids_in):
            length, token_type = spans.get(token_id, (1, TEXT_TYPE))
            ids.extend([token_id] * length)
            types.extend([token_type] * length)
            if with_offsets:
                offsets.extend([tuple(offsets_in[pos])] * length)
        row = {"input_ids": ids, "mm_token_type_ids": types}
        if with_offsets:
            row["offset_mapping"] = offsets
        return row

    def _truncate(self, index: int, row: dict, max_length: int, truncation: bool | str) -> dict:
        if len(row["input_ids"]) <= max_length:
            return row
        types = row["mm_token_type_ids"]
        from_left = self.tokenizer.truncation_side == "left"
        if truncation == "text_only":
            n_media = sum(t != TEXT_TYPE for t in types)
            if n_media > max_length:
                raise ValueError(
                    f"Sample {index}: its media spans alone take {n_media} tokens, more than `max_length={max_length}`."
                    " Raise `max_length` or pass fewer images/clips."
                )
            drop = len(types) - max_length
            order = range(len(types)) if from_left else range(len(types) - 1, -1, -1)
            removed = set()
            for pos in order:
                if len(removed) == drop:
                    break
                if types[pos] == TEXT_TYPE:
                    removed.add(pos)
            return {key: [v for pos, v in enumerate(values) if pos not in removed] for key, values in row.items()}
        keep = slice(len(types) - max_length, None) if from_left else slice(0, max_length)
        cut = types[: len(types) - max_length] if from_left else types[max_length:]
        if any(t != TEXT_TYPE for t in cut):
            raise ValueError(
                f"Sample {index} has {len(types)} tokens; truncating it to `max_length={max_length}` would cut through "
                "an image or audio span, leaving the model fewer media tokens than features. Raise `max_length`, "
                "shorten the text, or pass `truncation='text_only'` to remove text tokens only."
            )
        return {key: values[keep] for key, values in row.items()}

    def _pad(self, features: dict, padding: bool | str, max_length: int | None, padding_side: str | None) -> dict:
        lengths = [len(ids) for ids in features["input_ids"]]
        target = max(lengths)
        if padding == "max_length":
            if max_length is None:
                raise ValueError("`padding='max_length'` needs `max_length`.")
            target = max(target, max_length)
        side = padding_side or self.tokenizer.padding_side
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("The tokenizer has no pad token: set `tokenizer.pad_token` (the builders add `<pad>`).")
        fill = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": TEXT_TYPE, "offset_mapping": (0, 0)}
        padded = {}
        for key, rows in features.items():
            padded[key] = [
                ([fill[key]] * (target - len(r)) + r) if side == "left" else (r + [fill[key]] * (target - len(r)))
                for r in rows
            ]
        return padded

    def apply_chat_template(self, conversation, *args, sampling_rate: int | None = None, **kwargs):
        """transformers' `apply_chat_template`, plus: audio given as arrays in the messages needs its rate.

        Content items may carry audio as a path or URL (loaded and resampled by transformers) or as an array, with
        the rate in the item (`{"type": "audio", "audio": array, "sampling_rate": 16000}`) or as `sampling_rate=`.
        Arrays are resampled here to the feature extractor's rate, which is what transformers then assumes.
        """
        if kwargs.get("tokenize"):
            conversation = self._resample_audio_items(conversation, sampling_rate)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _resample_audio_items(self, conversation, sampling_rate: int | None):
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        target = self.feature_extractor.sampling_rate
        out = []
        for messages in conversations:
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
            raise ValueError(
                "An audio item holds an array but no sampling rate: add `'sampling_rate': RATE` to the item or pass "
                "`sampling_rate=RATE` to `apply_chat_template` (it is never guessed)."
            )
        clean = {key: value for key, value in item.items() if key != "sampling_rate"}
        return {**clean, "audio": resample(to_mono_float(audio), int(rate), target)}

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, **kwargs
    ) -> list[str] | str:
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


__all__ = ["LlamaVisionAudioProcessor"]
