"""Module A: frozen pretrained feature extractors (torchvision models by name, local weight files)."""

from edgelearn.backbones.backbone import Backbone, build_backbone, build_classifier
from edgelearn.backbones.preprocessing import Preprocessing
from edgelearn.backbones.registry import list_backbones, register_backbone
from edgelearn.backbones.weights import WEIGHTS_ENV, Weights, default_weights

__all__ = ["Backbone", "Preprocessing", "WEIGHTS_ENV", "Weights", "build_backbone", "build_classifier",
           "default_weights", "list_backbones", "register_backbone"]
