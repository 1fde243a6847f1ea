"""Evaluation: class-incremental learning runs (:mod:`.stream`) and the comparison of module A's
runtime variants (:mod:`.variants`, imported on demand: it builds backbones)."""

from edgelearn.evaluation.stream import CONSOLIDATION, evaluate_features, learn_stream

__all__ = ["CONSOLIDATION", "evaluate_features", "learn_stream"]
