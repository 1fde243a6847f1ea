"""Deep training loops for when frozen features are not enough: fine-tuning (transfer learning)."""

from edgelearn.training.finetune import STRATEGIES, finetune

__all__ = ["STRATEGIES", "finetune"]
