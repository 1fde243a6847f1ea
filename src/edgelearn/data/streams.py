"""Class-incremental streams: classes arrive in steps, every example is seen once."""

import numpy as np

from edgelearn.errors import ParameterError


def class_incremental_steps(labels, n_steps: int, seed: int = 0) -> list[np.ndarray]:
    """Split example indices into ``n_steps`` steps of a class-incremental stream.

    Classes are put in a seeded random order. With ``n_steps <= n_classes`` each step brings a
    group of whole classes; with more steps than classes the class-ordered stream is cut into
    ``n_steps`` equal pieces (a class may then span two steps, as in the paper's 20 steps).
    Examples are shuffled within each step.

    Examples
    --------
    >>> steps = class_incremental_steps(["a", "a", "b", "b", "c", "c"], 3, seed=1)
    >>> [sorted({["a", "a", "b", "b", "c", "c"][i] for i in s}) for s in steps]
    [['a'], ['b'], ['c']]
    """
    labels = np.asarray(labels)
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    if n_steps > len(labels):
        raise ParameterError(f"cannot split {len(labels)} examples into {n_steps} steps")
    if n_steps <= len(classes):
        groups = np.array_split(classes, n_steps)
        steps = [np.flatnonzero(np.isin(labels, g)) for g in groups]
    else:
        ordered = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in classes])
        steps = np.array_split(ordered, n_steps)
    return [rng.permutation(s) for s in steps]
