"""transformers' own `ModelTesterMixin` against `LlamaVisionAudioForSequenceClassification` (the reward model), on the
same tiny image+audio config and inputs as the other classes (`test_modeling_llama_vision_audio`). No
`GenerationTesterMixin`: the class cannot `generate`, and the mixin checks that its testers say so."""

import unittest

from transformers_tests.test_modeling_common import ModelTesterMixin

from any2text import LlamaVisionAudioConfig, LlamaVisionAudioForSequenceClassification

from . import test_modeling_llama_vision_audio as common
from .conftest import listed_as_transformers_model


class LlamaVisionAudioForSequenceClassificationTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LlamaVisionAudioForSequenceClassification,)
    skip_test_audio_features_output_shape = True  # as for the other classes: CLAP's output is a grid
    _is_composite = True

    @classmethod
    def setUpClass(cls):
        cls.listed = listed_as_transformers_model(
            LlamaVisionAudioConfig.model_type,
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES="LlamaVisionAudioForSequenceClassification",
        )

    @classmethod
    def tearDownClass(cls):
        cls.listed.close()

    def setUp(self):
        self.model_tester = common.LlamaVisionAudioModelTester(self)

    test_mismatching_num_media_tokens = common.LlamaVisionAudioModelTest.test_mismatching_num_media_tokens
    test_training_gradient_checkpointing = common.LlamaVisionAudioModelTest.test_training_gradient_checkpointing
    test_training_gradient_checkpointing_use_reentrant_false = (
        common.LlamaVisionAudioModelTest.test_training_gradient_checkpointing_use_reentrant_false
    )
    test_training_gradient_checkpointing_use_reentrant_true = (
        common.LlamaVisionAudioModelTest.test_training_gradient_checkpointing_use_reentrant_true
    )
