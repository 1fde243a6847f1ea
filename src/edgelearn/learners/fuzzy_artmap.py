"""Fuzzy ARTMAP, the DICLA module B (Maschler et al. 2021; Carpenter et al. 1992).

Each class owns one or more *representations* (ART categories). A representation is a
complement-coded weight vector ``w = (u, 1 - v)``: the hyperbox ``[u, v]`` in feature space.

The choices that reproduce (and beat) the paper's figures on frozen MobileNetV2 features,
found by measuring the alternatives (see benchmarks/dicla.py and the README):

* **Scaling into [0, 1]**: each feature vector is divided by a fixed bound (``feature_scale``,
  e.g. 6 for MobileNetV2's ReLU6 features) or, by default, by its own maximum. Neither depends
  on data seen, so every site scales identically and knowledge stays mergeable.
* **Similarity**: the fuzzy-AND choice ``T_j = |I ^ w_j| / (choice * |I| + |w_j|)`` ranks
  representations; the match ``|I ^ w_j| / |I|`` must reach the vigilance ``rho`` (paper: 0.5).
* **Updater with match tracking**: in resonance order, a representation of the right class that
  passes ``rho`` learns the input, ``w <- lr * (I ^ w) + (1 - lr) * w`` (``lr = 0.5``); one of a
  wrong class raises the vigilance just above its match and the search goes on; when none is left
  the input becomes a new representation (of a new or a known class). The paper's literal updater
  (a new representation whenever the single best one has the wrong class) proliferates
  representations (about 850 for 1,000 images) and loses accuracy.
* **Imbalanced classes** (issue 18): ``|I ^ w_j| = |w_j| - dist(I, box_j)`` (L1 distance to the
  box), so with the paper's tiny ``choice`` the choice is ``1 - dist / |w_j|``, blind to box size.
  Slow learning (the paper's ``lr = 0.2``) moves a box only part of the way toward each example, so
  how far it has spread depends on how many examples it has seen: a class with five times more
  examples is worn down to cover its whole spread (row-max scaling keeps every box far inside the
  vigilance, so it never splits) and is nearest to everything. On NEU (96 px) with one class holding
  half the images the worst class's recall was 0-30 % and balanced accuracy 0.56. Both causes are
  fixed: ``lr = 0.5`` spreads few-example boxes nearly as far, and ``choice = 0.003`` of ``|I|``
  charges a box for its size: balanced accuracy 0.80 there (worst class 12-68 %); on balanced data
  (100 per class, 10 steps) NEU 85.7 -> 89.2 %, imagenette 86.3 -> 87.7 %, consolidated no worse;
  about 1.5x the representations before consolidation. A larger ``choice`` or ``lr = 1`` helps
  imbalance more but costs union-consolidated accuracy.
* **Prediction on uint8**: predicting reads every representation once per input, so its speed is
  memory traffic. Inputs and weights are rounded to 255 levels and ``|I ^ w| = (|I| + |w| - L1(I, w)) / 2``
  uses OpenCV's uint8 L1 kernel: 6-10x the predictions/s of the float32 minima at 1,000 classes
  (benchmarks/learner_speed.py). Each rounded term is off by at most 1/510, so ``|I ^ w|`` by at most
  ``d / 255`` (d features); the box sizes ``|w|`` stay exact, and each input's best representations are
  scored again in float32, so the winners are the float32 ones (all of them on held-out imagenette and
  NEU features). Learning (resonance, match tracking), merging and packages use the float32 weights.
* **Consolidation** folds each class's representations into at most ``max_per_class``:
  ``"union"`` takes the fuzzy AND (the smallest hyperbox holding them all, what ART itself
  would learn), ``"mean"`` the count-weighted mean.
"""

from typing import NamedTuple

import numpy as np

from edgelearn.learners.base import UNKNOWN_PARAMS, Learner, Param

STRATEGIES = ("union", "mean")
LEVELS = 255  # what predicting rounds inputs and weights to (uint8)
RESCORED = 16  # per input, the best representations by the uint8 form scored again in float32


