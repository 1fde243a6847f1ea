"""Deep training for when frozen features are not enough: one loop (:func:`fit`), fine-tuning
(transfer learning) on it, in one process or across several (:mod:`edgelearn.training.distributed`)."""

from edgelearn.training.distributed import MODES, TrainingError
from edgelearn.training.finetune import STRATEGIES, train
from edgelearn.training.loop import fit

__all__ = ["MODES", "STRATEGIES", "TrainingError", "fit", "train"]
