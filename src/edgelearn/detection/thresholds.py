"""Each class's score threshold: the one with the best F1 on held-out pictures (precision and recall of
boxes matched at IoU 0.5), so `detect` shows what is likely right without the user guessing a number.

Detections are matched to true boxes as COCO does: highest score first, each to the unmatched true box
of its class it overlaps most (IoU at least 0.5); the rest are false alarms.
"""

import numpy as np
import torch
from torchvision.ops import box_iou

DEFAULT_THRESHOLD = 0.5  # for a class without held-out evidence (no true box, or no hit at all)
IOU = 0.5


def matches(found: list[dict], truth: list[dict], label: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Class ``label``'s detection scores over all pictures, whether each hit a true box, and the
    number of true boxes. ``found``: per picture boxes, scores, labels; ``truth``: boxes, labels."""
    scores, hits, n_truth = [], [], 0
    for f, t in zip(found, truth, strict=True):
        real = t["boxes"][t["labels"] == label]
        mine = f["labels"] == label
        order = f["scores"][mine].argsort(descending=True)
        boxes, own_scores = f["boxes"][mine][order], f["scores"][mine][order]
        overlap = box_iou(boxes, real) if len(real) else torch.zeros(len(boxes), 0)
        taken = torch.zeros(len(real), dtype=torch.bool)
        for row, score in zip(overlap, own_scores.tolist(), strict=True):
            row = row.masked_fill(taken, -1)
            hit = bool(len(row)) and float(row.max()) >= IOU
            if hit:
                taken[row.argmax()] = True
            scores.append(score)
            hits.append(hit)
        n_truth += len(real)
    return np.array(scores, dtype=float), np.array(hits, dtype=bool), n_truth


def best_f1(scores: np.ndarray, hits: np.ndarray, n_truth: int) -> dict:
    """The threshold (one of the scores) with the highest F1 and its precision and recall; on a tie the
    higher threshold (fewer false alarms). Without a true box or a single hit: :data:`DEFAULT_THRESHOLD`."""
    if not hits.any():
        return at_threshold(scores, hits, n_truth, DEFAULT_THRESHOLD)
    order = np.argsort(-scores, kind="stable")
    ranked, tp = scores[order], np.cumsum(hits[order])
    kept = np.arange(1, len(ranked) + 1)
    precision, recall = tp / kept, tp / max(n_truth, 1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(ranked)),
                   where=precision + recall > 0)
    f1[np.r_[ranked[1:] == ranked[:-1], False]] = -1  # a threshold keeps all detections of its score
    return at_threshold(scores, hits, n_truth, float(ranked[f1.argmax()]))


def at_threshold(scores: np.ndarray, hits: np.ndarray, n_truth: int, threshold: float) -> dict:
    """Precision, recall and F1 of the detections scoring at least ``threshold``."""
    kept = scores >= threshold
    tp = int(hits[kept].sum())
    precision = tp / kept.sum() if kept.any() else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": round(float(precision), 4), "recall": round(float(recall), 4),
            "f1": round(float(f1), 4)}


def per_class(found: list[dict], truth: list[dict], classes: list[str],
              thresholds: dict[str, float] | None = None) -> dict[str, dict]:
    """Each class's threshold, precision, recall and F1: at ``thresholds`` given, else at its best F1."""
    report = {}
    for label, name in enumerate(classes, start=1):
        evidence = matches(found, truth, label)
        report[name] = (best_f1(*evidence) if thresholds is None
                        else at_threshold(*evidence, thresholds.get(name, DEFAULT_THRESHOLD)))
    return report
