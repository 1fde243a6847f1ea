"""Backbone registry: names -> builders of feature extractors (classification head removed).

Every torchvision classification model is available by its torchvision name; projects may add
their own with :func:`register_backbone`. ``tiny`` is a small random CNN for fast tests.
"""

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from edgelearn.errors import WeightsError

Builder = Callable[[], nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder() -> nn.Module`` (a full classifier or a feature extractor)."""

    def add(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return add


def list_backbones() -> list[str]:
    """Names accepted by :func:`~edgelearn.backbones.build_backbone`."""
    return sorted(set(_REGISTRY) | set(torchvision.models.list_models(module=torchvision.models)))


def make_model(name: str) -> nn.Module:
    """An untrained model for ``name`` (random init; weights are loaded by the caller)."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None)
    raise WeightsError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones()[:12])}, …")


def strip_head(model: nn.Module) -> nn.Module:
    """Replace the last ``nn.Linear`` (the classifier) by the identity, leaving pooled features."""
    last = None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, child_name)
    if last is not None:
        setattr(last[0], last[1], nn.Identity())
    return model


@register_backbone("tiny")
def _tiny() -> nn.Module:
    """A 3-conv CNN with 32-d features and a 10-class head: random weights, for tests that must run in seconds."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def seeded(builder: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build with a fixed torch seed so random weights are reproducible (and fingerprintable)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return builder()
