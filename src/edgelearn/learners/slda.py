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

Per frame, as a camera learns (predict one frame, learn it, predict the next), a full re-solve of the
1280 x 1280 covariance for every example would cap the stream at a few dozen frames/s. The means,
counts and population centre are always exact; the covariance's inverse is kept from the last full
solve and re-solved once the scatter's trace has grown by ``refresh_after`` of what was solved (the
shrinkage target and the ``1/n`` scale move with every example, so no exact rank-1 update exists).
Between solves a learned example costs one matrix-vector product (its class mean, whitened). Anything
that leaves the learner (``snapshot``, ``state_dict``, held-out evidence) is solved exactly first.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgelearn.learners.base import UNKNOWN_PARAMS, Learner, Param, chan_update, normalized_gradient


@dataclass(frozen=True)
class _Shared:
    """What every class's score uses: the covariance's inverse (float32 where that is accurate enough;
    replaced on a new solve, never changed in place), the population centre, the precision applied to it,
    and the average whitened distance of a class from it."""

    precision: np.ndarray
    centre: np.ndarray
    p_centre: np.ndarray
    mean_distance: float

    def whiten(self, V: np.ndarray) -> np.ndarray:
        """``V @ inv(cov)`` for rows ``V``."""
        return (V.astype(self.precision.dtype) @ self.precision).astype(np.float64)


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
    refresh_after = 0.5  # re-solve the covariance once its scatter's trace grew by this share (module docstring)
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
        per_class = np.bincount(idx)  # (not np.unique: a tenth of the time for a camera's one row)
        classes = np.flatnonzero(per_class)
        row_class, n_b = np.searchsorted(classes, idx), per_class[classes].astype(float)
        mean_b = (row_class == np.arange(len(classes))[:, None]) @ X / n_b[:, None]  # one-hot rows: class sums
        centred = X - mean_b[row_class]  # zero rows for classes seen once here
        self._combine(classes, n_b, mean_b, centred if (n_b > 1).any() else None)
        self._linear = None
        self._changed.update(classes.tolist())  # means to whiten again
        self._learned_since_solve += len(X)

    def _combine(self, classes, n_b, mean_b, rows=None, scatter_b=None) -> None:
        """Chan's update. The scatter gains ``rows.T @ rows`` (+ ``scatter_b``) and, per class,
        ``weight * outer(delta, delta)``; rank-k terms are queued and folded in by one matrix
        product (:meth:`_flush`), so a camera's one-example updates cost O(d), not O(d^2).
        The caller drops what depends on the changed classes (``_learn``: their whitened means only)."""
        n, mean, delta, weight = chan_update(self.counts_[classes], self.means_[classes], n_b, mean_b)
        self._queue(delta * np.sqrt(weight)[:, None])
        if rows is not None:
            self._queue(rows)
        if scatter_b is not None:
            self.scatter_ += scatter_b
        self.counts_[classes], self.means_[classes] = n, mean

    def _queue(self, rows: np.ndarray) -> None:
        self._pending.append(rows)
        self._pending_rows += len(rows)
        self._added_trace += float((rows * rows).sum())
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
        """The next weights come from a full solve."""
        self._linear, self._p_means, self._changed = None, None, set()
        self._learned_since_solve, self._added_trace, self._solved_trace = 0, 0.0, 0.0

    def _weights(self, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The linear classifier ``(W, b)`` of the current state, computed once per change: LDA with
        each class's mean moved along its direction from the centre (see ``norm_prior``). ``exact``:
        with the covariance of every example learned (else it may be up to ``refresh_after`` behind)."""
        grown = self._added_trace > self.refresh_after * self._solved_trace
        if self._p_means is None or (self._learned_since_solve and (exact or grown)):
            self._solve()
        if self._linear is None:
            self._whiten_changed_means()  # none changed since a solve
            self._linear = self._classifier()
        return self._linear

    def _solve(self) -> None:
        """Invert the shrunk covariance of everything learned and whiten every class mean (float64 accuracy)."""
        self._flush()
        d, n = self.n_features_in_, max(self.counts_.sum(), 1)
        trace = float(np.trace(self.scatter_))
        cov = self.scatter_ * ((1 - self.shrinkage) / n)
        cov[np.diag_indices(d)] += self.shrinkage * max(trace / n / d, 1e-12)
        p_means, self._precision = solve_spd(cov, self.means_.T)
        self._p_means = p_means.T  # inv(cov) @ mean, per class
        self._solved_trace, self._added_trace, self._changed, self._learned_since_solve = trace, 0.0, set(), 0
        self._linear = None

    def _whiten_changed_means(self) -> None:
        """Between solves: whiten the changed class means with the covariance of the last solve."""
        if not self._changed:
            return
        changed = sorted(self._changed)
        P = self._precision  # symmetric: P @ mean per changed class, as one matrix-vector product for one class
        self._p_means[changed] = (P @ self.means_[changed].T.astype(P.dtype)).T
        self._changed = set()

    def _classifier(self) -> tuple[np.ndarray, np.ndarray]:
        d, n = self.n_features_in_, max(self.counts_.sum(), 1)
        several = len(self.classes_) > 1  # one class has no population centre: the origin
        centre = self.counts_ @ self.means_ / n if several else np.zeros(d)
        p_centre = self.counts_ @ self._p_means / n if several else np.zeros(d)  # inv(cov) @ centre
        offsets = self._p_means - p_centre  # inv(cov) @ (mean - centre)
        distance = np.sqrt(np.maximum((offsets * (self.means_ - centre)).sum(axis=1), 0))
        self._shared = _Shared(self._precision, centre, p_centre, float(self.counts_ @ distance / n))
        self._offsets, self._distance = offsets, distance
        W, b = self._class_weights(self.counts_, self.means_ - centre, offsets, distance)
        return W.astype(np.float32), b.astype(np.float32)

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
        W, b = (a.astype(np.float64) for a in self._weights(exact=True))
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
        """Predicting reads only ``(W, b)`` and familiarity the covariance's inverse: the snapshot carries those
        (solved exactly), not the scatter."""
        W, b = self._weights(exact=True)
        return {"_linear": (W, b), "counts_": self.counts_.copy(), "means_": self.means_.copy(),
                "scatter_": None, "_pending": None,  # solved above: nothing is behind
                "_p_means": self._p_means.copy(), "_changed": set(), "_learned_since_solve": 0,
                # familiarity's parts are replaced on change, never changed in place
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


def solve_spd(A: np.ndarray, B: np.ndarray, max_steps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(inv(A) @ B, inv(A))`` for a symmetric positive definite ``A`` (a shrunk covariance): the inverse
    in float32 (:func:`spd_inverse`, several times faster than float64 solving), then iterative refinement with
    float64 residuals until the correction is below float32 resolution (two steps for the default
    shrinkage). Where float32 is not enough (little or no shrinkage) both are float64."""
    P = spd_inverse(A.astype(np.float32))
    if P is not None:
        X = np.zeros_like(B, dtype=np.float64)
        for _ in range(max_steps):
            step = P @ (B - A @ X).astype(np.float32)
            X += step
            if np.abs(step).max() <= 1e-7 * np.abs(X).max():
                return X, P
    P = spd_inverse(A)
    if P is None:
        raise np.linalg.LinAlgError("the covariance is not positive definite")
    return P @ B, P


def spd_inverse(A: np.ndarray) -> np.ndarray | None:
    """``inv(A)`` in ``A``'s precision, or None where ``A`` is not positive definite at that precision.

    >>> spd_inverse(np.array([[4.0, 2.0], [2.0, 2.0]])).tolist()
    [[0.5, -0.5], [-0.5, 1.0]]
    """
    try:
        return _block_inverse(A)
    except np.linalg.LinAlgError:
        return None


def _block_inverse(A: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite ``A`` by halves and Schur complements, all in matrix products
    (numpy has no LAPACK ``potri``; 2-2.5x faster at 1280 x 1280 float32 than a Cholesky factor's triangular
    inverse and its product): ``S = A22 - A21 inv(A11) A12``, ``Y = inv(A11) A12``,
    ``inv(A) = [[inv(A11) + Y inv(S) Y', -Y inv(S)], [-inv(S) Y', inv(S)]]``. Every Schur complement of a
    positive definite matrix is one too: a Cholesky factor per smallest block detects when ``A`` is not."""
    d = len(A)
    if d <= 64:
        inverse = np.linalg.inv(np.linalg.cholesky(A))  # raises LinAlgError where not positive definite
        return inverse.T @ inverse
    h = d // 2
    top = _block_inverse(A[:h, :h])
    Y = top @ A[:h, h:]
    schur = _block_inverse(A[h:, h:] - A[h:, :h] @ Y)
    Z = Y @ schur
    inverse = np.empty_like(A)
    inverse[:h, :h], inverse[:h, h:] = top + Z @ Y.T, -Z
    inverse[h:, :h], inverse[h:, h:] = -Z.T, schur
    return inverse
