"""Class-incremental learning runs and their evaluation (top-1, top-k, per class)."""

from collections.abc import Sequence

import numpy as np

from edgelearn.data.streams import class_incremental_steps
from edgelearn.explain.calibration import expected_calibration_error
from edgelearn.recognizer import Recognizer, concept_prefix

CONSOLIDATION = ("none", "after_each_step", "final")


def evaluate_features(recognizer: Recognizer, features: np.ndarray, labels: Sequence[str], *,
                      top_k: int = 5, level: int | None = None) -> dict:
    """Top-1 and top-k accuracy, overall and per class, and the expected calibration error of the
    top-1 confidence, of ``recognizer`` on labelled features.

    Labels the recognizer never learned count as errors (they are in the per-class table too).
    """
    truth = np.array([concept_prefix(str(y), level) for y in labels], dtype=object)
    names, proba = recognizer.predict_proba(features, level=level)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
    ranked = np.asarray(names, dtype=object)[order]
    hit1 = ranked[:, 0] == truth
    hitk = (ranked == truth[:, None]).any(axis=1)
    per_class = {}
    for c in sorted(set(truth)):
        m = truth == c
        per_class[c] = {"n": int(m.sum()), "accuracy": float(hit1[m].mean()), f"top{top_k}": float(hitk[m].mean())}
    return {"accuracy": float(hit1.mean()), f"top{top_k}": float(hitk.mean()), "n": int(len(truth)),
            "ece": expected_calibration_error(proba, hit1), "per_class": per_class}


def learn_stream(recognizer: Recognizer, features: np.ndarray, labels: Sequence[str], *, n_steps: int = 1,
                 seed: int = 0, consolidation: str = "none", consolidate_kwargs: dict | None = None,
                 test: tuple[np.ndarray, Sequence[str]] | None = None) -> list[dict]:
    """Learn a class-incremental stream of ``n_steps``; each example seen once, in seeded order.

    ``consolidation``: ``none``, ``after_each_step`` or ``final``. With ``test``, the accuracy on
    the test examples of the classes seen so far is recorded after each step.
    """
    if consolidation not in CONSOLIDATION:
        raise ValueError(f"consolidation must be one of {CONSOLIDATION}, got {consolidation!r}")
    labels = np.asarray(labels, dtype=object)
    history = []
    steps = class_incremental_steps(labels, n_steps, seed)
    for number, idx in enumerate(steps, start=1):
        recognizer.learn_features(features[idx], labels[idx])
        last = number == len(steps)
        if consolidation == "after_each_step" or (consolidation == "final" and last):
            recognizer.consolidate(**(consolidate_kwargs or {}))
        record = {"step": number, "classes": len(recognizer.classes), "learner_bytes": recognizer.learner.nbytes,
                  "representations": getattr(recognizer.learner, "n_representations", len(recognizer.classes))}
        if test is not None:
            seen = np.isin(np.asarray(test[1], dtype=object), recognizer.classes)
            if seen.any():
                record["accuracy_seen"] = evaluate_features(recognizer, test[0][seen],
                                                            np.asarray(test[1], dtype=object)[seen])["accuracy"]
        history.append(record)
    return history
