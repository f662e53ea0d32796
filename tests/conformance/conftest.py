"""Put transformers' own common test mixins (fetched from the pinned sdist, never committed) on the import path.

`make build/transformers-tests/.fetched` downloads the transformers source distribution of the installed version
and extracts only its `tests/` folder. That folder is exposed here as the package `transformers_tests`, whose
`__path__` also holds `standins/`: the three helper modules `test_modeling_common` / `test_configuration_common`
import but the sdist does not ship (see `standins/README.md`). Test files import the mixins through
`common_tests("test_modeling_common")` (or `from transformers_tests.test_modeling_common import ...`).
"""

import importlib
import os
import sys
import types
from contextlib import ExitStack
from pathlib import Path
from unittest.mock import patch

import pytest
import transformers

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_RULE = "build/transformers-tests/.fetched"
FETCHED = REPO_ROOT / "build" / "transformers-tests"
FETCHED_TESTS = Path(os.environ.get("TRANSFORMERS_TESTS_DIR", FETCHED / "tests"))
TEST_DEPS = FETCHED / "deps"  # `parameterized`, imported by the mixins, installed there by the same make rule
STANDINS = Path(__file__).resolve().parent / "standins"
PACKAGE = "transformers_tests"


def _install_package() -> None:
    if PACKAGE in sys.modules:
        return
    if not (FETCHED_TESTS / "test_modeling_common.py").is_file():
        raise pytest.UsageError(
            f"transformers' common tests are not at `{FETCHED_TESTS}`. Fetch them once with `make {FETCH_RULE}` "
            f"(pip downloads the transformers=={transformers.__version__} sdist and extracts its tests/), or point "
            "`TRANSFORMERS_TESTS_DIR` at an extracted `tests/` folder."
        )
    if TEST_DEPS.is_dir() and str(TEST_DEPS) not in sys.path:
        sys.path.append(str(TEST_DEPS))
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(FETCHED_TESTS), str(STANDINS)]
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package


def listed_as_transformers_model(model_type: str, **names: str) -> ExitStack:
    """Enter our classes in transformers' static model-name tables for the duration of a test class.

    The common mixins decide what a class is (a base model, an image-text-to-text model...) from those tables,
    e.g. `test_training` skips classes listed in `MODEL_MAPPING_NAMES` and `test_get_image_features_pooler_output`
    runs only on classes in `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`. `AutoModel.register` knows our classes but
    does not write those tables, so without this the mixins would train a base model and skip checks meant for us.
    `names` maps a table name of `transformers.models.auto.modeling_auto` to the class name.
    """
    from transformers.models.auto import modeling_auto

    stack = ExitStack()
    for table, class_name in names.items():
        stack.enter_context(patch.dict(getattr(modeling_auto, table), {model_type: class_name}))
    return stack


def common_tests(name: str) -> types.ModuleType:
    """Import one of transformers' common test modules, e.g. `common_tests("test_processing_common")`."""
    _install_package()
    return importlib.import_module(f"{PACKAGE}.{name}")


_install_package()
