"""Moved to :mod:`edgelearn.inspection.export` (kept until the CLI imports from there)."""

from edgelearn.inspection.export import compress_classifier

__all__ = ["compress_classifier"]
