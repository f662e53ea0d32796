"""Evaluation: benchmarks (row -> template prompt + references), packaged `evaluate` metrics, the runner.

python -m any2text.evaluation.evaluate --model ckpt/ --benchmark vqav2 --output_dir eval/ --limit 100
"""

from .benchmarks import BENCHMARKS, Benchmark, EvalItem, get_benchmark
from .metrics import METRIC_NAMES, load_metric

__all__ = ["BENCHMARKS", "METRIC_NAMES", "Benchmark", "EvalItem", "get_benchmark", "load_metric"]
