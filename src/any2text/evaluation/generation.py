"""Kept only for `any2text.demo` / `any2text.demo_dpo` until they import `any2text.inference`; delete then."""

from ..inference import generate_batch

__all__ = ["generate_batch"]
