"""Module A: frozen pretrained feature extractors (torchvision models by name, local weight files, bundles).

Names are imported on first use (PEP 562): a bundle (:class:`BundleBackbone`) builds without PyTorch.
"""

import os

from edgelearn.backbones.weights import WEIGHTS_ENV, Weights, default_weights
from edgelearn.errors import ParameterError, WeightsError
from edgelearn.lazy import lazy_attributes

_WHERE = {
    "Backbone": "edgelearn.backbones.backbone",
    "BundleBackbone": "edgelearn.backbones.bundle",
    "Preprocessing": "edgelearn.backbones.preprocessing",
    "build_classifier": "edgelearn.backbones.backbone",
    "export_bundle": "edgelearn.backbones.bundle",
    "list_backbones": "edgelearn.backbones.registry",
    "register_backbone": "edgelearn.backbones.registry",
}


def build_backbone(name: str = "mobilenet_v2", *, weights: str | os.PathLike | None = None,
                   input_size: int | None = None, precision: str | None = None, **options):
    """Build a frozen feature extractor: see :func:`edgelearn.backbones.backbone.build_backbone`. A bundle
    (``weights="NAME.edgebundle"``, from ``edgelearn export-backbone``) gives a :class:`BundleBackbone`,
    which runs on ONNX Runtime without PyTorch (``runtime`` and the other options do not apply to it) at the
    precision it was exported at (``precision``: ``None`` accepts it, another is refused). With PyTorch weights,
    a ``precision`` other than fp32 needs ``runtime="onnx"``."""
    from edgelearn.backbones.bundle import is_bundle, load_bundle_backbone

    chosen = default_weights(weights, name)
    if is_bundle(chosen):
        return load_bundle_backbone(chosen, name, input_size, precision)
    try:
        from edgelearn.backbones.backbone import build_backbone as build_torch_backbone
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "torchvision"):
            raise
        raise WeightsError(f"module A from {chosen!r} needs PyTorch, which this device install does not have: give "
                           f"a bundle (--weights NAME.edgebundle, made on a workstation by edgelearn "
                           f"export-backbone) or install the workstation: pip install 'edgelearn[train]'") from None
    if precision not in (None, "fp32") and str(options.get("runtime", "torch")) == "torch":
        raise ParameterError(f"precision {precision} runs on ONNX Runtime: add --runtime onnx (or give a bundle)")
    return build_torch_backbone(name, weights=chosen, input_size=input_size, precision=precision or "fp32", **options)


__getattr__ = lazy_attributes(__name__, _WHERE)


__all__ = ["WEIGHTS_ENV", "Weights", "build_backbone", "default_weights", *sorted(_WHERE)]
