"""Detection quality with torchmetrics (COCO's evaluation, pycocotools): mAP@0.5 (Pascal VOC's and
Mottakin's figure), COCO's mAP@[.5:.95], and the AP of each class; and each class's precision and recall at
the score threshold ``detect`` uses by default."""

import os

from torchmetrics.detection import MeanAveragePrecision

from edgelearn.detection.models import Detector
from edgelearn.detection.thresholds import per_class
from edgelearn.detection.train import TrunkMaps, detections, trunk_maps
from edgelearn.detection.voc import VOCDataset


def detections_from_maps(detector: Detector, maps: TrunkMaps, batch_size: int = 32) -> list[dict]:
    """The detector's boxes for every image of ``maps`` (first view), in the input frame."""
    return detections(detector, maps.first_view(), batch_size)


def evaluate(detector: Detector, data: str | os.PathLike | VOCDataset | TrunkMaps, *, batch_size: int = 32,
             progress: bool = False) -> dict:
    """mAP@0.5, mAP@[.5:.95] and per-class AP of ``detector`` on a VOC folder (objects of classes it
    does not know are left out; its false alarms on their images count) or on cached trunk maps (the same);
    ``at_threshold``: each class's precision, recall and F1 at its threshold (chosen in training, else 0.5)."""
    if not isinstance(data, TrunkMaps):
        dataset = data if isinstance(data, VOCDataset) else VOCDataset(data, classes=detector.classes,
                                                                       ignore_other_classes=True)
        data = trunk_maps(detector, dataset, progress=progress)
    elif data.classes != detector.classes:
        data = data.select(data.images, detector.classes)
    found = detections_from_maps(detector, data, batch_size)
    truth = data.targets[0]
    at_50 = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
    coco = MeanAveragePrecision(iou_type="bbox")
    for metric in (at_50, coco):
        metric.update(found, truth)
    a, c = at_50.compute(), coco.compute()
    ids = a["classes"].reshape(-1).tolist()
    ap_50 = {detector.classes[k - 1]: round(float(ap), 4) for k, ap in zip(ids, a["map_per_class"].reshape(-1),
                                                                              strict=True)
                 if 0 < k <= len(detector.classes) and ap >= 0}
    return {"images": len(truth), "map_50": round(float(a["map"]), 4), "map": round(float(c["map"]), 4),
            "ap_50": ap_50,
            "at_threshold": per_class(found, truth, detector.classes, detector.thresholds)}
