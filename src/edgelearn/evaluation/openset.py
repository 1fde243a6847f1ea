"""Open-set evaluation: does a recognizer tell images of the classes it learned from images of others?

Scores are "higher = more like a known class" (familiarity, or the top probability as a baseline).
AUROC is the probability that a random known image scores above a random unknown one (the Mann-Whitney
rank formula, ties counted half); FPR95 is the share of unknown images let through at the threshold that
keeps 95 % of the known ones.
"""

from collections import Counter
from collections.abc import Sequence

import numpy as np

from edgelearn.recognizer import Recognizer, concept_prefix


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling ``known`` (positives) from ``unknown`` scores."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    ranks = average_ranks(np.r_[known, unknown])[:len(known)]
    return float((ranks.sum() - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the average of their ranks.

    >>> average_ranks(np.array([0.5, 0.1, 0.5, 0.9])).tolist()
    [2.5, 1.0, 2.5, 4.0]
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where each run of equal values begins
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # the mean of ranks starts+1 .. ends
    return ranks


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """Share of ``unknown`` scores at or above the threshold that keeps ``tpr`` of the ``known`` ones."""
    known = np.sort(np.asarray(known, np.float64))
    threshold = known[int(np.floor((1 - tpr) * len(known) + 1e-9))]  # the highest that keeps tpr of them
    return float((np.asarray(unknown) >= threshold).mean())


def separation(known: np.ndarray, unknown: np.ndarray) -> dict:
    return {"auroc": auroc(known, unknown), "fpr95": fpr_at_tpr(known, unknown)}


def learned_mask(recognizer: Recognizer, labels: Sequence[str], level: int | None = None) -> np.ndarray:
    """Which labels (at ``level``) are classes the recognizer learned."""
    learned = {concept_prefix(c, level) for c in recognizer.classes}
    return np.array([concept_prefix(str(y), level) in learned for y in labels], dtype=bool)


def not_learned(labels: Sequence[str], learned: np.ndarray) -> dict:
    """The test classes a model never learned (``learned``: :func:`learned_mask`) and their image counts."""
    counts = Counter(y for y, known in zip(labels, learned, strict=True) if not known)
    return {"classes": sorted(counts), "n": counts.total(), "per_class": dict(sorted(counts.items()))}


def evaluate_open_set(recognizer: Recognizer, known: np.ndarray, labels: Sequence[str], unknown: np.ndarray, *,
                      level: int | None = None) -> dict:
    """Known images (of learned classes, with their ``labels``) against ``unknown`` images (of other classes):
    AUROC and FPR95 of the familiarity and of the top probability (the baseline), closed-set accuracy (the
    known images, no rejection), and accuracy with rejection (all images, using the recognizer's own unknown
    rule: a known image must get its label, an unknown one must be called unknown)."""
    names, proba = recognizer.predict_proba(np.r_[known, unknown], level=level)
    familiarity = recognizer.familiarity(np.r_[known, unknown])
    rejected = recognizer.unknown(proba.max(axis=1), familiarity)
    n = len(known)
    truth = np.array([concept_prefix(str(y), level) for y in labels], dtype=object)
    right = np.asarray(names, dtype=object)[proba[:n].argmax(axis=1)] == truth
    top = proba.max(axis=1)
    return {
        **separation(familiarity[:n], familiarity[n:]),
        "max_probability": separation(top[:n], top[n:]),
        "closed_set_accuracy": float(right.mean()),
        "accuracy_with_rejection": float(np.r_[right & ~rejected[:n], rejected[n:]].mean()),
        "known_rejected": float(rejected[:n].mean()),
        "unknown_accepted": float(1 - rejected[n:].mean()),
        "threshold": recognizer.evidence.threshold,
        "n_known": n,
        "n_unknown": int(len(unknown)),
    }
