"""Streaming linear discriminant analysis (deep SLDA, Hayes & Kanan, CVPR-W 2020).

Running class means and one shared within-class scatter matrix. Unlike the paper's update
(which weights by the total count), the scatter here is updated with Chan's exact formula per
class, so chunked training, one-at-a-time training and merging of sites all give the same model.

Two choices differ from the paper's defaults because the edge regime differs (a few hundred
examples in 1280 dimensions, not ImageNet's million): the covariance is shrunk toward a *scaled*
identity ``tr(Sigma)/d * I`` (scale-free, so one default fits every backbone) with a strong
default of 0.5, and features are L2-normalised first. On imagenette (100 images per class)
shrinkage 1e-4 gives 73 % at 96 px; 0.5 with normalisation gives 90 % (benchmarks/dicla.py).
"""

from functools import lru_cache

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve, cholesky, solve_triangular

from edgelearn.learners.base import UNKNOWN_PARAMS, Learner, Param, chan_update, normalized_gradient


@lru_cache(maxsize=4)
def _upper(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the upper triangle of a d x d matrix (made once per width)."""
    return np.triu_indices(d)


class StreamingLDA(Learner):
    """Linear discriminant with a shared, shrunk covariance.

    Parameters
    ----------
    shrinkage : ``Sigma' = (1 - shrinkage) * Sigma + shrinkage * tr(Sigma)/d * I`` before inversion.
    normalize : L2-normalise each feature vector before learning and predicting.
    unknown_threshold, unknown_label : ``predict`` answers ``unknown_label`` below this top probability.

    Examples
    --------
    >>> slda = StreamingLDA().partial_fit([[1, 0], [1, 0.2], [0.1, 1], [0, 1]], [0, 0, 1, 1])
    >>> slda.predict([[1, 0.1], [0.2, 1]]).tolist()
    [0, 1]
    """

    kind = "slda"
    _arrays = ("counts_", "means_", "scatter_")
    _params = {"shrinkage": Param(float, 0, 1), "normalize": Param(bool), **UNKNOWN_PARAMS}

    def __init__(self, shrinkage: float = 0.5, *, normalize: bool = True,
                 unknown_threshold: float | None = None, unknown_label: str | None = None):
        self.shrinkage = shrinkage
        self.normalize = normalize
        self.unknown_threshold = unknown_threshold
        self.unknown_label = unknown_label

    def _grow(self, before: int) -> None:
        d, new = self.n_features_in_, len(self.classes_) - before
        if before == 0:
            self.counts_ = np.zeros(0)
            self.means_ = np.zeros((0, d))
            self.scatter_ = np.zeros((d, d))
            self._pending, self._pending_rows = [], 0
        self.counts_ = np.concatenate([self.counts_, np.zeros(new)])
        self.means_ = np.vstack([self.means_, np.zeros((new, d))])
        self._invalidate()

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        if not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        if self.normalize:
            return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return X

    def _learn(self, X: np.ndarray, idx: np.ndarray) -> None:
        X = self._prepare(X)
        classes = np.unique(idx)
        n_b = np.array([(idx == c).sum() for c in classes], dtype=float)
        mean_b = np.stack([X[idx == c].mean(axis=0) for c in classes])
        centred = X - mean_b[np.searchsorted(classes, idx)]  # zero rows for classes seen once here
        self._combine(classes, n_b, mean_b, centred if (n_b > 1).any() else None)

    def _combine(self, classes, n_b, mean_b, rows=None, scatter_b=None) -> None:
        """Chan's update. The scatter gains ``rows.T @ rows`` (+ ``scatter_b``) and, per class,
        ``weight * outer(delta, delta)``; rank-k terms are queued and folded in by one matrix
        product (:meth:`_flush`), so a camera's one-example updates cost O(d), not O(d^2)."""
        n, mean, delta, weight = chan_update(self.counts_[classes], self.means_[classes], n_b, mean_b)
        self._queue(delta * np.sqrt(weight)[:, None])
        if rows is not None:
            self._queue(rows)
        if scatter_b is not None:
            self.scatter_ += scatter_b
        self.counts_[classes], self.means_[classes] = n, mean
        self._invalidate()

    def _queue(self, rows: np.ndarray) -> None:
        self._pending.append(rows)
        self._pending_rows += len(rows)
        if self._pending_rows >= 256:
            self._flush()

    def _flush(self) -> None:
        """Fold the queued rank-k terms into ``scatter_`` (exact; called before it is read)."""
        if self._pending:
            R = np.vstack(self._pending)
            self.scatter_ += R.T @ R
        self._pending, self._pending_rows = [], 0

    def _sync(self) -> None:
        self._flush()

    def _merge_one(self, other: "StreamingLDA", index_map: np.ndarray) -> None:
        other._flush()
        self._combine(index_map, other.counts_, other.means_, scatter_b=other.scatter_)

    def state_dict(self) -> dict:
        """The scatter matrix is symmetric: only its upper triangle travels (half the bytes)."""
        state = super().state_dict()
        if "arrays" in state:
            state["arrays"] = {**state["arrays"], "scatter_": self.scatter_[_upper(self.n_features_in_)]}
        return state

    def load_state_dict(self, state: dict) -> "StreamingLDA":
        self._pending, self._pending_rows = [], 0
        arrays = state.get("arrays")
        if "classes" in state:  # an empty learner has no arrays
            d = int(state["n_features"])
            packed = np.asarray(arrays["scatter_"], dtype=np.float64)
            if packed.shape != (d * (d + 1) // 2,):
                raise ValueError(f"scatter_ should hold {d * (d + 1) // 2} values for {d} features, "
                                 f"got shape {packed.shape}")
            scatter = np.empty((d, d))
            scatter[_upper(d)] = packed
            scatter.T[_upper(d)] = packed  # the lower triangle, mirrored
            state = {**state, "arrays": {**arrays, "scatter_": scatter}}
        return super().load_state_dict(state)

    @classmethod
    def _array_specs(cls, n_classes: int, n_features: int) -> dict:
        d = n_features
        return {"counts_": (np.float64, (n_classes,)), "means_": (np.float64, (n_classes, d)),
                "scatter_": (np.float64, (d * (d + 1) // 2,))}  # the packed upper triangle

    @classmethod
    def _values_problem(cls, arrays: dict, n_classes: int) -> str | None:
        return "negative class counts" if (arrays["counts_"] < 0).any() else None

    def _invalidate(self) -> None:
        self._linear = self._chol = None

    def _covariance(self) -> np.ndarray:
        """The shrunk shared covariance of the current state."""
        self._flush()
        d, n = self.n_features_in_, max(self.counts_.sum(), 1)
        target = max(np.trace(self.scatter_) / n / d, 1e-12)
        cov = self.scatter_ * ((1 - self.shrinkage) / n)
        cov[np.diag_indices(d)] += self.shrinkage * target
        return cov

    def _cholesky(self) -> np.ndarray:
        """Lower Cholesky factor of the covariance, computed once per change (familiarity whitens with it)."""
        if getattr(self, "_chol", None) is None:
            cov = self._covariance()
            cov[np.diag_indices_from(cov)] += 1e-9 * max(np.trace(cov) / len(cov), 1e-12)  # singular without shrinkage
            self._chol = cholesky(cov, lower=True, check_finite=False)
        return self._chol

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear classifier ``(W, b)`` of the current state, computed once per change."""
        if getattr(self, "_linear", None) is None:
            cov = self._covariance()
            W = solve_spd(cov, self.means_.T).T  # (C, D) = means @ inv(cov)
            b = -0.5 * (W * self.means_).sum(axis=1)
            self._linear = (W.astype(np.float32), b.astype(np.float32))
        return self._linear

    def _frozen_state(self) -> dict:
        """Predicting reads only ``(W, b)`` and familiarity the Cholesky factor: the snapshot carries those,
        not the scatter."""
        W, b = self._weights()
        return {"_linear": (W, b), "_chol": self._cholesky(), "counts_": self.counts_.copy(),
                "means_": self.means_.copy(), "scatter_": None, "_pending": None}

    def _logit_gradient(self, X: np.ndarray, c: int) -> np.ndarray:
        w = self._weights()[0][c].astype(np.float64)
        return normalized_gradient(X, w) if self.normalize else np.broadcast_to(w, X.shape).copy()

    def _familiarity(self, X: np.ndarray) -> np.ndarray:
        """Minus the Mahalanobis distance to the nearest class mean under the shrunk shared covariance:
        ``d^2 = x'Px - 2 max_c (w_c x + b_c)`` with the discriminant's own ``w_c = P m_c``, ``b_c = -m_c'P m_c / 2``."""
        scores = self._scores(X)
        whitened = solve_triangular(self._cholesky(), self._prepare(X).T, lower=True, check_finite=False)
        return -np.sqrt(np.maximum((whitened**2).sum(axis=0) - 2 * scores.max(axis=1), 0))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        W, b = self._weights()
        return (self._prepare(X).astype(np.float32) @ W.T + b).astype(np.float64)


    def _merge_class(self, s: int, t: int) -> None:
        """Chan's combination: the shared scatter gains the between-class term of the two means."""
        self._combine(np.array([t]), self.counts_[[s]], self.means_[[s]])

    def _forget_class(self, c: int) -> None:
        """The shared scatter is a sum over all classes: a class's share cannot be taken out of it. It is
        kept as an estimate of the within-class spread, rescaled to the remaining examples, so the covariance
        (and every other class's logits) stays as learned; replaying the examples without the class (what a
        station's undo does) is exact."""
        self._flush()
        total = self.counts_.sum()
        self.scatter_ *= (total - self.counts_[c]) / total if total > 0 else 0.0

    def _remove_class(self, c: int) -> None:
        self.counts_, self.means_ = np.delete(self.counts_, c), np.delete(self.means_, c, axis=0)

def solve_spd(A: np.ndarray, B: np.ndarray, max_steps: int = 4) -> np.ndarray:
    """``inv(A) @ B`` for a symmetric positive definite ``A`` (a shrunk covariance) to float64
    accuracy in about half the time of ``np.linalg.solve``: a float32 Cholesky factor, then
    iterative refinement with float64 residuals until the correction is below float32 resolution
    (two steps for the default shrinkage). Falls back to the float64 solve where float32 is not enough."""
    try:
        factor = cho_factor(A.astype(np.float32), check_finite=False)
    except LinAlgError:  # not positive definite in float32 (little or no shrinkage)
        return np.linalg.solve(A, B)
    X = np.zeros_like(B, dtype=np.float64)
    for _ in range(max_steps):
        step = cho_solve(factor, (B - A @ X).astype(np.float32), check_finite=False)
        X += step
        if np.abs(step).max() <= 1e-7 * np.abs(X).max():
            return X
    return np.linalg.solve(A, B)  # refinement does not converge: too ill-conditioned for float32