class _Quantized(NamedTuple):
    """The representations as predicting reads them, made once per change of the weights."""

    weights: np.ndarray  # uint8, rounded ``weights_ * LEVELS``, C-contiguous for OpenCV
    sums: np.ndarray  # int32, their row sums
    norms: np.ndarray  # ``alpha + |w_j|`` of the float32 weights, as learning computes it
    scale: np.ndarray  # ``1 / (2 * LEVELS * norms)``: a uint8 overlap times this is the choice value
    one_each: bool  # no class has more than one representation


class FuzzyArtmap(Learner):
    """Incremental Fuzzy ARTMAP classifier with the DICLA updater and consolidation.

    Parameters
    ----------
    rho : vigilance in [0, 1]; higher = tighter representations, more of them (paper: 0.5).
    learning_rate : how far a resonating representation moves (paper's alpha_B: 0.2; see above).
    choice : the choice parameter alpha of ``T_j``, as a fraction of ``|I|`` (the feature count:
        complement coding keeps it fixed): how much a box's size counts against it (0: not at all,
        which favours classes with many examples).
    epsilon : how far match tracking raises the vigilance above a wrong representation's match.
    match_tracking : ``False`` gives the paper's literal updater (a new representation whenever the
        single best one fails the vigilance or has another class); kept for comparison.
    feature_scale : fixed bound that maps features into [0, 1]; ``None``: divide by the row's max.
        Features are assumed non-negative (ReLU backbones); negative values are clipped to 0.
    temperature : softmax temperature on the choice values for ``predict_proba``. Class choices
        differ by thousandths: 0.002 gives an expected calibration error of 0.08-0.12 on held-out
        MobileNetV2 features (0.02: 0.30-0.55, too flat); a recognizer's fitted temperature on top
        brings it to 0.02-0.06 (fitted: 0.0013-0.006 on NEU and imagenette at 96 px).
    unknown_threshold, unknown_label : ``predict`` answers ``unknown_label`` below this top probability.

    Examples
    --------
    >>> fam = FuzzyArtmap().partial_fit([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], ["a", "a", "b"])
    >>> fam.predict([[0.8, 0.1, 0.1], [0.1, 0, 0.9]]).tolist()
    ['a', 'b']
    """

    kind = "fuzzy_artmap"
    _arrays = ("weights_", "category_class_", "category_count_")
    _params = {"rho": Param(float, 0, 1), "learning_rate": Param(float, 0, 1, open_low=True),
               "choice": Param(float, 0), "epsilon": Param(float, 0), "match_tracking": Param(bool),
               "feature_scale": Param(float, 0, open_low=True, optional=True),
               "temperature": Param(float, 0, open_low=True), **UNKNOWN_PARAMS}

    def __init__(self, rho: float = 0.5, *, learning_rate: float = 0.5, choice: float = 0.003,
                 epsilon: float = 1e-3, match_tracking: bool = True, feature_scale: float | None = None,
                 temperature: float = 0.002,
                 unknown_threshold: float | None = None, unknown_label: str | None = None):
        self.rho = rho
        self.learning_rate = learning_rate
        self.choice = choice
        self.epsilon = epsilon
        self.match_tracking = match_tracking
        self.feature_scale = feature_scale
        self.temperature = temperature
        self.unknown_threshold = unknown_threshold
        self.unknown_label = unknown_label

    # -- coding -------------------------------------------------------------------------------------
    def _code(self, X: np.ndarray) -> np.ndarray:
        """Scale into [0, 1] and complement-code: ``(n, d) -> (n, 2d)`` float32."""
        if not 0 <= self.rho <= 1 or not 0 < self.learning_rate <= 1:
            raise ValueError(f"need 0 <= rho <= 1 and 0 < learning_rate <= 1, got {self.rho}, "
                             f"{self.learning_rate}")
        if self.feature_scale is None:
            scale = np.maximum(np.abs(X).max(axis=1, keepdims=True), 1e-12)
        else:
            scale = self.feature_scale
        d = X.shape[1]
        coded = np.empty((len(X), 2 * d), np.float32)  # filled in place: one row is the common case
        A = X / scale
        np.minimum(np.maximum(A, 0.0, out=A), 1.0, out=coded[:, :d])  # (np.clip costs more for one row)
        np.subtract(np.float32(1), coded[:, :d], out=coded[:, d:])
        return coded

    def _grow(self, before: int) -> None:
        if before == 0:
            self.weights_ = np.zeros((0, 2 * self.n_features_in_), np.float32)
            self.category_class_ = np.zeros(0, np.int64)
            self.category_count_ = np.zeros(0, np.int64)

    # -- learning -----------------------------------------------------------------------------------
    def _learn(self, X: np.ndarray, idx: np.ndarray) -> None:
        I_all = self._code(X)
        self._invalidate()
        dim = I_all.shape[1] / 2  # |I| of a complement-coded input
        norms = self.weights_.sum(axis=1) + self._alpha  # alpha + |w_j|, kept current below
        for I, label in zip(I_all, idx, strict=True):
            j = self._resonate(I, label, dim, norms)
            if j is None:  # case B of the updater: a new representation (of a new or known class)
                self._append(I, label)
                norms = np.r_[norms, self._alpha + I.sum()]
            else:
                w = self.weights_[j]
                w += self.learning_rate * (np.minimum(I, w) - w)
                norms[j] = self._alpha + w.sum()
                self.category_count_[j] += 1

    def _resonate(self, I: np.ndarray, label: int, dim: float, norms: np.ndarray) -> int | None:
        """Index of the representation that learns ``I`` (match tracking), or None for a new one."""
        if len(self.weights_) == 0:
            return None
        overlap = fuzzy_and_sums(self.weights_, I[None])[0]
        if not self.match_tracking:  # the paper's literal updater: only the single best one may learn
            j = int(np.argmax(overlap / norms))
            return j if overlap[j] >= self.rho * dim and self.category_class_[j] == label else None
        vigilant = np.flatnonzero(overlap >= self.rho * dim)  # only these can ever resonate
        choice = overlap[vigilant] / norms[vigilant]
        vigilance = self.rho
        for j in vigilant[np.argsort(-choice, kind="stable")]:
            match = overlap[j] / dim
            if match < vigilance:
                continue
            if self.category_class_[j] == label:
                return int(j)
            vigilance = match + self.epsilon  # match tracking: wrong class, demand more
        return None

    def _append(self, I: np.ndarray, label: int) -> None:
        self.weights_ = np.vstack([self.weights_, I[None]])
        self.category_class_ = np.r_[self.category_class_, label]
        self.category_count_ = np.r_[self.category_count_, 1]

    @property
    def _alpha(self) -> float:
        """The choice parameter in input units: ``choice * |I|``."""
        return self.choice * self.n_features_in_

    def _choices(self, X: np.ndarray) -> np.ndarray:
        """The choice value ``T_j`` of every row for every representation, ``(n, n_representations)``:
        from the uint8 form (within ``d / 255 / (alpha + |w_j|)`` of the float32 value), the ``RESCORED``
        best of each row exactly, so the winner is today's unless rounding moved it out of those."""
        q = self._quantized()
        I = self._code(X)
        if len(q.norms) <= RESCORED:  # all would be rescored: float32 alone
            return fuzzy_and_sums(self.weights_, I) / q.norms
        I8 = np.rint(I * LEVELS).astype(np.uint8)
        overlap = l1_distances(q.weights, I8)
        np.subtract(I8.sum(axis=1, dtype=np.int32)[:, None] + q.sums, overlap, out=overlap)  # 2 |I ^ w| * LEVELS
        choices = overlap * q.scale
        best = np.argpartition(choices, -RESCORED, axis=1)[:, -RESCORED:]
        for i, rows in enumerate(best):
            mine = self.weights_.take(rows, axis=0)
            choices[i, rows] = np.minimum(mine, I[i], out=mine).sum(axis=1) / q.norms[rows]
        return choices

    def _quantized(self) -> _Quantized:
        if getattr(self, "_uint8", None) is None:  # replaced on change, never changed: snapshots may share it
            W = np.rint(self.weights_ * LEVELS).astype(np.uint8)
            norms = self._alpha + self.weights_.sum(axis=1)
            one_each = len(np.unique(self.category_class_)) == len(self.category_class_)
            self._uint8 = _Quantized(W, W.sum(axis=1, dtype=np.int32), norms, 1 / (2 * LEVELS * norms), one_each)
        return self._uint8

    def _invalidate(self) -> None:
        self._uint8 = None

    def _frozen_state(self) -> dict:
        """A snapshot predicts at once: the uint8 form is made now (shared until this learner changes)."""
        return {**super()._frozen_state(), "_uint8": self._quantized()}

    # -- prediction ---------------------------------------------------------------------------------
    def _scores(self, X: np.ndarray) -> np.ndarray:
        """Per class, the best choice value ``T_j`` among its representations, ``(n, n_classes)``."""
        choices = self._choices(X)
        scores = np.zeros((len(X), len(self.classes_)))  # choices are >= 0: a class without boxes scores 0
        if self._quantized().one_each:  # consolidated: a class's only representation is its score
            scores[:, self.category_class_] = choices
            return scores
        cells = self.category_class_ + scores.shape[1] * np.arange(len(X))[:, None]  # flat (row, class) per choice
        np.maximum.at(scores.reshape(-1), cells.ravel(), choices.ravel())
        return scores

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._scores(X) / self.temperature

    def _familiarity(self, X: np.ndarray) -> np.ndarray:
        """The best choice value over all representations: how well ``X`` fits the closest box,
        charged for that box's size. (The plain match ``|I ^ w| / |I|`` separated unknown from
        known imagenette classes barely better than chance, AUROC 0.49-0.58; this 0.76-0.79.)"""
        return self._choices(X).max(axis=1).astype(np.float64)

    def _logit_gradient(self, X: np.ndarray, c: int) -> np.ndarray:
        """On the piece where the class's best representation ``w`` wins and the row scale is fixed:
        ``d/da_i sum(min(I, w))`` is ``[a_i < w_i] - [1 - a_i < w'_i]`` (complement half)."""
        d = self.n_features_in_
        mine = np.flatnonzero(self.category_class_ == c)
        W = self.weights_[mine]
        I = self._code(X)
        best = W[(fuzzy_and_sums(W, I) / (self._alpha + W.sum(axis=1))).argmax(axis=1)]
        a = I[:, :d]
        grad = (a < best[:, :d]).astype(np.float64) - (1.0 - a < best[:, d:])
        scale = self.feature_scale or np.maximum(np.abs(X).max(axis=1, keepdims=True), 1e-12)
        inside = (X > 0) & (X < scale)  # clipping flattens the rest
        norm = (self._alpha + best.sum(axis=1))[:, None]
        return grad * inside / scale / norm / self.temperature

    # -- memory ------------------------------------------------------------------------------------
    def consolidate(self, strategy: str = "union", *, max_per_class: int = 1) -> "FuzzyArtmap":
        """Fold each class's representations into at most ``max_per_class`` (in place).

        ``strategy``: ``"union"`` (fuzzy AND: smallest hyperbox holding them) or ``"mean"``
        (count-weighted mean). With ``max_per_class > 1`` the closest pairs are folded first.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        if not hasattr(self, "classes_"):
            return self
        weights, classes, counts = [], [], []
        for c in np.unique(self.category_class_):
            members = np.flatnonzero(self.category_class_ == c)
            W, n = _fold(self.weights_[members], self.category_count_[members], max_per_class, strategy)
            weights.append(W)
            counts.append(n)
            classes.append(np.full(len(W), c))
        self._invalidate()
        self.weights_ = np.concatenate(weights).astype(np.float32)
        self.category_class_ = np.concatenate(classes).astype(np.int64)
        self.category_count_ = np.concatenate(counts).astype(np.int64)
        return self

    def _merge_one(self, other: "FuzzyArtmap", index_map: np.ndarray) -> None:
        """Union of representations: the other site's boxes are added as they are."""
        self.weights_ = np.vstack([self.weights_, other.weights_])
        self.category_class_ = np.concatenate([self.category_class_, index_map[other.category_class_]])
        self.category_count_ = np.concatenate([self.category_count_, other.category_count_])

    @classmethod
    def _array_specs(cls, n_classes: int, n_features: int) -> dict:
        """``None``: the number of representations, the same in all three arrays."""
        return {"weights_": (np.float32, (None, 2 * n_features)), "category_class_": (np.int64, (None,)),
                "category_count_": (np.int64, (None,))}

    @classmethod
    def _values_problem(cls, arrays: dict, n_classes: int) -> str | None:
        W, owner = arrays["weights_"], arrays["category_class_"]
        if ((W < 0) | (W > 1)).any():
            return "representation weights outside [0, 1]"
        if ((owner < 0) | (owner >= n_classes)).any():
            return "representations of classes that are not in the class list"
        return "negative representation counts" if (arrays["category_count_"] < 0).any() else None

    @property
    def n_representations(self) -> int:
        return len(self.weights_) if hasattr(self, "weights_") else 0


    def _merge_class(self, s: int, t: int) -> None:
        """The source's representations (hyperboxes) now answer for ``t``."""
        self.category_class_[self.category_class_ == s] = t

    def _forget_class(self, c: int) -> None:
        keep = self.category_class_ != c
        self.weights_, self.category_class_ = self.weights_[keep], self.category_class_[keep]
        self.category_count_ = self.category_count_[keep]

    def _remove_class(self, c: int) -> None:
        self.category_class_[self.category_class_ > c] -= 1

