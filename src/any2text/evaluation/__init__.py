"""Evaluation: benchmarks (row -> prompt + references), packaged `evaluate` metrics, batched generation, runner.

python -m any2text.evaluation.evaluate --model ckpt/ --benchmark vqav2 --output_dir eval/ --limit 100
"""

from .benchmarks import BENCHMARKS, Benchmark, EvalItem, get_benchmark
from .generation import generate_batch
from .metrics import METRIC_NAMES, load_metric

__all__ = ["BENCHMARKS", "METRIC_NAMES", "Benchmark", "EvalItem", "generate_batch", "get_benchmark", "load_metric"]
