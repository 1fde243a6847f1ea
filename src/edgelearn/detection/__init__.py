"""Object detection with incremental new classes (Mottakin): SSDlite and RetinaNet on our MobileNetV2."""

from edgelearn.detection.models import ARCHITECTURES, Detector, build_detector, load_detector
from edgelearn.detection.voc import VOCDataset, parse_annotation

__all__ = ["ARCHITECTURES", "Detector", "VOCDataset", "build_detector", "load_detector", "parse_annotation"]
