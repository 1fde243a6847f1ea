"""Fuzzy ARTMAP predicts on uint8 weights (issue 19 §4): the same winners as the float32 choice values,
every value within the rounding bound, and the uint8 form always that of the current weights."""

import numpy as np

from edgelearn.learners import FuzzyArtmap, learner_from_state
from edgelearn.learners.fuzzy_artmap import RESCORED, fuzzy_and_sums, l1_distances
from tests.unit.test_fuzzy_artmap import overlapping_classes


def float32_choices(fam: FuzzyArtmap, X) -> np.ndarray:
    """The choice values as computed before the uint8 form: float32 minima of every representation."""
    return fuzzy_and_sums(fam.weights_, fam._code(np.asarray(X, float))) / (fam._alpha + fam.weights_.sum(axis=1))


def trained(seed: int = 3, classes: int = 30, dim: int = 48):
    rng = np.random.default_rng(seed)
    X, y = overlapping_classes([15] * classes, seed=seed, rng=rng, dim=dim)
    Xt, yt = overlapping_classes([10] * classes, seed=seed, rng=rng, dim=dim)
    return FuzzyArtmap().partial_fit(X, y), Xt


def test_l1_distances_are_exact_for_uint8_rows():
    rng = np.random.default_rng(0)
    W, I = rng.integers(0, 256, (37, 300), dtype=np.uint8), rng.integers(0, 256, (5, 300), dtype=np.uint8)
    expected = np.abs(I[:, None, :].astype(np.int64) - W[None].astype(np.int64)).sum(axis=2)
    np.testing.assert_array_equal(l1_distances(W, I), expected)
    assert l1_distances(W[:0], I).shape == (5, 0)


def test_choices_stay_within_the_rounding_bound_and_the_winner_is_the_float32_ones():
    fam, Xt = trained()
    assert fam.n_representations > 4 * RESCORED  # most representations are scored on uint8 only
    fast, exact = fam._choices(Xt), float32_choices(fam, Xt)
    bound = fam.n_features_in_ / 255 / (fam._alpha + fam.weights_.sum(axis=1))  # 1/510 per coded feature
    assert (np.abs(fast - exact) <= bound).all()
    rows = np.arange(len(Xt))
    np.testing.assert_array_equal(fast.argmax(axis=1), exact.argmax(axis=1))
    np.testing.assert_allclose(fast[rows, fast.argmax(axis=1)], exact[rows, exact.argmax(axis=1)], rtol=1e-6)
    order = np.argsort(-exact, axis=1)[:, 0]
    assert (fam.predict(Xt) == np.asarray(fam.classes_)[fam.category_class_[order]]).all()


def test_the_uint8_form_follows_learning_merging_consolidation_and_loading():
    fam, Xt = trained(seed=4, classes=12)

    def agrees(model):
        return (model._choices(Xt).argmax(axis=1) == float32_choices(model, Xt).argmax(axis=1)).all()

    fam.predict(Xt)  # makes the uint8 form
    frozen, before = fam.snapshot(), fam.predict(Xt)
    more, _ = trained(seed=5, classes=12)
    fam.partial_fit(Xt[::3], np.arange(len(Xt))[::3] % 12)  # moves boxes in place
    assert agrees(fam)
    assert (frozen.predict(Xt) == before).all()  # a snapshot keeps the form of its own weights
    fam.merge(more)
    assert agrees(fam)
    fam.consolidate()
    assert agrees(fam)
    fam.forget_class(fam.classes_[0])
    assert agrees(fam)
    loaded = learner_from_state(fam.state_dict())
    assert (loaded.predict(Xt) == fam.predict(Xt)).all() and agrees(loaded)


def test_a_snapshot_is_made_with_the_uint8_form_of_its_own_weights():
    fam, Xt = trained(seed=6, classes=12)
    frozen = fam.snapshot()
    assert frozen.__dict__.get("_uint8") is not None  # made at the snapshot, not on its first prediction
    np.testing.assert_array_equal(frozen._uint8.weights, np.rint(frozen.weights_ * 255).astype(np.uint8))
    before = frozen.predict(Xt)
    fam.partial_fit(Xt[::2], np.arange(len(Xt))[::2] % 12)
    assert (frozen.predict(Xt) == before).all() and frozen._uint8 is not fam._quantized()


def test_one_row_at_a_time_scores_as_a_batch():
    fam, Xt = trained(seed=7, classes=20)
    batch = fam.predict_logits(Xt[:12])
    np.testing.assert_array_equal(np.vstack([fam.predict_logits(row[None]) for row in Xt[:12]]), batch)
    assert list(fam.predict(Xt[:12])) == [fam.predict(row[None])[0] for row in Xt[:12]]
    assert fam.predict(Xt[:0]).shape == (0,)


def test_each_class_scores_its_best_representation_consolidated_or_not():
    fam, Xt = trained(seed=8, classes=10)
    consolidated = learner_from_state(fam.state_dict()).consolidate()
    assert consolidated._quantized().one_each and not fam._quantized().one_each
    for model in (fam, consolidated):
        choices = model._choices(Xt)
        expected = np.stack([choices[:, model.category_class_ == c].max(axis=1)
                             for c in range(len(model.classes_))], axis=1)
        np.testing.assert_array_equal(model._scores(Xt), expected)
