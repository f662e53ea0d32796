"""Stand-in: transformers' `tests/utils/test_configuration_utils.py` is not in the sdist (see ../README.md)."""

# Read only by `ConfigTester.check_config_arguments_init`, which skips composite configs before using it.
config_common_kwargs: dict = {}
