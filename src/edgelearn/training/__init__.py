"""Deep training for when frozen features are not enough: one loop (:func:`fit`), fine-tuning
(transfer learning) on it."""

from edgelearn.training.finetune import STRATEGIES, finetune
from edgelearn.training.loop import fit

__all__ = ["STRATEGIES", "finetune", "fit"]
