"""Explanations: calibrated confidence, representative images, heat maps (after Maschler et al.; Rieder et al.).

Names are imported on first use (PEP 562): calibration needs numpy only, heat maps need PyTorch.
"""

import importlib

_WHERE = {
    "METHODS": "edgelearn.explain.representatives",
    "HeatMapper": "edgelearn.explain.heatmap",
    "deletion_curve": "edgelearn.explain.heatmap",
    "expected_calibration_error": "edgelearn.explain.calibration",
    "fit_temperature": "edgelearn.explain.calibration",
    "get_similarity": "edgelearn.explain.representatives",
    "nearest": "edgelearn.explain.representatives",
    "overlay": "edgelearn.explain.heatmap",
    "pick_diverse": "edgelearn.explain.representatives",
    "png_bytes": "edgelearn.explain.heatmap",
    "reliability": "edgelearn.explain.calibration",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'edgelearn.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # once: later lookups skip this function
    return value