def fuzzy_and_sums(W: np.ndarray, I: np.ndarray, block_bytes: int = 256 * 1024) -> np.ndarray:
    """``|I_i ^ W_j|`` for every input row i and representation j: ``(n, 2d), (m, 2d) -> (n, m)``.

    Elementwise minima have no BLAS kernel, so the cost is memory traffic: representations are
    visited in blocks small enough for the CPU cache, and each block's row sums are a mat-vec.
    About 3x faster than one broadcast ``np.minimum(W, I).sum()`` with 1,000+ representations.
    """
    out = np.empty((len(I), len(W)), np.float32)
    ones = np.ones(W.shape[1], np.float32)
    rows = max(1, block_bytes // (W.shape[1] * 4))
    buffer = np.empty((rows, W.shape[1]), np.float32)
    for lo in range(0, len(W), rows):
        block = W[lo:lo + rows]
        tmp = buffer[:len(block)]
        for i, x in enumerate(I):
            np.minimum(block, x, out=tmp)
            out[i, lo:lo + rows] = tmp @ ones
    return out


def l1_distances(W: np.ndarray, I: np.ndarray) -> np.ndarray:
    """L1 distances between uint8 rows, ``(m, k), (n, k) -> (n, m)`` int32, by OpenCV's SIMD kernel
    (imported here: only predicting needs it)."""
    import cv2

    if len(W) == 0 or len(I) == 0:
        return np.zeros((len(I), len(W)), np.int32)
    rows = [cv2.batchDistance(W, x[None], cv2.CV_32S, normType=cv2.NORM_L1, K=1)[0]  # (m, 1): each row
            for x in I]  # against all representations (OpenCV's Python API has only the K-nearest form)
    return rows[0].T if len(rows) == 1 else np.hstack(rows).T.copy()


def _fold(W: np.ndarray, n: np.ndarray, k: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold the rows of ``W`` (counts ``n``) pairwise until at most ``k`` remain.

    The pair folded first is the one whose union box is largest in weight (smallest box growth).
    """
    W, n = W.astype(np.float64), n.astype(np.int64)
    if k == 1 and len(W) > 1:  # the common case in one step
        if strategy == "union":
            return W.min(axis=0, keepdims=True), n.sum(keepdims=True)
        return (n @ W / n.sum())[None], n.sum(keepdims=True)
    while len(W) > k:
        union = np.minimum(W[:, None], W[None]).sum(axis=2)
        np.fill_diagonal(union, -np.inf)
        i, j = np.unravel_index(np.argmax(union), union.shape)
        if strategy == "union":
            folded = np.minimum(W[i], W[j])
        else:
            folded = (n[i] * W[i] + n[j] * W[j]) / (n[i] + n[j])
        keep = np.ones(len(W), bool)
        keep[[i, j]] = False
        W = np.vstack([W[keep], folded])
        n = np.r_[n[keep], n[i] + n[j]]
    return W, n
