"""Explanations: calibrated confidence, representative images, heat maps (after Maschler et al.; Rieder et al.)."""

from edgelearn.explain.calibration import expected_calibration_error, fit_temperature, reliability
from edgelearn.explain.heatmap import HeatMapper, deletion_curve, overlay, png_bytes
from edgelearn.explain.representatives import METHODS, get_similarity, nearest, pick_diverse

__all__ = ["METHODS", "HeatMapper", "deletion_curve", "expected_calibration_error", "fit_temperature",
           "get_similarity", "nearest", "overlay", "pick_diverse", "png_bytes", "reliability"]
