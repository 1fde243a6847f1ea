"""Streaming linear discriminant analysis (deep SLDA, Hayes & Kanan, CVPR-W 2020).

Running class means and one shared within-class scatter matrix. Unlike the paper's update
(which weights by the total count), the scatter here is updated with Chan's exact formula per
class, so chunked training, one-at-a-time training and merging of sites all give the same model.

Two choices differ from the paper's defaults because the edge regime differs (a few hundred
examples in 1280 dimensions, not ImageNet's million): the covariance is shrunk toward a *scaled*
identity ``tr(Sigma)/d * I`` (scale-free, so one default fits every backbone) with a strong
default of 0.5, and features are L2-normalised first. On imagenette (100 images per class)
shrinkage 1e-4 gives 73 % at 96 px; 0.5 with normalisation gives 90 % (benchmarks/dicla.py).

A class taught with one example has a mean that carries a whole example's noise: in the whitened
space it lies far from the population centre, LDA's bias term ``-|mean|^2/2`` punishes it and it
rarely wins (2-12 % recall of a class taught once). ``norm_prior`` pulls each class's whitened
distance from the population centre toward the count-weighted average distance, as if
``norm_prior`` average examples were added to the class, while keeping the mean's direction:
a rare class is scored like a cosine classifier in SLDA's whitened space (SimpleShot's centring,
Wang et al. 2019), a well-taught one like LDA. On frozen MobileNetV2 features this recalls a class
taught once 1.7-2.8x as often as cosine nearest-class-mean and keeps LDA's closed-set accuracy
(benchmarks/fewshot.py). Everything is a function of counts, means and the shared scatter, so
merging stays exact.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from edgelearn.learners.base import UNKNOWN_PARAMS, Learner, Param, chan_update, normalized_gradient


@dataclass(frozen=True)
class _Shared:
    """What every class's score uses: the covariance's Cholesky factor (float32), the population
    centre, the precision applied to it, and the average whitened distance of a class from it."""

    factor: tuple
    centre: np.ndarray
    p_centre: np.ndarray
    mean_distance: float

    def whiten(self, V: np.ndarray) -> np.ndarray:
        """``V @ inv(cov)`` for rows ``V``."""
        return cho_solve(self.factor, V.T.astype(np.float32), check_finite=False).T.astype(np.float64)


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
    norm_prior : pseudo-examples pulling a class's whitened distance from the population centre toward
        the average class's (0: plain LDA, the scoring before this option existed).
    unknown_threshold, unknown_label : ``predict`` answers ``unknown_label`` below this top probability.

    Examples
    --------
    >>> slda = StreamingLDA().partial_fit([[1, 0], [1, 0.2], [0.1, 1], [0, 1]], [0, 0, 1, 1])
    >>> slda.predict([[1, 0.1], [0.2, 1]]).tolist()
    [0, 1]
    """

    kind = "slda"
    _arrays = ("counts_", "means_", "scatter_")
    _params = {"shrinkage": Param(float, 0, 1), "normalize": Param(bool), "norm_prior": Param(float, 0),
               **UNKNOWN_PARAMS}

    def __init__(self, shrinkage: float = 0.5, *, normalize: bool = True, norm_prior: float = 60.0,
                 unknown_threshold: float | None = None, unknown_label: str | None = None):
        self.shrinkage = shrinkage
        self.normalize = normalize
        self.norm_prior = norm_prior
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
    def check_state(cls, state: dict) -> None:
        """States saved before ``norm_prior`` existed lack it; they load with today's default."""
        params = state.get("params")
        if isinstance(params, dict) and "norm_prior" not in params:
            state = {**state, "params": {**params, "norm_prior": cls().norm_prior}}
        super().check_state(state)

    @classmethod
    def _array_specs(cls, n_classes: int, n_features: int) -> dict:
        d = n_features
        return {"counts_": (np.float64, (n_classes,)), "means_": (np.float64, (n_classes, d)),
                "scatter_": (np.float64, (d * (d + 1) // 2,))}  # the packed upper triangle

    @classmethod
    def _values_problem(cls, arrays: dict, n_classes: int) -> str | None:
        return "negative class counts" if (arrays["counts_"] < 0).any() else None

    def _invalidate(self) -> None:
        self._linear = None

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear classifier ``(W, b)`` of the current state, computed once per change: LDA with
        each class's mean moved along its direction from the centre (see ``norm_prior``)."""
        if getattr(self, "_linear", None) is None:
            self._flush()
            d, n = self.n_features_in_, max(self.counts_.sum(), 1)
            target = max(np.trace(self.scatter_) / n / d, 1e-12)
            cov = self.scatter_ * ((1 - self.shrinkage) / n)
            cov[np.diag_indices(d)] += self.shrinkage * target
            centre = self.counts_ @ self.means_ / n if len(self.classes_) > 1 else np.zeros(d)
            solved, factor = solve_spd(cov, np.vstack([self.means_ - centre, centre]).T, factor=True)
            offsets, p_centre = solved.T[:-1], solved.T[-1]  # inv(cov) @ (mean - centre), inv(cov) @ centre
            distance = np.sqrt(np.maximum((offsets * (self.means_ - centre)).sum(axis=1), 0))
            self._shared = _Shared(factor, centre, p_centre, float(self.counts_ @ distance / n))
            self._offsets, self._distance = offsets, distance
            W, b = self._class_weights(self.counts_, self.means_ - centre, offsets, distance)
            self._linear = (W.astype(np.float32), b.astype(np.float32))
        return self._linear

    def _class_weights(self, counts, offset, p_offset, distance) -> tuple[np.ndarray, np.ndarray]:
        """LDA weights of classes whose means lie at ``offset`` from the centre (``p_offset``: whitened),
        each moved to the distance ``w * distance + (1 - w) * average``, ``w = n / (n + norm_prior)``."""
        shared = self._shared
        w = counts / (counts + self.norm_prior) if self.norm_prior > 0 else np.ones_like(counts)
        target = w * distance + (1 - w) * shared.mean_distance
        scale = np.divide(target, distance, out=np.ones_like(distance), where=distance > 1e-12)
        W = shared.p_centre + scale[..., None] * p_offset  # inv(cov) @ moved mean
        b = -0.5 * (W * (shared.centre + scale[..., None] * offset)).sum(axis=-1)
        return W, b

    def _familiarity(self, X: np.ndarray) -> np.ndarray:
        """The best cosine between the row and a class mean in the whitened space, both seen from the
        population centre (AUROC 0.994 known vs unknown at 224 px, against 0.983 for the Mahalanobis
        distance to the nearest mean; benchmarks/fewshot.py)."""
        self._weights()
        V = self._prepare(X) - self._shared.centre
        return self._cosines(V, self._shared.whiten(V), self._offsets, self._distance).max(axis=1)

    @staticmethod
    def _cosines(V, PV, p_offsets, distance) -> np.ndarray:
        """Whitened cosines between rows ``V`` (``PV``: their whitened twins) and class offsets."""
        norms = np.sqrt(np.maximum((V * PV).sum(axis=1), 1e-24))
        return (V @ p_offsets.T) / norms[:, None] / np.maximum(distance, 1e-12)

    def _held_out(self, X: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact leave-one-out for class means (called after learning ``X``): row i is scored with its
        class's mean and count as if it had not been learned, ``(n * mean - x) / (n - 1)``; the shared
        covariance, centre and average distance stay as learned."""
        W, b = (a.astype(np.float64) for a in self._weights())
        n = self.counts_[idx]
        scored = n > 1
        X, idx, n = self._prepare(X)[scored], idx[scored], n[scored, None]
        shared = self._shared
        PX = shared.whiten(X)
        offset = (n * self.means_[idx] - X) / (n - 1) - shared.centre
        p_offset = (n * (self._offsets[idx] + shared.p_centre) - PX) / (n - 1) - shared.p_centre
        distance = np.sqrt(np.maximum((offset * p_offset).sum(axis=1), 0))
        W_own, b_own = self._class_weights(n[:, 0] - 1, offset, p_offset, distance)
        rows = np.arange(len(X))
        logits = X @ W.T + b
        logits[rows, idx] = (X * W_own).sum(axis=1) + b_own
        return scored, logits, self._held_out_cosines(X, PX, idx, n[:, 0], offset, p_offset).max(axis=1)

    def _held_out_cosines(self, X, PX, idx, n, offset, p_offset) -> np.ndarray:
        """Familiarity's cosines with the row taken out of the covariance too (Sherman-Morrison): in 1280
        dimensions with a few dozen examples a row dominates the covariance along its own direction, and
        scoring it with that covariance made taught rows look far more familiar than new images of the
        same class (5th percentile 0.95 vs 0.14 at 10 per class), so every new image came out unknown.
        Removing row i from its class takes ``n/(n-1) u u^T`` (``u = x - mean``) out of the scatter, i.e.
        ``c u u^T`` out of the covariance; ``a' inv(cov') b = a'Pb + c (a'Pu)(u'Pb) / (1 - c u'Pu)``."""
        shared, rows = self._shared, np.arange(len(X))
        U = X - self.means_[idx]
        PU = PX - (self._offsets[idx] + shared.p_centre)
        c = (1 - self.shrinkage) * n / (n - 1) / max(self.counts_.sum(), 1)
        den = np.maximum(1 - c * (U * PU).sum(axis=1), 1e-6)
        k = c / den  # the correction's weight per row
        V, PV = X - shared.centre, PX - shared.p_centre
        vu = (V * PU).sum(axis=1)
        uo = U @ self._offsets.T  # u' P offset_j for every class
        dot = V @ self._offsets.T + (k * vu)[:, None] * uo
        norm2 = self._distance[None, :] ** 2 + k[:, None] * uo ** 2
        uo_own = (U * p_offset).sum(axis=1)  # the row's own class: its leave-one-out mean
        dot[rows, idx] = (V * p_offset).sum(axis=1) + k * vu * uo_own
        norm2[rows, idx] = (offset * p_offset).sum(axis=1) + k * uo_own ** 2
        v_norm = np.sqrt(np.maximum((V * PV).sum(axis=1) + k * vu ** 2, 1e-24))
        return dot / v_norm[:, None] / np.sqrt(np.maximum(norm2, 1e-24))

    def _frozen_state(self) -> dict:
        """Predicting reads only ``(W, b)`` and familiarity the Cholesky factor: the snapshot carries those,
        not the scatter."""
        W, b = self._weights()
        return {"_linear": (W, b), "counts_": self.counts_.copy(), "means_": self.means_.copy(),
                "scatter_": None, "_pending": None,  # familiarity's parts are replaced on change, never changed
                "_shared": self._shared, "_offsets": self._offsets, "_distance": self._distance}

    def _logit_gradient(self, X: np.ndarray, c: int) -> np.ndarray:
        w = self._weights()[0][c].astype(np.float64)
        return normalized_gradient(X, w) if self.normalize else np.broadcast_to(w, X.shape).copy()

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


def solve_spd(A: np.ndarray, B: np.ndarray, max_steps: int = 4, factor: bool = False):
    """``inv(A) @ B`` for a symmetric positive definite ``A`` (a shrunk covariance) to float64
    accuracy in about half the time of ``np.linalg.solve``: a float32 Cholesky factor, then
    iterative refinement with float64 residuals until the correction is below float32 resolution
    (two steps for the default shrinkage). Falls back to the float64 solve where float32 is not enough.
    ``factor``: also return a Cholesky factor of ``A`` (for :func:`scipy.linalg.cho_solve`)."""
    X, chol = _refined_solve(A, B, max_steps)
    if X is None:
        X = np.linalg.solve(A, B)
    if factor:
        return X, chol or cho_factor(A, check_finite=False)
    return X


def _refined_solve(A, B, max_steps):
    try:
        chol = cho_factor(A.astype(np.float32), check_finite=False)
    except LinAlgError:  # not positive definite in float32 (little or no shrinkage)
        return None, None
    X = np.zeros_like(B, dtype=np.float64)
    for _ in range(max_steps):
        step = cho_solve(chol, (B - A @ X).astype(np.float32), check_finite=False)
        X += step
        if np.abs(step).max() <= 1e-7 * np.abs(X).max():
            return X, chol
    return None, chol  # refinement does not converge: too ill-conditioned for float32
