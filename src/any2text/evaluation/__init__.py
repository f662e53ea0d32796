"""Evaluation: registered benchmarks (rows -> template -> predict -> metric), packaged `evaluate` metrics, one runner.

python -m any2text.evaluation.evaluate --model ckpt/ --benchmark vqav2 --output_dir eval/ --limit 100
"""

from .benchmarks import BENCHMARKS, Benchmark, EvalItem, Predictor, get_benchmark, register_benchmark
from .metrics import METRIC_NAMES, load_metric
from .predictors import Generate, ScorePairs, pair_scores

__all__ = [
    "BENCHMARKS",
    "METRIC_NAMES",
    "Benchmark",
    "EvalItem",
    "Generate",
    "Predictor",
    "ScorePairs",
    "get_benchmark",
    "load_metric",
    "pair_scores",
    "register_benchmark",
]
