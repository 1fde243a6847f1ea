"""Calibrated confidence: expected calibration error and temperature scaling (Guo et al., 2017).

A learner's softmax is a score, not yet a probability: SLDA's is sharply over-confident. One
temperature ``T``, fitted on held-out labelled examples by minimising the negative log-likelihood
of ``softmax(logits / T)``, fixes most of that without changing any decision.
"""

import numpy as np

from edgelearn.learners.base import softmax


def expected_calibration_error(proba: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the bin-weighted gap between confidence and accuracy over ``n_bins`` equal-width bins.

    ``proba`` is each prediction's confidence (``(n,)``) or the full ``(n, k)`` matrix (its row
    maxima are used); ``correct`` says which predictions were right.

    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0])), 3)
    0.1
    """
    proba = np.asarray(proba, np.float64)
    conf = proba.max(axis=1) if proba.ndim == 2 else proba
    correct = np.asarray(correct, np.float64)
    if len(conf) == 0:
        return 0.0
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    gap = 0.0
    for b in np.unique(bins):
        sel = bins == b
        gap += sel.sum() * abs(conf[sel].mean() - correct[sel].mean())
    return float(gap / len(conf))


def reliability(proba: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Per-bin confidence, accuracy and count: the data of a reliability diagram."""
    conf = np.asarray(proba, np.float64)
    conf = conf.max(axis=1) if conf.ndim == 2 else conf
    correct = np.asarray(correct, np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": int((bins == b).sum()),
             "confidence": float(conf[bins == b].mean()), "accuracy": float(correct[bins == b].mean())}
            for b in range(n_bins) if (bins == b).any()]


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(np.asarray(logits, np.float64) / temperature)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, lo: float = 1e-2, hi: float = 1e3) -> float:
    """The ``T`` in ``[lo, hi]`` minimising the NLL of ``softmax(logits / T)`` (golden-section search
    on log T; the NLL is convex in 1/T). ``y`` are column indices of the true classes.

    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(500, 3)) * 8          # far too sharp for random labels
    >>> fit_temperature(logits, rng.integers(0, 3, 500)) > 10
    True
    """
    y = np.asarray(y, np.intp)
    if len(y) == 0:
        raise ValueError("need at least one labelled example to fit a temperature")
    a, b = np.log(lo), np.log(hi)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, y, np.exp(c)), nll(logits, y, np.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, y, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, y, np.exp(d))
    return float(np.exp((a + b) / 2))


class OnlineTemperature:
    """Prequential calibration for a learner that keeps learning: each labelled example is scored
    *before* it is learned (so it is held out for the model of that moment), its logits go into a
    bounded buffer, and the temperature is refitted on the buffer as it grows.

    The buffer is short (``capacity`` recent examples) because the model keeps changing: an early,
    over-confident model's mistakes would otherwise set the temperature for a later, better one
    (``benchmarks/station.py`` measures it). Rows have as many logits as there were classes then;
    shorter rows are padded with ``-inf`` (probability 0 for classes that did not exist yet).
    """

    def __init__(self, capacity: int = 200, min_examples: int = 20):
        self.capacity, self.min_examples = capacity, min_examples
        self.rows: list[np.ndarray] = []
        self.targets: list[int] = []
        self.temperature: float | None = None
        self._since_fit = 0

    def observe(self, logits: np.ndarray, targets) -> float | None:
        """Add pre-learning ``logits`` and true column indices; returns the temperature (``None``
        until ``min_examples`` were seen). Refits when the buffer changed by 10 % since the last fit."""
        self.rows.extend(np.asarray(logits, np.float64))
        self.targets.extend(int(t) for t in targets)
        del self.rows[:-self.capacity], self.targets[:-self.capacity]
        self._since_fit += len(targets)
        n = len(self.targets)
        if n >= self.min_examples and (self.temperature is None or self._since_fit >= max(10, n // 10)):
            width = max(len(r) for r in self.rows)
            padded = np.full((n, width), -np.inf)
            for i, r in enumerate(self.rows):
                padded[i, :len(r)] = r
            self.temperature = fit_temperature(padded, np.array(self.targets))
            self._since_fit = 0
        return self.temperature
