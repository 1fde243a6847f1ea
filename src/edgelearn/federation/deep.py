"""Kept only for ``edgelearn.cli`` until its split lands: it imports ``STRATEGIES`` from here. Remove this file
once the CLI imports :mod:`edgelearn.federation.training.strategies` instead."""

from edgelearn.federation.training.strategies import STRATEGIES

__all__ = ["STRATEGIES"]
