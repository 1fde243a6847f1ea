"""Module A: frozen pretrained feature extractors (torchvision models by name, local weight files)."""

from edgelearn.backbones.backbone import Backbone, Preprocessing, build_backbone
from edgelearn.backbones.registry import list_backbones, register_backbone
from edgelearn.backbones.weights import WEIGHTS_ENV

__all__ = ["Backbone", "Preprocessing", "WEIGHTS_ENV", "build_backbone", "list_backbones", "register_backbone"]
