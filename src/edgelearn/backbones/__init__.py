"""Module A: frozen pretrained feature extractors (torchvision models by name, local weight files)."""

from edgelearn.backbones.backbone import Backbone, Preprocessing, build_backbone, build_classifier
from edgelearn.backbones.registry import list_backbones, register_backbone
from edgelearn.backbones.weights import WEIGHTS_ENV

__all__ = ["Backbone", "Preprocessing", "WEIGHTS_ENV", "build_backbone", "build_classifier", "list_backbones",
           "register_backbone"]
