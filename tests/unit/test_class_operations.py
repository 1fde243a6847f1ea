"""A worker's class operations on the learners and the recognizer: rename, merge, forget."""

import numpy as np
import pytest

from edgelearn import Recognizer
from edgelearn.errors import ConflictError, NotFoundError, ParameterError
from edgelearn.learners import FuzzyArtmap, NearestClassMean, StreamingLDA

ALL = [StreamingLDA, NearestClassMean, FuzzyArtmap]


def blobs(n=12, d=6, seed=0):
    """Three separated clouds of non-negative features, labelled a, b, c (shuffled)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 3, size=(3, d))
    y = np.array(list("abc") * n)
    X = np.abs(centres[[ord(c) - ord("a") for c in y]] + rng.normal(0, 0.3, size=(len(y), d)))
    order = rng.permutation(len(y))
    return X[order], y[order]


def state(learner):
    return {name: getattr(learner, name) for name in learner._arrays}


@pytest.mark.parametrize("cls", [StreamingLDA, NearestClassMean])
def test_merging_classes_gives_exactly_the_learner_trained_with_the_merged_labels(cls):
    X, y = blobs()
    merged = cls().partial_fit(X[:20], y[:20]).partial_fit(X[20:], y[20:]).merge_classes("b", "a")
    trained = cls().partial_fit(X, np.where(y == "b", "a", y))
    assert sorted(merged.classes_) == sorted(trained.classes_) == ["a", "c"]
    order = [merged.classes_.index(c) for c in trained.classes_]
    merged._sync()
    trained._sync()
    for name, expected in state(trained).items():
        got = state(merged)[name]
        got = got[order] if got.shape[:1] == (len(order),) and name != "scatter_" else got
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(merged.predict_logits(X)[:, order], trained.predict_logits(X), rtol=1e-5, atol=1e-5)


def test_fuzzy_artmap_merge_relabels_the_source_categories():
    X, y = blobs()
    fam = FuzzyArtmap().partial_fit(X, y)
    boxes = fam.n_representations
    fam.merge_classes("b", "c")
    assert sorted(fam.classes_) == ["a", "c"]
    assert fam.n_representations == boxes
    assert set(fam.predict(X[y == "b"])) == {"c"}
    assert (fam.predict(X[y == "a"]) == "a").all()


@pytest.mark.parametrize("cls", ALL)
def test_rename_keeps_what_was_learned_under_the_new_name(cls):
    X, y = blobs()
    learner = cls().partial_fit(X, y)
    before = learner.predict(X)
    learner.rename_class("b", "Gas Pump")
    assert "b" not in learner.classes_ and "Gas Pump" in learner.classes_
    assert learner.predict(X).tolist() == np.where(before == "b", "Gas Pump", before).tolist()
    learner.partial_fit(X[:3], ["Gas Pump"] * 3)  # new examples join the renamed class
    assert len(learner.classes_) == 3


@pytest.mark.parametrize("cls", ALL)
def test_forgetting_a_class_leaves_the_other_classes_answers_as_they_were(cls):
    X, y = blobs()
    # plain LDA: with norm_prior the other classes move with the population centre the forgotten class leaves
    learner = (cls(norm_prior=0) if cls is StreamingLDA else cls()).partial_fit(X, y)
    keep = [learner.classes_.index(c) for c in learner.classes_ if c != "b"]
    logits = learner.predict_logits(X)[:, keep]
    learner.forget_class("b")
    assert "b" not in learner.classes_
    np.testing.assert_allclose(learner.predict_logits(X), logits, rtol=1e-5, atol=1e-5)
    assert set(learner.predict(X)) <= {"a", "c"}
    assert cls.check_state(learner.state_dict()) is None  # still a valid saved state


@pytest.mark.parametrize("cls", ALL)
def test_forgetting_the_last_class_leaves_a_learner_that_can_start_again(cls):
    X, y = blobs()
    learner = cls().partial_fit(X[y == "a"], y[y == "a"]).forget_class("a")
    assert not hasattr(learner, "classes_") and learner.state_dict().get("classes") is None
    assert learner.partial_fit(X, y).predict(X[:1]).shape == (1,)


@pytest.mark.parametrize("cls", ALL)
def test_class_operations_refuse_what_makes_no_sense(cls):
    X, y = blobs()
    learner = cls().partial_fit(X, y)
    with pytest.raises(NotFoundError, match="no class 'x'"):
        learner.rename_class("x", "y")
    with pytest.raises(ConflictError, match="merge"):
        learner.rename_class("a", "b")
    with pytest.raises(ParameterError, match="itself"):
        learner.merge_classes("a", "a")
    with pytest.raises(NotFoundError):
        learner.forget_class("x")
    assert sorted(learner.classes_) == ["a", "b", "c"]


def test_the_recognizer_keeps_its_example_counts_with_the_classes():
    X, y = blobs(n=4, d=8)
    rec = Recognizer(None, StreamingLDA(), fingerprint={}).learn_features(X, list(y))
    rec.rename_class("a", "A").merge_classes("b", "A")
    assert dict(rec.examples_seen) == {"A": 8, "c": 4}
    rec.forget_class("c")
    assert dict(rec.examples_seen) == {"A": 8} and rec.classes == ["A"]
