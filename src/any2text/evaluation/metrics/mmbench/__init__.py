"""Packaged `evaluate` module; this file only makes setuptools ship the folder. Load it with `load_metric`."""
