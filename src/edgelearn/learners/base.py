"""The Learner protocol (module B): incremental classifiers over feature vectors, numpy only.

Conventions follow scikit-learn (hyper-parameters in ``__init__``, learned state ends in ``_``)
and river (one batch of the stream at a time; new labels may appear at any time).
Labels are ``str`` or ``int`` so that state dicts stay JSON-able.
"""

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgelearn.errors import (
    ConflictError,
    IncompatibleError,
    ModelFileError,
    NotFittedError,
    NotFoundError,
    ParameterError,
)

Label = str | int
MAX_TEXT = 200


@dataclass(frozen=True)
class Param:
    """What a hyper-parameter may hold in a saved state: a number in [low, high] (``open_low``:
    above ``low``), a bool, or a text (one of ``choices`` when given); ``optional``: or None."""

    type: type
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    optional: bool = False
    choices: tuple = ()

    def problem(self, value) -> str | None:
        """Why ``value`` does not fit, or None."""
        if value is None:
            return None if self.optional else "must be given"
        if self.type is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.type is str:
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                return f"must be a text of at most {MAX_TEXT} characters"
            return None if not self.choices or value in self.choices else f"must be one of {list(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return "must be a finite number"
        above = value > self.low if self.open_low else value >= self.low
        return None if above and value <= self.high else f"must be in {'(' if self.open_low else '['}" \
                                                         f"{self.low}, {self.high}]"


UNKNOWN_PARAMS = {"unknown_threshold": Param(float, 0, 1, optional=True),
                  "unknown_label": Param(str, optional=True)}


