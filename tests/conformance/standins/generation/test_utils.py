"""Stand-in: transformers' `tests/generation/test_utils.py` is not in the sdist (see ../README.md)."""


class GenerationTesterMixin:
    """Empty: `ModelTesterMixin` only checks that generative testers inherit it; generation is covered by ours."""
