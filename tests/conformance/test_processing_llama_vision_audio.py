"""transformers' own `ProcessorTesterMixin` (from the pinned sdist) run against `LlamaVisionAudioProcessor`.

Written on the pattern of transformers' `tests/models/llava/test_processing_llava.py` and
`tests/models/gemma3n/test_processing_gemma3n.py`, with tiny local parts instead of Hub ids. transformers' test clips
carry no sampling rate; like transformers' audio processors, ours takes them at its feature extractor's rate (with a
warning). Two adaptations, both about inputs, none about what is checked:

- Videos go frame by frame through the image processor (transformers' video processors need torchvision), so the
  mixin's video tests, which look for a `video_processor` sub-processor, are pointed at the image processor
  (`get_subprocessor_name`); the one that calls that sub-processor on a whole video is skipped with its reason.
- The mixin imports `url_to_local_path` from transformers' repository `utils/`, which the sdist does not ship; when
  it is missing, a stand-in maps the test image's and test clips' URLs to local files made here (what transformers'
  CI pre-fetch does with the real files) and leaves other URLs (videos: their tests need torchcodec) unchanged.
"""

import sys
import tempfile
import types
import unittest
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor

from any2text import LlamaVisionAudioProcessor
from any2text.builders.presets import tiny_tokenizer_path
from any2text.models.llama_vision_audio.feature_extraction_llama_vision_audio import LlamaVisionAudioFeatureExtractor

_LOCAL_MEDIA = Path(tempfile.mkdtemp(prefix="any2text-processor-conformance-"))


def _install_url_stand_in() -> None:
    try:
        import fetch_hub_objects_for_ci  # noqa: F401  (transformers' own, when its utils/ folder is present)
    except ImportError:
        Image.new("RGB", (64, 48), "teal").save(_LOCAL_MEDIA / "coco_sample.png")
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        soundfile.write(_LOCAL_MEDIA / "glass-breaking-151256.mp3", tone.astype(np.float32), 16000)
        soundfile.write(_LOCAL_MEDIA / "f2641_0_throatclearing.wav", tone[:8000].astype(np.float32), 16000)
        local = {path.name: str(path) for path in _LOCAL_MEDIA.iterdir()}
        module = types.ModuleType("fetch_hub_objects_for_ci")
        module.url_to_local_path = lambda url, return_url_if_not_found=True: local.get(url.split("/")[-1], url)
        sys.modules["fetch_hub_objects_for_ci"] = module


_install_url_stand_in()
from transformers_tests.test_processing_common import ProcessorTesterMixin  # noqa: E402


class LlamaVisionAudioProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = LlamaVisionAudioProcessor
    # The mixin's knob for longer media spans: a clip is 64 tokens here, more than its default of 76 minus the text.
    audio_unstructured_max_length = 100

    @classmethod
    def _setup_tokenizer(cls):
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
        special = ["<image>", "<audio>", "<video>"]
        tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": special})
        return tokenizer

    @classmethod
    def _setup_image_processor(cls):
        return CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})

    @classmethod
    def _setup_feature_extractor(cls):
        return LlamaVisionAudioFeatureExtractor()

    @staticmethod
    def prepare_processor_dict():
        return {"image_seq_length": 16, "audio_seq_length": 64}

    def get_subprocessor_name(self, modality: str, attributes: list):
        # Videos go frame by frame through the image processor (`processor.video_processor` is it): the mixin's
        # multi-modality tests then pass videos too, instead of a `<video>` in the text with no video.
        if modality == "videos":
            return "image_processor"
        return super().get_subprocessor_name(modality, attributes)

    def test_subprocessor_defaults_2_videos(self):
        self.skipTest(
            "Compares the processor with a video sub-processor called on the video; here the image processor takes the "
            "frames (tests/test_processing.py checks that `pixel_values_videos` equals it on the sampled frames)."
        )

    def test_get_num_multimodal_tokens_matches_processor_call_video(self):
        """The mixin's check. Newer mixins (transformers 5.25) also reload the processor with a `video_processor=`
        sub-processor of another `size`, which this processor has not: there the call's `size`, flat and nested, is
        checked on this processor (a frame's token count is fixed by the crop, so it must not change)."""
        check = getattr(self, "_check_num_video_tokens_match_processor_call", None)
        if check is None:
            return super().test_get_num_multimodal_tokens_matches_processor_call_video()
        processor, size = self.get_processor(), {"shortest_edge": 16}
        videos = [np.asarray(video) for video in self.prepare_videos_inputs(batch_size=2)]
        check(processor, videos)
        check(processor, videos, size=size)
        check(processor, videos, videos_kwargs={"size": size})

    def test_init_arguments_not_in_processor_kwargs(self):
        """The mixin's check, less `num_frames` / `fps`: the processor's saved frame sampling, which a call may
        override, as the video processors that the mixin's docstring exempts do (this processor is ours)."""
        overlap = (
            self._get_explicit_arguments(self.processor_class.__init__) & self._get_valid_processor_kwargs_names()
        )
        self.assertEqual(overlap - {"image_seq_length"}, {"num_frames", "fps"})

    def test_get_num_vision_tokens(self):
        """As Llava's test: the helper vLLM uses, here for both modalities."""
        processor = self.get_processor()
        output = processor._get_num_multimodal_tokens(image_sizes=[(100, 100), (300, 100)], audio_lengths=[10, 10**6])
        self.assertEqual(output["num_image_tokens"], [16, 16])
        self.assertEqual(output["num_image_patches"], [1, 1])
        self.assertEqual(output["num_audio_tokens"], [64, 64])

    def test_special_mm_token_truncation(self):
        """As Llava's test: truncation that would cut media tokens is an error, not a silent cut."""
        processor = self.get_processor()
        text = self.prepare_text_inputs(batch_size=2, modalities=["image", "audio"])
        images = self.prepare_images_inputs(batch_size=2)
        audio = self.prepare_audio_inputs(batch_size=2)
        processor(text=text, images=images, audio=audio, truncation=None, padding=True, return_tensors="pt")
        with self.assertRaises(ValueError):
            processor(text=text, images=images, audio=audio, truncation=True, padding=True, max_length=5)
