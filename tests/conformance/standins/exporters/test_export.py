"""Stand-in: transformers' `tests/exporters/test_export.py` is not in the sdist (see ../README.md)."""


class ExportTesterMixin:
    """Empty base of `ModelTesterMixin`: no `torch.export` tests run."""
