"""transformers' own `ProcessorTesterMixin` (from the pinned sdist) run against `LlamaVisionAudioProcessor`.

Written on the pattern of transformers' `tests/models/llava/test_processing_llava.py` and
`tests/models/gemma3n/test_processing_gemma3n.py`, with tiny local parts instead of Hub ids. Three adaptations, all
about inputs, none about what is checked:

- transformers' test clips carry no sampling rate, and this processor never guesses one (a wrong guess silently
  ruins every clip). The mixin's per-call audio options (`MODALITY_TEST_SPECS["audio"]["call_time_kwargs"]`) get
  the rate a user passes, `sampling_rate=`, and the processors of `get_processor()` (the ones the mixin then calls
  with bare clips, as vLLM does) carry the serving engines' promise `audio_at_feature_extractor_rate=True` as a
  processor default.
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
from unittest.mock import patch

import numpy as np
import soundfile
from PIL import Image
from transformers import AutoTokenizer, ClapFeatureExtractor, CLIPImageProcessor

from any2text import LlamaVisionAudioProcessor
from any2text.builders.presets import tiny_tokenizer_path
from any2text.models.llama_vision_audio.processing_llama_vision_audio import RATE_PROMISE

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
from transformers_tests.test_processing_common import MODALITY_TEST_SPECS, ProcessorTesterMixin  # noqa: E402

SAMPLING_RATE = 48000  # ClapFeatureExtractor's


class LlamaVisionAudioProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = LlamaVisionAudioProcessor
    # The mixin's knob for longer media spans: a clip is 64 tokens here, more than its default of 76 minus the text.
    audio_unstructured_max_length = 100

    @classmethod
    def setUpClass(cls):
        audio_spec = MODALITY_TEST_SPECS["audio"]
        calls = {**audio_spec["call_time_kwargs"], "sampling_rate": SAMPLING_RATE}
        cls._audio_spec_patch = patch.dict(audio_spec, {"call_time_kwargs": calls})
        cls._audio_spec_patch.start()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls._audio_spec_patch.stop()

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
        return ClapFeatureExtractor()

    @staticmethod
    def prepare_processor_dict():
        return {"image_seq_length": 16, "audio_seq_length": 64}

    def get_processor(self, use_tiny_ckpt=True):
        processor = super().get_processor(use_tiny_ckpt)
        processor.audio_kwargs = {RATE_PROMISE: True}
        return processor

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

    def test_clips_without_a_rate_are_refused_by_a_plain_processor(self):
        """The adaptation above must not hide the contract: a processor loaded as users load it needs the rate."""
        processor = self.processor_class.from_pretrained(self.tmpdirname)
        with self.assertRaisesRegex(ValueError, "`sampling_rate` is required"):
            processor(text=self.prepare_text_inputs(modalities="audio"), audio=self.prepare_audio_inputs())
