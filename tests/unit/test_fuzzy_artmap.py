"""Fuzzy ARTMAP on imbalanced classes, its logits' calibration and its familiarity (issue 18)."""

import numpy as np

from edgelearn.explain.calibration import expected_calibration_error, fit_temperature
from edgelearn.learners import FuzzyArtmap, learner_from_state
from edgelearn.learners.base import softmax


def overlapping_classes(per_class: list[int], seed: int, rng: np.random.Generator, dim: int = 32):
    """ReLU-like features: a profile all classes share plus a smaller one of their own, times
    skewed per-image noise (like a backbone's features, classes overlap)."""
    profiles = np.random.default_rng(seed)
    centres = profiles.gamma(0.5, 1.0, dim) + 0.5 * profiles.gamma(0.5, 1.0, (len(per_class), dim))
    y = np.repeat(np.arange(len(per_class)), per_class)
    return centres[y] * rng.gamma(2.0, 0.5, (len(y), dim)), y


def test_a_class_holding_most_examples_does_not_absorb_the_others():
    rng = np.random.default_rng(102)
    X, y = overlapping_classes([300] + [20] * 5, seed=2, rng=rng)
    Xt, yt = overlapping_classes([40] * 6, seed=2, rng=rng)
    predicted = FuzzyArtmap().partial_fit(X, y).predict(Xt)
    minority_recall = np.mean([(predicted[yt == c] == c).mean() for c in range(1, 6)])
    assert minority_recall > 0.5  # 0.19 with a size-blind choice: most went to the big class


def held_out_logits(seed: int = 0):
    rng = np.random.default_rng(seed)
    X, y = overlapping_classes([60] * 4, seed=seed, rng=rng)
    Xh, yh = overlapping_classes([100] * 4, seed=seed, rng=rng)
    return FuzzyArtmap().partial_fit(X, y).predict_logits(Xh), yh


def test_temperature_scaling_calibrates_the_logits():
    logits, y = held_out_logits()
    temperature = fit_temperature(logits, y)
    assert 0.01 < temperature < 1000  # inside the search range, not stopped at a bound
    correct = logits.argmax(axis=1) == y
    assert expected_calibration_error(softmax(logits / temperature), correct) < 0.1


def test_familiarity_is_higher_for_what_was_learned():
    rng = np.random.default_rng(0)
    X, y = overlapping_classes([30] * 6, seed=0, rng=rng)
    known = y < 3
    learner = FuzzyArtmap().partial_fit(X[known], y[known])
    Xt, yt = overlapping_classes([30] * 6, seed=0, rng=rng)
    familiarity = learner._familiarity(Xt)
    assert familiarity.shape == (len(Xt),) and familiarity.dtype == np.float64
    assert familiarity[yt < 3].mean() > familiarity[yt >= 3].mean()
    # a learned box holds its one example: the largest familiarity that box can give
    one = FuzzyArtmap().partial_fit(X[:1], y[:1])
    assert one._familiarity(X[:1])[0] > one._familiarity(X[100:101])[0]


def test_a_package_saved_with_the_old_choice_and_temperature_still_loads():
    rng = np.random.default_rng(1)
    X, y = overlapping_classes([20] * 3, seed=1, rng=rng)
    state = FuzzyArtmap(choice=1e-3, temperature=0.02).partial_fit(X, y).state_dict()
    loaded = learner_from_state(state)
    assert (loaded.choice, loaded.temperature) == (1e-3, 0.02)
    assert (loaded.predict(X) == y).mean() > 0.5
