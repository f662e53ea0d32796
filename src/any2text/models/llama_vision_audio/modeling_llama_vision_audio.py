"""LlamaVisionAudio: a causal language model that reads images and video (CLIP/SigLIP) and audio (CLAP) through MLP
projectors.

Only relative imports, torch and transformers here, so `register_for_auto_class` can ship this folder as remote code.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.clap.modeling_clap import ClapAudioModel
from transformers.utils import can_return_tuple, logging

from .configuration_llama_vision_audio import LlamaVisionAudioConfig

logger = logging.get_logger(__name__)

# A stock Llava checkpoint's weights under our names (`from_pretrained(..., key_mapping=LLAVA_KEY_MAPPING)`, with the
# config from `LlamaVisionAudioConfig.from_llava_config`). Llava checkpoints are saved in its legacy layout
# (`language_model.model.*`, `vision_tower.*`, `multi_modal_projector.*`); only the projector's name differs from ours.
LLAVA_KEY_MAPPING = {
    r"^language_model\.lm_head\.": "lm_head.",
    r"^language_model\.model\.": "model.language_model.",
    r"^vision_tower\.": "model.vision_tower.",
    r"^(model\.)?multi_modal_projector\.": "model.vision_projector.",
}


@dataclass(frozen=True)
class Modality:
    """The model's part of a modality's record: what `forward` reads and where its features go.

    Args:
        name: `image`, `audio`, `video`.
        placeholder: the token one item is written as in a prompt, before the processor expands it.
        token_id_attr: the config attribute holding the placeholder's id (`None` or negative: the model has none).
        token_type: the modality's `mm_token_type_ids` value (transformers' numbering: text 0, image 1, video 2,
            audio 3).
        input_keys: the `forward` arguments of the modality, passed in this order to `feature_getter`; the first one
            holds the items.
        feature_getter: the model method that turns them into features (`pooler_output`).
        tower: the encoder attribute the getter runs (image and video share `vision_tower`).
        projector: the projector attribute the getter runs.
    """

    name: str
    placeholder: str
    token_id_attr: str
    token_type: int
    input_keys: tuple[str, ...]
    feature_getter: str
    tower: str
    projector: str

    def given(self, inputs: Mapping) -> bool:
        """Whether `inputs` (forward arguments by name) hold at least one item of this modality."""
        items = inputs.get(self.input_keys[0])
        return items is not None and items.shape[0] > 0


# In the order `forward` encodes them.
MODALITIES = (
    Modality(
        "image", "<image>", "image_token_id", 1, ("pixel_values",), "get_image_features", "vision_tower",
        "vision_projector",
    ),
    Modality(
        "audio", "<audio>", "audio_token_id", 3, ("input_features", "is_longer"), "get_audio_features", "audio_tower",
        "audio_projector",
    ),
    Modality(
        "video", "<video>", "video_token_id", 2, ("pixel_values_videos",), "get_video_features", "vision_tower",
        "vision_projector",
    ),
)  # fmt: skip


class LlamaVisionAudioProjector(nn.Module):
    """Two-layer MLP from an encoder's feature size to the language model's hidden size (LLaVA-1.5's projector)."""

    def __init__(self, in_features: int, out_features: int, hidden_act: str, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = ACT2FN[hidden_act]
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def _encoder_from_config(config) -> nn.Module:
    # CLAP's audio tower has no AutoModel mapping (only the full ClapModel has one).
    if config.model_type == "clap_audio_model":
        return ClapAudioModel._from_config(config)
    return AutoModel.from_config(config)


def _needs_grad(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _sub_models(module: nn.Module):
    """The outermost `PreTrainedModel`s inside `module` (its encoders and language model, or the base model)."""
    for child in module.children():
        if isinstance(child, PreTrainedModel):
            yield child
        else:
            yield from _sub_models(child)


def _given(**kwargs) -> dict:
    """The options actually set: an explicit `None` would hide the sub-config's own default from transformers."""
    return {key: value for key, value in kwargs.items() if value is not None}


def _keep_hidden_states(hidden_states: tuple | None, selected: list[int], requested) -> tuple | None:
    """The encoder's hidden states the caller asked for: all of them, or (as Llava) only those the features use."""
    if hidden_states is None or requested is True:
        return hidden_states
    keep = {index % len(hidden_states) for index in selected}
    return tuple(state if i in keep else None for i, state in enumerate(hidden_states))


def _check_counts(modality: str, num_tokens: int, features: torch.Tensor, tokens_per_frame: int) -> None:
    """A clear error when a modality's placeholders and features differ in number."""
    num_features = features.shape[:-1].numel()
    if num_tokens == num_features:
        return
    if modality == "video":
        given = f"the video frames give {num_features} features ({tokens_per_frame} per frame)"
        fix = f"expands each `<video>` into its number of frames times {tokens_per_frame} tokens"
    else:
        given = f"{features.shape[0]} {modality} item(s) give {num_features} features ({features.shape[1]} each)"
        fix = f"expands each `<{modality}>` into {features.shape[1]} tokens"
    raise ValueError(
        f"{modality.capitalize()} features and {modality} tokens do not match: the inputs hold {num_tokens} "
        f"{modality} tokens but {given}. Build inputs with the processor, which {fix}, and pass one {modality} per "
        "placeholder."
    )


class LlamaVisionAudioPreTrainedModel(PreTrainedModel):
    config: LlamaVisionAudioConfig
    config_class = LlamaVisionAudioConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "audio", "text")
    # The modalities the model reads, in the order `forward` encodes them. A subclass adding one extends it with its
    # record and brings the record's tower, projector and feature getter; its `input_keys` reach `forward` as keyword
    # arguments. The `*For...` heads read their inner model's table.
    modalities: tuple[Modality, ...] = MODALITIES
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _no_split_modules = ["LlamaVisionAudioProjector"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; saved as remote code, the `auto_map` also maps `AutoModel` to the base
        model, which vLLM's Transformers backend loads (transformers writes only the saved class's own entry)."""
        if self._auto_class is not None:
            module = LlamaVisionAudioModel.__module__.split(".")[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            self.config.auto_map = {**auto_map, "AutoModel": f"{module}.{LlamaVisionAudioModel.__name__}"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Initialise every sub-model (encoders, language model) with its own scheme, then our own modules.

        transformers' recursive initialisation hands the top model's "custom code" flag down to the sub-models and
        then skips container modules without parameters of their own, such as CLIP's attention and MLP, whose
        scheme lives on the container: weights missing at load would get N(0, 0.02) instead of what a fresh model
        gets. Each sub-model's own `initialize_weights` is the one transformers runs when it is built alone.
        """
        for sub_model in _sub_models(self):
            sub_model.initialize_weights()
        super().initialize_weights()


class LlamaVisionAudioModel(LlamaVisionAudioPreTrainedModel):
    """Encoders, projectors and the language model backbone; returns the language model's hidden states."""

    def __init__(self, config: LlamaVisionAudioConfig):
        if config.is_seed_format:
            # Loading it as is would leave the language model and projectors randomly initialised (other weight
            # names) and drop the CLS embedding the seed trained with.
            raise ValueError(
                "This is an align-anything (seed) checkpoint: its weights are stored under other names and its "
                "images keep the CLS embedding. Convert it once with `any2text convert-seed --model SEED_DIR "
                "--output OUT_DIR`, then load OUT_DIR."
            )
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        act, bias = config.projector_hidden_act, config.multimodal_projector_bias
        self.vision_tower = self.vision_projector = self.audio_tower = self.audio_projector = None
        if config.vision_config is not None:
            self.vision_tower = _encoder_from_config(config.vision_config)
            self.vision_projector = LlamaVisionAudioProjector(config.vision_feature_size, text_hidden, act, bias)
        if config.audio_config is not None:
            self.audio_tower = _encoder_from_config(config.audio_config)
            self.audio_projector = LlamaVisionAudioProjector(config.audio_feature_size, text_hidden, act, bias)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def train(self, mode: bool = True) -> "LlamaVisionAudioModel":
        """Frozen encoders stay in eval mode: CLAP's BatchNorm would otherwise drift its running statistics."""
        super().train(mode)
        for tower in (self.vision_tower, self.audio_tower):
            if tower is not None and not _needs_grad(tower):
                tower.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def _vision_features(
        self,
        pixel_values: torch.Tensor,
        argument: str,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The vision tower's output on `pixel_values` and the features images and videos share: the hidden state(s)
        `vision_feature_layer` (concatenated on the channel axis), without CLS under the "default" strategy."""
        if self.vision_tower is None:
            raise ValueError(
                f"This model has no vision encoder (`config.vision_config` is None) but got `{argument}`."
            )
        config = self.config
        layers = (
            [config.vision_feature_layer]
            if isinstance(config.vision_feature_layer, int)
            else list(config.vision_feature_layer)
        )
        if output_hidden_states is None:
            output_hidden_states = config.vision_config.output_hidden_states or None
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        # Frozen encoders build no autograd graph: their activations would otherwise be kept for nothing.
        with torch.set_grad_enabled(torch.is_grad_enabled() and _needs_grad(self.vision_tower)):
            outputs = self.vision_tower(
                pixel_values,
                # An index (or list) makes transformers' encoders keep only those hidden states; index 0 (the
                # embeddings) would read as False there, so it asks for all of them.
                output_hidden_states=True
                if output_hidden_states or layers == [0]
                else (layers[0] if len(layers) == 1 else layers),
                return_dict=True,
                **_given(output_attentions=output_attentions),
            )
        drop_cls = config.vision_feature_select_strategy == "default" and config.vision_has_cls
        selected = [
            outputs.hidden_states[layer][:, 1:] if drop_cls else outputs.hidden_states[layer] for layer in layers
        ]
        return outputs, torch.cat(selected, dim=-1)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encode images: vision tower -> feature layer(s) -> strategy -> projector.

        Returns the tower's output with `pooler_output` set to the projected features,
        `(num_images, image_seq_length, text_hidden_size)`. As Llava, the tower keeps only the hidden states the
        features use unless `output_hidden_states` asks for all; `return_dict=False` gives a tuple.
        """
        outputs, selected = self._vision_features(
            pixel_values, "pixel_values", output_attentions, output_hidden_states
        )
        outputs.pooler_output = self.vision_projector(selected)
        return outputs

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encode video frames (LLaVA-NeXT-Video): vision tower -> the image feature layer(s) and CLS rule -> spatial
        pooling of each frame's patch grid -> the image projector.

        `pixel_values_videos` are frames, `(total_frames, channels, height, width)` (every video's frames one after
        the other, as the processor gives them) or `(num_videos, num_frames, channels, height, width)`. The patch grid
        is pooled by `spatial_pool_mode` over `spatial_pool_stride` x `spatial_pool_stride` windows before the
        projector, as LlavaNextVideo does; a CLS embedding kept by the "full" strategy stays, unpooled, in front of
        its frame's patches. Returns the tower's output with `pooler_output` set to the projected features,
        `(total_frames, video_frame_seq_length, text_hidden_size)` for frames and `(num_videos, num_frames *
        video_frame_seq_length, text_hidden_size)` for videos (LlavaNextVideo's layout): one row per item given.
        """
        num_videos = pixel_values_videos.shape[0] if pixel_values_videos.ndim == 5 else None
        if num_videos is not None:
            pixel_values_videos = pixel_values_videos.flatten(0, 1)
        if pixel_values_videos.ndim != 4:
            raise ValueError(
                "`pixel_values_videos` must be frames `(total_frames, channels, height, width)` or videos "
                f"`(num_videos, num_frames, channels, height, width)`, got shape {tuple(pixel_values_videos.shape)}."
            )
        outputs, selected = self._vision_features(
            pixel_values_videos, "pixel_values_videos", output_attentions, output_hidden_states
        )
        keep_cls = self.config.vision_feature_select_strategy == "full" and self.config.vision_has_cls
        cls, patches = (selected[:, :1], selected[:, 1:]) if keep_cls else (selected[:, :0], selected)
        frames = torch.cat([cls, self._pool_patches(patches)], dim=1)
        features = self.vision_projector(frames)
        outputs.pooler_output = (
            features if num_videos is None else features.reshape(num_videos, -1, features.shape[-1])
        )
        return outputs

    def _pool_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """`(frames, side * side, dim)` -> `(frames, (side // stride) ** 2, dim)`: pooling over the patch grid."""
        frames, num_patches, dim = patches.shape
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"Video frames give {num_patches} patch embeddings each, not a square grid to pool.")
        stride = self.config.spatial_pool_stride
        pool = nn.functional.avg_pool2d if self.config.spatial_pool_mode == "average" else nn.functional.max_pool2d
        grid = patches.transpose(1, 2).reshape(frames, dim, side, side)
        return pool(grid, kernel_size=stride, stride=stride).flatten(2).transpose(1, 2)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.Tensor,
        is_longer: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encode audio clips: CLAP -> hidden state `audio_feature_layer` (a C x H x W grid) -> H*W tokens -> projector.

        Returns the tower's output with `pooler_output` set to the projected features,
        `(num_clips, audio_seq_length, text_hidden_size)`. CLAP always computes every hidden state; as for images,
        only the one the features use is returned unless `output_hidden_states` asks for all.
        """
        if self.audio_tower is None:
            raise ValueError(
                "This model has no audio encoder (`config.audio_config` is None) but got `input_features`."
            )
        if is_longer is None:
            is_longer = torch.zeros(input_features.shape[0], 1, dtype=torch.bool, device=input_features.device)
        if output_hidden_states is None:
            output_hidden_states = self.config.audio_config.output_hidden_states or None
        input_features = input_features.to(dtype=self.audio_tower.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and _needs_grad(self.audio_tower)):
            outputs = self.audio_tower(
                input_features,
                is_longer=is_longer,
                output_hidden_states=True,
                return_dict=True,
                **_given(output_attentions=output_attentions),
            )
        grid = outputs.hidden_states[self.config.audio_feature_layer]  # (clips, channels, H, W)
        selected = grid.flatten(2).transpose(1, 2)
        outputs.pooler_output = self.audio_projector(selected)
        outputs.hidden_states = _keep_hidden_states(
            outputs.hidden_states, [self.config.audio_feature_layer], output_hidden_states
        )
        return outputs

    def has_modality(self, modality: Modality) -> bool:
        """Whether this model reads `modality`: it has the modality's tower and a placeholder token for it (a checkpoint
        built before video keeps the default `video_token_id`, past the end of its vocabulary)."""
        token_id = getattr(self.config, modality.token_id_attr, None)
        vocab_size = getattr(self.get_input_embeddings(), "num_embeddings", None)
        in_vocab = token_id is not None and token_id >= 0 and (vocab_size is None or token_id < vocab_size)
        return getattr(self, modality.tower, None) is not None and in_vocab

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        video_features: torch.Tensor | None = None,
        **features: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """Masks of each modality's placeholder positions (`self.modalities` order: image, audio, video, then any
        modality a subclass adds, whose features come as `<name>_features`), `(batch, seq, 1)` each.

        Positions come from `input_ids`, else from `mm_token_type_ids` (1 image, 2 video, 3 audio, ...), else by comparing
        `inputs_embeds` with the placeholder embeddings. Raises a `ValueError` naming the modality and both counts when
        the number of placeholders differs from the number of feature vectors.
        """
        given = {"image_features": image_features, "audio_features": audio_features, "video_features": video_features}
        given.update(features)
        unknown = set(given) - {f"{modality.name}_features" for modality in self.modalities}
        if unknown:
            raise TypeError(f"`get_placeholder_mask` got features of no modality of this model: {sorted(unknown)}.")
        masks = []
        for modality in self.modalities:
            features = given.get(f"{modality.name}_features")
            token_id = getattr(self.config, modality.token_id_attr, None)
            if input_ids is not None:
                mask = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
            elif mm_token_type_ids is not None:
                mask = mm_token_type_ids == modality.token_type
            elif features is None or not self.has_modality(modality):
                # Nothing to place, or a modality the model does not have (its id may be a negative sentinel).
                mask = torch.zeros(inputs_embeds.shape[:-1], dtype=torch.bool, device=inputs_embeds.device)
            else:
                mask = self._embedding_mask(inputs_embeds, modality)
            if features is not None:
                _check_counts(modality.name, int(mask.sum()), features, self.config.video_frame_seq_length)
            masks.append(mask.unsqueeze(-1).to(inputs_embeds.device))
        return tuple(masks)

    def _embedding_mask(self, inputs_embeds: torch.Tensor, modality: Modality) -> torch.Tensor:
        embeddings = self.get_input_embeddings()

        def embedding(other: Modality) -> torch.Tensor:
            token_id = getattr(self.config, other.token_id_attr)
            return embeddings(torch.tensor(token_id, device=inputs_embeds.device))

        target = embedding(modality)
        for other in self.modalities:
            # Built models start every placeholder from the same (mean) row: their embeddings cannot tell them
            # apart, only the processor's `mm_token_type_ids` can.
            if other is not modality and self.has_modality(other) and torch.equal(target, embedding(other)):
                raise ValueError(
                    f"The `{modality.placeholder}` and `{other.placeholder}` embeddings are identical, so media "
                    "positions cannot be found from `inputs_embeds`: pass the processor's `mm_token_type_ids` (or "
                    "`input_ids`) as well."
                )
        return (inputs_embeds == target).all(-1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple | MultimodalBaseModelOutputWithPast:
        r"""
        pixel_values_videos (`torch.Tensor` of shape `(total_frames, channels, height, width)`, *optional*):
            Video frames, every video's frames one after the other (or `(num_videos, num_frames, channels, height,
            width)`); each `<video>` placeholder is expanded into `num_frames * config.video_frame_seq_length` tokens.
        kwargs:
            The inputs of any modality a subclass adds to `modalities` (its record's `input_keys`, taken out here),
            then the language model's arguments.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        media = {
            "pixel_values": pixel_values,
            "input_features": input_features,
            "is_longer": is_longer,
            "pixel_values_videos": pixel_values_videos,
        }
        for modality in self.modalities:
            for key in modality.input_keys:
                if key not in media:
                    media[key] = kwargs.pop(key, None)
        outputs, features = {}, {}
        for modality in self.modalities:
            if modality.given(media):
                getter = getattr(self, modality.feature_getter)
                outputs[modality.name] = getter(*(media[key] for key in modality.input_keys), return_dict=True)
                features[modality.name] = outputs[modality.name].pooler_output.to(
                    inputs_embeds.device, inputs_embeds.dtype
                )
        masks = self.get_placeholder_mask(
            input_ids,
            inputs_embeds,
            mm_token_type_ids=mm_token_type_ids,
            **{f"{name}_features": value for name, value in features.items()},
        )
        masks = dict(zip((modality.name for modality in self.modalities), masks))
        self._check_media_given(masks, features, kwargs)
        for name, value in features.items():
            inputs_embeds = inputs_embeds.masked_scatter(masks[name], value)

        outputs_lm = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        return MultimodalBaseModelOutputWithPast(
            last_hidden_state=outputs_lm.last_hidden_state,
            cache=getattr(outputs_lm, "cache", None),
            hidden_states=outputs_lm.hidden_states,
            attentions=outputs_lm.attentions,
            image_outputs=outputs.get("image"),
            audio_outputs=outputs.get("audio"),
            video_outputs=outputs.get("video"),
        )

    def _check_media_given(self, masks: dict[str, torch.Tensor], features: dict[str, torch.Tensor], kwargs) -> None:
        """Placeholders of a modality whose media are missing: an error when other media were given, else text.

        With no media at all the ids are embedded as ordinary tokens, as Llava does: transformers' assisted
        decoding, for one, never passes media to the assistant model. Decoding steps (a non-empty cache) see only
        new tokens; media were merged at prefill.
        """
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return
        missing = [m for m in self.modalities if m.name not in features and masks[m.name].any()]
        if not missing:
            return
        if features:
            raise ValueError(
                f"The inputs hold {missing[0].name} tokens but no `{missing[0].input_keys[0]}` were given while other "
                f"media were: pass the {missing[0].name} items to the processor together with the text."
            )
        logger.warning_once(
            "The inputs hold media placeholder tokens ("
            + ", ".join(f"`{m.placeholder}`" for m in missing)
            + ") but no media were given: they are embedded as text (as Llava does, e.g. for an assistant model in "
            "assisted decoding). Pass " + " / ".join(f"`{m.input_keys[0]}`" for m in missing) + " to fill them."
        )


class LlamaVisionAudioForConditionalGeneration(LlamaVisionAudioPreTrainedModel, GenerationMixin):
    """[`LlamaVisionAudioModel`] with a language modeling head, the loss and `generate`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # As Llava: a tied head is sharded like the embedding it shares weights with (Llama-3.2-1B/3B tie them).
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LlamaVisionAudioConfig):
        super().__init__(config)
        self.model = LlamaVisionAudioModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # A generated placeholder would be a media slot with no media behind it: never sample one.
        if self.generation_config is not None and self.generation_config.suppress_tokens is None:
            placeholders = (getattr(config, modality.token_id_attr, None) for modality in self.modalities)
            self.generation_config.suppress_tokens = [token_id for token_id in placeholders if token_id is not None]

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return self.model.modalities

    @property
    def vision_tower(self) -> nn.Module | None:
        return self.model.vision_tower

    @property
    def audio_tower(self) -> nn.Module | None:
        return self.model.audio_tower

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_video_features(self, pixel_values_videos: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    def get_audio_features(
        self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None, **kwargs
    ) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_features, is_longer=is_longer, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_token_type_ids: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        shift_labels: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple | MultimodalCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids to predict; `-100` marks positions without a label (prompt, media, padding). The loss is the
            mean cross-entropy over labelled positions (or their sum over `num_items_in_batch`, as the Trainer passes
            under gradient accumulation). In training mode, logits are computed only at labelled positions and
            `logits` is returned as `None`: at a 128K vocabulary and hundreds of media tokens per sample, full
            logits are most of the activation memory.
        shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets already aligned with the positions that predict them (`shift_labels[:, i]` is predicted at
            position `i`), as sequence/context-parallel trainers pass them; used instead of shifting `labels`.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            input_features=input_features,
            is_longer=is_longer,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values_videos=pixel_values_videos,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        has_targets = labels is not None or shift_labels is not None

        loss = logits = None
        if has_targets and self.training:
            loss = self._sparse_loss(hidden_states, labels, shift_labels, num_items_in_batch)
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
            if has_targets:
                logits_used, targets = self._aligned(logits, labels, shift_labels)
                loss = self._reduce(
                    nn.functional.cross_entropy(
                        logits_used.float().flatten(0, 1),
                        targets.flatten(),
                        ignore_index=self.config.ignore_index,
                        reduction="sum",
                    ),
                    targets,
                    num_items_in_batch,
                )

        return MultimodalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            audio_outputs=outputs.audio_outputs,
            video_outputs=outputs.video_outputs,
        )

    @staticmethod
    def _aligned(
        states: torch.Tensor, labels: torch.LongTensor | None, shift_labels: torch.LongTensor | None
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """`states` (hidden states or logits) and the targets they predict: `shift_labels` as given, else
        `labels` shifted left by one."""
        if shift_labels is not None:
            return states, shift_labels.to(states.device)
        return states[:, :-1], labels[:, 1:].to(states.device)

    def _sparse_loss(
        self,
        hidden_states: torch.Tensor,
        labels: torch.LongTensor | None,
        shift_labels: torch.LongTensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        hidden_states, targets = self._aligned(hidden_states, labels, shift_labels)
        keep = targets != self.config.ignore_index
        logits = self.lm_head(hidden_states[keep])
        loss_sum = nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return self._reduce(loss_sum, targets, num_items_in_batch)

    def _reduce(
        self, loss_sum: torch.Tensor, shift_labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        if num_items_in_batch is None:
            # A batch with no label at all gives 0 rather than NaN, so it cannot poison an accumulated step.
            num_items_in_batch = (shift_labels != self.config.ignore_index).sum().clamp(min=1)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device)
        return loss_sum / num_items_in_batch


class LlamaVisionAudioForSequenceClassification(LlamaVisionAudioPreTrainedModel):
    """[`LlamaVisionAudioModel`] with a bias-free `score` head read at the last token that is not padding: a reward
    model with `num_labels=1` (the config's default), as transformers' `GenericForSequenceClassification` builds one.

    It loads from any LlamaVisionAudio checkpoint (a stage-2 output: `score` is new and initialised) through
    `AutoModelForSequenceClassification.from_pretrained(path)`, and from a stock Llava checkpoint with
    `from_pretrained(path, config=LlamaVisionAudioConfig.from_llava_config(llava_config), key_mapping=LLAVA_KEY_MAPPING)`.
    """

    def __init__(self, config: LlamaVisionAudioConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LlamaVisionAudioModel(config)
        self.score = nn.Linear(config.text_config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return self.model.modalities

    @property
    def vision_tower(self) -> nn.Module | None:
        return self.model.vision_tower

    @property
    def audio_tower(self) -> nn.Module | None:
        return self.model.audio_tower

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_video_features(self, pixel_values_videos: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    def get_audio_features(
        self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None, **kwargs
    ) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_features, is_longer=is_longer, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        is_longer: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple | SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Targets of transformers' sequence classification loss: regression (MSE) for `num_labels=1`, else
            cross-entropy (or `config.problem_type`).
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Return the score of every position instead of the last non-pad token's, `(batch, positions, num_labels)`,
            as the causal LM head keeps logits: `0` all positions, `n` the last `n`, a 1D tensor those columns. The
            reward trainer reads two answers of one row this way (see `any2text.training.reward`).
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            input_features=input_features,
            is_longer=is_longer,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values_videos=pixel_values_videos,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep is not None:
            logits = self.score(slice_logits_to_keep(hidden_states, logits_to_keep))
        else:
            logits = self.score(
                hidden_states[torch.arange(hidden_states.shape[0]), self._last_non_pad(input_ids, hidden_states)]
            )
        loss = None
        if labels is not None:
            if logits_to_keep is not None:
                raise ValueError("`labels` score the last non-pad token; leave `logits_to_keep` unset with `labels`.")
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=logits,
            cache=getattr(outputs, "cache", None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _last_non_pad(self, input_ids: torch.LongTensor | None, hidden_states: torch.Tensor) -> torch.Tensor | int:
        """Column of each row's last token that is not `pad_token_id`: right and left padding alike (transformers'
        rule); the last column when there is no pad token or only `inputs_embeds`."""
        pad_token_id = self.config.get_text_config().pad_token_id
        if pad_token_id is None and hidden_states.shape[0] != 1:
            raise ValueError("Cannot score a batch of more than one sequence without a `pad_token_id` in the config.")
        if pad_token_id is None:
            return -1
        if input_ids is None:
            logger.warning_once(
                f"{type(self).__name__} cannot find padding in `inputs_embeds`: the last column is scored. Pass "
                "`input_ids` to score the last non-pad token."
            )
            return -1
        non_pad = (input_ids != pad_token_id).to(hidden_states.device, torch.int32)
        columns = torch.arange(input_ids.shape[-1], device=hidden_states.device, dtype=torch.int32)
        return (columns * non_pad).argmax(-1)


__all__ = [
    "LLAVA_KEY_MAPPING",
    "MODALITIES",
    "Modality",
    "LlamaVisionAudioForConditionalGeneration",
    "LlamaVisionAudioForSequenceClassification",
    "LlamaVisionAudioModel",
    "LlamaVisionAudioPreTrainedModel",
    "LlamaVisionAudioProjector",
]
