"""Explanations: calibrated confidence, representative images, heat maps (after Maschler et al.; Rieder et al.).

Names are imported on first use (PEP 562): calibration needs numpy only, heat maps need PyTorch.
"""

from edgelearn.lazy import lazy_attributes

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


__getattr__ = lazy_attributes(__name__, _WHERE)
