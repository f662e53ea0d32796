"""LlamaVisionAudio configuration: a causal LM joined to an optional vision encoder (images and video frames) and an
optional audio encoder."""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Vision encoders whose sequence starts with a CLS embedding ("default" strategy drops it; "full" keeps it).
# SigLIP has none, so "default" must not drop anything there.
VISION_ENCODERS_WITH_CLS = ("clip_vision_model",)


class LlamaVisionAudioConfig(PreTrainedConfig):
    r"""
    Configuration of a [`LlamaVisionAudioForConditionalGeneration`]: a text model plus an optional vision encoder and
    an optional audio encoder, each joined to the text model by a two-layer MLP projector. Videos are frames through
    the vision encoder and its projector (LLaVA-NeXT-Video's design), with each frame's patch grid pooled first.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the language model; any causal LM transformers knows. Defaults to a `LlamaConfig`.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision encoder (CLIP or SigLIP vision). `None` means the model has no vision input.
        audio_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the audio encoder (`ClapAudioConfig`). `None` means the model has no audio input.
        image_token_id (`int`, *optional*, defaults to 128256):
            Id of the token that holds the place of one image embedding.
        audio_token_id (`int`, *optional*, defaults to 128257):
            Id of the token that holds the place of one audio embedding.
        video_token_id (`int`, *optional*, defaults to 128258):
            Id of the token that holds the place of one video embedding; `None` (set so when there is no vision
            encoder, and for a config saved before video) means the model reads no video.
        vision_feature_layer (`int` or `list[int]`, *optional*, defaults to -2):
            Hidden state(s) of the vision encoder fed to the projector (a list is concatenated on the channel axis).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS embedding of encoders that have one, `"full"` keeps every embedding.
        audio_feature_layer (`int`, *optional*, defaults to -2):
            Hidden state of the audio encoder fed to the projector.
        spatial_pool_mode (`str`, *optional*, defaults to `"average"`):
            How a video frame's patch grid is pooled before the projector: `"average"` or `"max"`.
        spatial_pool_stride (`int`, *optional*, defaults to 2):
            Side of the (non-overlapping) pooling window; a grid side that is not a multiple is floored.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the two linear layers of each projector.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector linear layers have biases.
        num_labels (`int`, *optional*, defaults to 1):
            Outputs of [`LlamaVisionAudioForSequenceClassification`]'s `score` head: 1, a reward model's scalar, unless
            set (or `id2label` given).

    The number of tokens one image, one video frame and one audio clip become is derived from the encoder configs and
    exposed as `image_seq_length`, `video_frame_seq_length` and `audio_seq_length` (576 and 144 for CLIP ViT-L/14 at
    336 px with `"default"`; 64 for CLAP HTSAT).
    `audio_config.max_source_positions` repeats `audio_seq_length` for serving engines that size audio by it.

    Example:

    ```python
    >>> from transformers import AutoConfig, ClapAudioConfig, CLIPVisionConfig, LlamaConfig
    >>> import any2text  # registers "llama_vision_audio"

    >>> config = AutoConfig.for_model(
    ...     "llama_vision_audio",
    ...     text_config=LlamaConfig(),
    ...     vision_config=CLIPVisionConfig(image_size=336, patch_size=14),
    ...     audio_config=ClapAudioConfig(),
    ... )
    >>> config.image_seq_length, config.video_frame_seq_length, config.audio_seq_length
    (576, 144, 64)
    ```
    """

    model_type = "llama_vision_audio"
    # The seed project's config.json spells these `image_token_index` / `audio_token_index`.
    attribute_map = {
        "image_token_index": "image_token_id",
        "audio_token_index": "audio_token_id",
        "video_token_index": "video_token_id",
    }

    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="clap_audio_model", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 128256
    audio_token_id: int = 128257
    video_token_id: int | None = 128258
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    audio_feature_layer: int = -2
    spatial_pool_mode: Literal["average", "max"] = "average"
    spatial_pool_stride: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    ignore_index: int = -100
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # The one classifier of this model type is the reward model (TRL's `num_labels=1`), not transformers' 2.
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = 1
        # Only the seed project's (align-anything) config.json carries `audio_feature_select_strategy`; it stays on
        # the config as the mark of that format, whose weights need `any2text convert-seed` (see `is_seed_format`).
        super().__post_init__(**kwargs)
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"`vision_feature_select_strategy` must be 'default' or 'full', got {self.vision_feature_select_strategy!r}."
            )
        if self.spatial_pool_mode not in ("average", "max"):
            raise ValueError(f"`spatial_pool_mode` must be 'average' or 'max', got {self.spatial_pool_mode!r}.")
        if not isinstance(self.spatial_pool_stride, int) or self.spatial_pool_stride < 1:
            raise ValueError(f"`spatial_pool_stride` must be a positive integer, got {self.spatial_pool_stride!r}.")
        if self.vision_config is None:
            self.video_token_id = None  # videos are frames through the vision encoder
        ids = {name: getattr(self, name) for name in ("image_token_id", "audio_token_id", "video_token_id")}
        ids = {name: token_id for name, token_id in ids.items() if token_id is not None}
        if len(set(ids.values())) < len(ids):
            raise ValueError(f"The placeholder token ids must differ from each other, got {ids}.")
        # Llava does the same: checkpoints record tying on the text config.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.audio_config is not None:
            # Serving engines size audio by the encoder's max input length (vLLM reads `max_source_positions`): for
            # CLAP, every clip becomes `audio_seq_length` tokens whatever its length. Derived, so never stale.
            self.audio_config.max_source_positions = self.audio_seq_length

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "LlamaVisionAudioConfig":
        """`PreTrainedConfig.from_dict`; a config saved before video (no `video_token_id` key) reads no video: its
        tokenizer has no `<video>`, and id 128258 is another token there (`<pad>` in Llama-3 builds and the seed's)."""
        if not {"video_token_id", "video_token_index"} & config_dict.keys():
            config_dict = {**config_dict, "video_token_id": None}
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_llava_config(cls, llava_config: PreTrainedConfig, **kwargs) -> "LlamaVisionAudioConfig":
        """The config of a stock `LlavaForConditionalGeneration` checkpoint as an image-only LlamaVisionAudio config.

        The two models have the same modules (Llava's `multi_modal_projector` is our `vision_projector`, see
        `LLAVA_KEY_MAPPING` in the modeling file) and the same feature rules, so a Llava checkpoint loads into any
        LlamaVisionAudio class with `from_pretrained(path, config=..., key_mapping=LLAVA_KEY_MAPPING)`. `kwargs`
        (e.g. `num_labels`) are set on the new config.
        """
        if getattr(llava_config, "model_type", None) != "llava":
            raise ValueError(
                f"Expected a `LlavaConfig` (model_type `llava`), got model_type "
                f"`{getattr(llava_config, 'model_type', None)}`."
            )
        return cls(
            text_config=llava_config.text_config,
            vision_config=llava_config.vision_config,
            audio_config=None,
            image_token_id=llava_config.image_token_id,
            audio_token_id=-1,  # no audio encoder: a sentinel no token has
            video_token_id=None,  # a Llava tokenizer has no `<video>`
            vision_feature_layer=llava_config.vision_feature_layer,
            vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
            projector_hidden_act=llava_config.projector_hidden_act,
            multimodal_projector_bias=llava_config.multimodal_projector_bias,
            tie_word_embeddings=llava_config.tie_word_embeddings,
            **kwargs,
        )

    @property
    def is_seed_format(self) -> bool:
        """Whether this is an unconverted align-anything config (other weight names, CLS kept, 577 image tokens)."""
        return getattr(self, "audio_feature_select_strategy", None) is not None

    @property
    def image_seq_length(self) -> int:
        """Number of tokens (and embeddings) one image becomes; 0 without a vision encoder."""
        if self.vision_config is None:
            return 0
        image_size, patch_size = self.vision_config.image_size, self.vision_config.patch_size
        num_patches = (image_size // patch_size) ** 2
        return num_patches + int(self.vision_has_cls and self.vision_feature_select_strategy == "full")

    @property
    def vision_has_cls(self) -> bool:
        """Whether the vision encoder's sequence starts with a CLS embedding (CLIP; SigLIP has none)."""
        return self.vision_config is not None and self.vision_config.model_type in VISION_ENCODERS_WITH_CLS

    @property
    def video_frame_seq_length(self) -> int:
        """Number of tokens (and embeddings) one video frame becomes: the patch grid pooled by `spatial_pool_stride`
        (floored), plus the CLS embedding the "full" strategy keeps; 0 without a vision encoder."""
        if self.vision_config is None:
            return 0
        grid = self.vision_config.image_size // self.vision_config.patch_size
        keep_cls = self.vision_has_cls and self.vision_feature_select_strategy == "full"
        return int(keep_cls) + (grid // self.spatial_pool_stride) ** 2

    @property
    def audio_seq_length(self) -> int:
        """Number of tokens (and embeddings) one audio clip becomes, whatever its length; 0 without an audio encoder."""
        if self.audio_config is None:
            return 0
        grid, _ = audio_feature_grid(self.audio_config, self.audio_feature_layer)
        return grid * grid

    @property
    def vision_feature_size(self) -> int:
        if self.vision_config is None:
            return 0
        num_layers = 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)
        return self.vision_config.hidden_size * num_layers

    @property
    def audio_feature_size(self) -> int:
        if self.audio_config is None:
            return 0
        return audio_feature_grid(self.audio_config, self.audio_feature_layer)[1]


def audio_feature_grid(audio_config: PreTrainedConfig, feature_layer: int) -> tuple[int, int]:
    """Side of the square token grid and channel count of CLAP's hidden state `feature_layer`.

    CLAP (HTSAT) reshapes the mel spectrogram to a `spec_size` x `spec_size` image, embeds `patch_size` patches, and
    every stage but the last halves the grid and doubles the channels; `hidden_states` holds the embeddings and
    the output of each stage, so for laion/clap-htsat-fused `hidden_states[-2]` is an 8 x 8 grid of 768 channels.
    """
    num_stages = len(audio_config.depths)
    index = feature_layer % (num_stages + 1)
    downsamples = min(index, num_stages - 1)
    grid = audio_config.spec_size // audio_config.patch_size // 2**downsamples
    channels = audio_config.patch_embeds_hidden_size * 2**downsamples
    return grid, channels


__all__ = ["LlamaVisionAudioConfig"]
