"""Deep training for when frozen features are not enough: one loop (:func:`fit`), fine-tuning
(transfer learning) on it, in one process or across several (:mod:`edgelearn.training.distributed`),
all set by one :class:`TrainConfig` and started by one :func:`train`."""

from edgelearn.training.config import MODES, STRATEGIES, TrainConfig
from edgelearn.training.distributed import TrainingError
from edgelearn.training.loop import fit
from edgelearn.training.run import train

__all__ = ["MODES", "STRATEGIES", "TrainConfig", "TrainingError", "fit", "train"]