def _arrays_problem(arrays: dict, specs: dict) -> str | None:
    """Why ``arrays`` do not match ``specs`` (name -> (dtype, shape); ``None`` in a shape: the
    first array's number of rows, e.g. representations), or None."""
    if set(arrays) != set(specs):
        return f"arrays {sorted(arrays)}, expected exactly {sorted(specs)}"
    first = np.shape(arrays[next(iter(specs))])
    rows = first[0] if first else -1
    for name, (dtype, shape) in specs.items():
        a, expected = arrays[name], tuple(rows if n is None else n for n in shape)
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            return (f"array {name} is {getattr(a, 'dtype', type(a).__name__)}, expected {np.dtype(dtype)} "
                    "(other types are refused, not converted)")
        if a.shape != expected:
            return f"array {name} has shape {a.shape}, expected {expected}"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"array {name} holds NaN or infinite values"
    return None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def normalized_gradient(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Gradient of ``w . x/|x|`` with respect to each row ``x`` of ``X`` (``w`` is ``(d,)``)."""
    norm = np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    u = X / norm
    return (w[None, :] - (u @ w)[:, None] * u) / norm


def chan_update(n_a, mean_a, n_b, mean_b):
    """Combine two (count, mean) summaries (Chan et al.): returns ``(n, mean, delta, weight)``.

    The combined scatter is ``M2_a + M2_b + weight * delta**2`` (or ``outer(delta, delta)``):
    the same formula serves streaming updates and exact merges.
    """
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / np.maximum(n, 1))[..., None]
    weight = n_a * n_b / np.maximum(n, 1)
    return n, mean, delta, weight


@dataclass(frozen=True)
class HeldOut:
    """Evidence from rows scored by a model that had not learned them (see :meth:`Learner.learn_and_score`):
    their ``logits`` ``(m, n_classes)`` (``-inf`` for classes that did not exist yet), true class indices
    ``targets`` ``(m,)`` and ``familiarity`` ``(m,)``."""

    logits: np.ndarray
    targets: np.ndarray
    familiarity: np.ndarray

    @classmethod
    def empty(cls, n_classes: int) -> "HeldOut":
        return cls(np.zeros((0, n_classes)), np.zeros(0, np.intp), np.zeros(0))


class Learner:
    """Base class: label bookkeeping, input checks, proba, prediction with an unknown threshold.

    Subclasses implement ``_learn(X, idx)`` (``idx`` are class indices, ``classes_`` already grown),
    ``_scores(X)``, ``_merge_one(other, index_map)`` and list their learned arrays in ``_arrays``.
    """

    kind: ClassVar[str] = ""
    _arrays: ClassVar[tuple[str, ...]] = ()
    _params: ClassVar[dict[str, Param]] = {}  # what each hyper-parameter may hold in a saved state

    # -- hyper-parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the stream ---------------------------------------------------------------------------------
    def partial_fit(self, X, y) -> "Learner":
        """Learn a batch of the stream, in order; unseen labels become new classes. Returns self."""
        X = self._check_X(X, fitting=True)
        y = list(np.asarray(y, dtype=object).ravel())
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
        if len(y):
            self._learn(X, self._encode(y))
        return self

    def learn_and_score(self, X, y, chunks: int = 16) -> HeldOut:
        """:meth:`partial_fit` that also returns held-out evidence: each row whose class has another
        example is scored as if it had not been learned. Learners with a closed-form leave-one-out
        give it (``_held_out``); the others are scored prequentially, the batch learned in ``chunks``
        consecutive parts, each scored before it is learned (rows of classes known by then)."""
        X = self._check_X(X, fitting=True)
        y = list(np.asarray(y, dtype=object).ravel())
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
        if type(self)._held_out is not Learner._held_out:
            idx = self._encode(y)
            self._learn(X, idx)
            scored, logits, familiarity = self._held_out(X, idx)
            return HeldOut(np.asarray(logits, np.float64), idx[scored], np.asarray(familiarity, np.float64))
        parts = []
        for rows in np.array_split(np.arange(len(y)), min(len(y), chunks)):
            known = [i for i in rows if y[i] in self.classes_] if self._fitted() else []
            if known:
                parts.append((self._logits(X[known]), self._encode([y[i] for i in known]),
                              self._familiarity(X[known])))
            self._learn(X[rows], self._encode([y[i] for i in rows]))
        return _stack(parts, len(getattr(self, "classes_", [])))

    def _held_out(self, X: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Called after ``_learn(X, idx)``: ``(bool mask of the rows scored, their logits, their familiarity)``
        as if each row alone had never been learned. Only learners with a closed form implement it."""
        raise NotImplementedError

    def familiarity(self, X) -> np.ndarray:
        """``(n,)``: how much each row is like what was learned (higher = more familiar), from the learner's
        own state; an input far below the familiarity of learned examples is of a class never taught."""
        return np.asarray(self._familiarity(self._check_X(X)), np.float64)

    def _familiarity(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no familiarity score")

    def _fitted(self) -> bool:
        return bool(getattr(self, "classes_", None))

    def predict_scores(self, X) -> np.ndarray:
        """Per-class evidence, ``(n, n_classes)``, higher = more likely; columns follow ``classes_``."""
        return self._scores(self._check_X(X))

    def predict_logits(self, X) -> np.ndarray:
        """``(n, n_classes)`` logits: ``predict_proba`` is their softmax (calibration rescales them)."""
        return self._logits(self._check_X(X))

    def logit_gradient(self, X, label) -> np.ndarray:
        """``(n, d)``: the gradient of class ``label``'s logit with respect to each row of ``X``
        (what a heat map back-propagates into the backbone). Piecewise-linear learners give the
        gradient of the piece ``X`` lies on."""
        X = self._check_X(X)
        if label not in self.classes_:
            raise ValueError(f"unknown class {label!r}")
        return self._logit_gradient(X, self.classes_.index(label))

    def _logit_gradient(self, X: np.ndarray, c: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no logit gradient")

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, each row sums to 1."""
        return softmax(self.predict_logits(X))

    def predict(self, X) -> np.ndarray:
        """Most likely label per row; ``unknown_label`` where the top probability is below
        ``unknown_threshold`` (when that is set)."""
        if self.unknown_threshold is None:  # argmax needs no softmax
            best = self._logits(self._check_X(X)).argmax(axis=1)
            labels = np.empty(len(best), dtype=object)  # not the whole class list as an array: one row is common
            labels[:] = [self.classes_[i] for i in best]
            return labels
        proba = self.predict_proba(X)
        labels = np.asarray(self.classes_, dtype=object)[proba.argmax(axis=1)]
        labels[proba.max(axis=1) < self.unknown_threshold] = self.unknown_label
        return labels

    def consolidate(self, strategy: str = "final", **kwargs) -> "Learner":
        """Shrink memory. Learners with one summary per class have nothing to shrink."""
        return self

    def snapshot(self) -> "Learner":
        """A frozen copy that predicts and explains as this learner does now, sharing nothing that
        learning changes: a server's predictions read it without a lock while this learner learns on.
        It is for predicting only (it may lack what learning, merging and saving need)."""
        twin = copy.copy(self)
        if hasattr(self, "classes_"):
            twin.__dict__.update(classes_=list(self.classes_), _index=None, **self._frozen_state())
        return twin

    def _frozen_state(self) -> dict:
        """Copies of the attributes learning changes in place; subclasses may keep only what predicting reads."""
        return {name: getattr(self, name).copy() for name in self._arrays}

    # -- merging ------------------------------------------------------------------------------------
    def merge(self, *others: "Learner") -> "Learner":
        """Absorb other learners of the same kind and feature space (in place; returns self)."""
        for other in others:
            self._check_compatible(other)
            if not hasattr(other, "classes_"):
                continue
            if not hasattr(self, "classes_"):
                self.load_state_dict(other.state_dict())
                continue
            self._merge_one(other, self._encode(list(other.classes_)))
            self._invalidate()
        return self

    def _check_compatible(self, other: "Learner") -> None:
        if type(other) is not type(self):
            raise IncompatibleError(f"cannot merge a {other.kind} learner into a {self.kind} learner")
        if hasattr(self, "n_features_in_") and hasattr(other, "n_features_in_") \
                and other.n_features_in_ != self.n_features_in_:
            raise IncompatibleError(f"cannot merge {other.n_features_in_}-d features into "
                                    f"{self.n_features_in_}-d ones (different backbones?)")

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain arrays + JSON-able hyper-parameters and labels."""
        state = {"kind": self.kind, "params": self.get_params()}
        if hasattr(self, "classes_"):
            self._sync()
            state["classes"] = list(self.classes_)
            state["n_features"] = self.n_features_in_
            state["arrays"] = {name: getattr(self, name) for name in self._arrays}
        return state

    @classmethod
    def check_state(cls, state: dict) -> None:
        """Refuse a saved state (:meth:`state_dict` from elsewhere) that does not fit this learner,
        before anything is built: exactly the constructor's hyper-parameters, each of its type and
        range; exactly the learned arrays, of their canonical dtype, shaped by the class count and
        feature width, all finite, and whatever else the learner needs (:meth:`_values_problem`)."""
        params = state.get("params")
        if not isinstance(params, dict) or set(params) != set(cls._params):
            got = sorted(params) if isinstance(params, dict) else params
            raise ModelFileError(f"{cls.kind} hyper-parameters {got}, expected exactly {sorted(cls._params)}")
        for name, rule in cls._params.items():
            if problem := rule.problem(params[name]):
                raise ModelFileError(f"{cls.kind} hyper-parameter {name}={params[name]!r}: {problem}")
        if "classes" not in state:
            if state.get("arrays"):
                raise ModelFileError("arrays without a class list")
            return
        classes, d = state["classes"], state.get("n_features")
        if not isinstance(classes, list) or not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ModelFileError("malformed class list or feature width")
        n_classes = len(classes)
        arrays = state.get("arrays")
        problem = _arrays_problem(arrays, cls._array_specs(n_classes, d)) if isinstance(arrays, dict) \
            else "no arrays"
        problem = problem or cls._values_problem(arrays, n_classes)
        if problem:
            raise ModelFileError(f"{cls.kind} state for {n_classes} classes of {d} features: {problem}")

    @classmethod
    def _array_specs(cls, n_classes: int, n_features: int) -> dict[str, tuple[type, tuple]]:
        """name -> (canonical dtype, shape) of each learned array as it travels in a package."""
        raise NotImplementedError

    @classmethod
    def _values_problem(cls, arrays: dict[str, np.ndarray], n_classes: int) -> str | None:
        """Beyond shapes and finiteness: why these values cannot be this learner's state, or None."""
        return None

    def load_state_dict(self, state: dict) -> "Learner":
        if state.get("kind") != self.kind:
            raise IncompatibleError(f"state is for a {state.get('kind')!r} learner, not {self.kind!r}")
        for key, value in state["params"].items():
            setattr(self, key, value)
        self._index = None
        if "classes" in state:
            self.classes_ = list(state["classes"])
            self.n_features_in_ = int(state["n_features"])
            for name in self._arrays:
                setattr(self, name, np.array(state["arrays"][name]))
        self._invalidate()
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of learned state held in memory (a package may carry fewer: SLDA sends half its scatter)."""
        if not hasattr(self, "classes_"):
            return 0
        return int(sum(getattr(self, name).nbytes for name in self._arrays))

    # -- helpers for subclasses ---------------------------------------------------------------------
    def _check_X(self, X, fitting: bool = False) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-d array of feature vectors, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("features contain NaN or infinity")
        if not hasattr(self, "classes_"):
            if not fitting:
                raise NotFittedError(f"this {type(self).__name__} has learned nothing yet")
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features per row, got {X.shape[1]}")
        return X

    def _encode(self, labels: list) -> np.ndarray:
        """Labels -> class indices, appending unseen labels to ``classes_`` (and growing arrays)."""
        if not hasattr(self, "classes_"):
            self.classes_ = []
        index = getattr(self, "_index", None)
        if index is None or len(index) != len(self.classes_):  # derived; rebuilt after a load
            index = self._index = {c: i for i, c in enumerate(self.classes_)}
        before = len(self.classes_)
        out = np.empty(len(labels), dtype=np.intp)
        for i, label in enumerate(labels):
            label = label.item() if isinstance(label, np.generic) else label
            if label not in index:
                if not isinstance(label, (str, int)):
                    raise ValueError(f"labels must be str or int, got {type(label).__name__}")
                index[label] = len(self.classes_)
                self.classes_.append(label)
            out[i] = index[label]
        if len(self.classes_) > before:
            self._grow(before)
        return out

    def _grow(self, before: int) -> None:
        """Called after ``classes_`` grew from ``before`` entries: extend per-class arrays."""

    def _invalidate(self) -> None:
        """Called after the learned state changed outside ``_learn`` (load, merge): drop caches."""

    def _sync(self) -> None:
        """Bring the learned arrays up to date before they are read from outside (state_dict)."""

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._scores(X)

    # -- class operations (a worker's rename, merge, delete) ------------------------------------------
    def rename_class(self, old: Label, new: Label) -> "Learner":
        """Call class ``old`` ``new`` from now on (in place); ``new`` must not exist (merge instead)."""
        c = self._class_index(old)
        if new in self.classes_:
            raise ConflictError(f"there is already a class {new!r}: merge the two classes instead")
        self.classes_[c] = new
        self._index = None
        return self

    def merge_classes(self, source: Label, into: Label) -> "Learner":
        """Make every example of ``source`` one of ``into`` and drop ``source`` (in place). Learners of
        sufficient statistics (NCM, SLDA) end exactly where training with the merged labels would."""
        s, t = self._class_index(source), self._class_index(into)
        if s == t:
            raise ParameterError(f"cannot merge class {source!r} into itself")
        self._sync()
        self._merge_class(s, t)
        return self._drop_class(s)

    def forget_class(self, name: Label) -> "Learner":
        """Drop class ``name`` and what was learned from its examples (in place); the last class
        forgotten leaves a learner that has learned nothing."""
        c = self._class_index(name)
        self._sync()
        if len(self.classes_) == 1:
            for attr in (*self._arrays, "classes_", "n_features_in_", "_index"):
                self.__dict__.pop(attr, None)
            return self
        self._forget_class(c)
        return self._drop_class(c)

    def _class_index(self, label: Label) -> int:
        if label not in getattr(self, "classes_", []):
            raise NotFoundError(f"there is no class {label!r}")
        return self.classes_.index(label)

    def _drop_class(self, c: int) -> "Learner":
        del self.classes_[c]
        self._remove_class(c)
        self._index = None
        self._invalidate()
        return self

    def _merge_class(self, s: int, t: int) -> None:
        """Fold class ``s``'s learned state into class ``t``'s (``s`` is removed afterwards)."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge classes")

    def _forget_class(self, c: int) -> None:
        """Take class ``c``'s share out of state other classes share (before ``c`` is removed)."""

    def _remove_class(self, c: int) -> None:
        """Delete index ``c`` from the per-class arrays (indices above it move down by one)."""
        for name in self._arrays:
            setattr(self, name, np.delete(getattr(self, name), c, axis=0))

def _stack(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_classes: int) -> HeldOut:
    """Held-out parts scored at different times, their logits padded with ``-inf`` for classes added since."""
    if not parts:
        return HeldOut.empty(n_classes)
    logits = np.full((sum(len(t) for _, t, _ in parts), n_classes), -np.inf)
    row = 0
    for part, _, _ in parts:
        logits[row:row + len(part), :part.shape[1]] = part
        row += len(part)
    return HeldOut(logits, np.concatenate([t for _, t, _ in parts]),
                   np.concatenate([np.asarray(f, np.float64) for _, _, f in parts]))
