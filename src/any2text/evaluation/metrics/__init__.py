"""Metrics shipped as Hugging Face `evaluate` modules inside the package, so they load offline.

Each metric lives in ``metrics/<name>/<name>.py`` (a self-contained `evaluate.Metric` script) and loads with
``evaluate.load(<that path>)``; `load_metric` resolves the path for you::

    >>> from any2text.evaluation.metrics import load_metric
    >>> load_metric("vqa_accuracy").compute(predictions=["Two"], references=[["2"] * 10])
    {'accuracy': 1.0}
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("vqa_accuracy", "mme", "mmbench", "cider", "wer", "exact_match")


def metric_path(name: str) -> Path:
    """Path of the packaged `evaluate` script for metric `name`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric `{name}`; the packaged metrics are {list(METRIC_NAMES)}.")
    return METRICS_DIR / name / f"{name}.py"


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` the packaged metric `name` from its local path (no Hub access); kwargs go to `evaluate.load`."""
    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = ["METRIC_NAMES", "load_metric", "metric_path"]
