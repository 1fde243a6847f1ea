"""Moved to :mod:`edgelearn.evaluation.variants` (kept until the CLI imports from there)."""

from edgelearn.evaluation.variants import VARIANTS, compare_variants

__all__ = ["VARIANTS", "compare_variants"]
