"""Unknown from the features: familiarity scores, held-out evidence, the threshold and the temperature it sets."""

import numpy as np
import pytest

from edgelearn.evaluation.openset import auroc, fpr_at_tpr
from edgelearn.knowledge import ImportPolicy, merge_packages, parse_package
from edgelearn.learners import LEARNERS, make_learner
from edgelearn.recognizer import Recognizer
from tests.conftest import blobs

FINGERPRINT = {"name": "tiny", "weights": "random:seed=0", "feature_dim": 16}


def known_and_unknown(per_class=10):
    """Three separable classes to learn, test images of them, and images of a fourth class never taught."""
    X, y = blobs(n_classes=3, per_class=per_class)
    test, test_labels = blobs(n_classes=3, per_class=10, seed=2)
    unknown, _ = blobs(n_classes=1, per_class=10, seed=1, offset=3)
    return X, y, test, test_labels, unknown


def recognizer(kind="ncm", **params) -> Recognizer:
    return Recognizer(None, make_learner(kind, **params), fingerprint=FINGERPRINT)


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_familiarity_is_higher_for_the_classes_learned(kind):
    X, y, test, _, unknown = known_and_unknown()
    learner = make_learner(kind).partial_fit(X, y)
    assert learner.familiarity(test).shape == (30,)
    assert auroc(learner.familiarity(test), learner.familiarity(unknown)) > 0.95


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ncm_leave_one_out_equals_a_model_that_never_learned_the_row(metric):
    X, y = blobs(n_classes=3, per_class=4)
    held = make_learner("ncm", metric=metric, temperature=1.0).learn_and_score(X, y)  # Euclidean's default
    assert len(held.targets) == 12  # temperature is the pooled variance, left as learned
    for i in (0, 5, 11):
        without = make_learner("ncm", metric=metric, temperature=1.0)
        without.partial_fit(np.delete(X, i, 0), np.delete(y, i))
        np.testing.assert_allclose(held.familiarity[i], without.familiarity(X[i:i + 1])[0], rtol=1e-9)
        np.testing.assert_allclose(held.logits[i], without.predict_logits(X[i:i + 1])[0], rtol=1e-5, atol=1e-3)


def test_a_class_with_one_example_gives_no_held_out_row():
    X, y = blobs(n_classes=2, per_class=3)
    held = make_learner("ncm").learn_and_score(X[:4], y[:4])  # c0 x3, c1 x1
    assert held.targets.tolist() == [0, 0, 0]


@pytest.mark.parametrize("kind", ["fuzzy_artmap"])  # NCM and SLDA have an exact leave-one-out instead
def test_prequential_rows_are_scored_before_they_are_learned(kind):
    X, y = blobs(n_classes=3, per_class=6)
    learner = make_learner(kind).partial_fit(X[:12], y[:12])  # c0 and c1
    before = make_learner(kind).partial_fit(X[:12], y[:12])
    batch = np.r_[X[12:15], X[:2] + 0.01]  # c2 is new, c0 known
    held = learner.learn_and_score(batch, ["c2"] * 3 + ["c0"] * 2, chunks=1)
    assert held.targets.tolist() == [0, 0] and held.logits.shape == (2, 3)  # the new class: not scored yet
    np.testing.assert_allclose(held.logits[:, :2], before.predict_logits(batch[3:]))
    assert np.isneginf(held.logits[:, 2]).all()  # the class did not exist when they were scored
    np.testing.assert_allclose(held.familiarity, before.familiarity(batch[3:]))
    assert learner.classes_ == ["c0", "c1", "c2"]


def test_an_unknown_part_is_unknown_though_the_max_probability_was_sure():
    X, y, test, test_labels, unknown = known_and_unknown()
    rec = recognizer("slda")
    rec.learn_features(X, y)
    assert rec.learner.predict_proba(unknown).max(axis=1).min() > 0.5  # the old rule (0.5) called them known
    answers = rec.predict_features(unknown, top_k=2)
    assert all(a.unknown and a.label is None for a in answers)
    assert all(len(a.alternatives) == 2 and a.alternatives[0][1] == a.confidence for a in answers)  # closest first
    known = rec.predict_features(test)
    # the threshold is the 5th percentile of held-out familiarity: about 1 in 20 known images falls below it
    assert sum(a.unknown for a in known) <= 3
    assert all(a.label == t for a, t in zip(known, test_labels, strict=True) if not a.unknown)
    assert min(a.familiarity for a in answers) < np.median([a.familiarity for a in known])


def test_calibration_exists_after_one_taught_batch_of_three_classes_by_ten():
    X, y, *_ = known_and_unknown()
    rec = recognizer("ncm")
    assert rec.info()["calibration"] == {"n": 0, "needed": 20, "calibrated": False}
    rec.learn_features(X, y)
    assert rec.info()["calibration"] == {"n": 30, "needed": 20, "calibrated": True}
    assert rec.temperature != 1.0


def test_the_threshold_is_the_5th_percentile_of_held_out_familiarity_and_travels_with_the_temperature():
    X, y, *_ = known_and_unknown()
    rec = recognizer("ncm")
    rec.learn_features(X[:2], y[:2])  # two held-out rows: too few to call anything unknown
    assert rec.info()["familiarity_threshold"] is None
    rec.learn_features(X[2:], y[2:])
    held = make_learner("ncm").learn_and_score(X[:2], y[:2]).familiarity
    record = np.r_[held, rec.evidence.familiarity[2:]]
    assert rec.info()["familiarity_threshold"] == pytest.approx(np.quantile(record, 0.05))
    loaded = Recognizer.from_bytes(rec.to_bytes(), with_backbone=False)
    assert loaded.info()["familiarity_threshold"] == rec.info()["familiarity_threshold"]
    assert loaded.temperature == rec.temperature and loaded.info()["calibration"]["calibrated"]


def test_merging_combines_the_evidence():
    X, y = blobs(n_classes=4, per_class=10)
    here, there = recognizer(), recognizer()
    here.learn_features(X[:20], y[:20])
    there.learn_features(X[20:], y[20:])
    both = np.sort(np.r_[here.evidence.familiarity, there.evidence.familiarity])
    package = merge_packages(there.to_bytes(), own=here.to_bytes(), policy=ImportPolicy(allow_unsigned=True))
    np.testing.assert_allclose(parse_package(package)[0]["calibration"]["familiarity"], both)
    np.testing.assert_allclose(np.sort(here.merge(there).evidence.familiarity), both)


def test_unknown_below_overrides_the_familiarity_rule():
    X, y, _, _, unknown = known_and_unknown()
    rec = recognizer("slda")
    rec.learn_features(X, y)
    rec.unknown_below = 0.0  # a user's setting: unknown only below this probability
    assert not any(a.unknown for a in rec.predict_features(unknown))
    rec.unknown_below = 1.01
    assert all(a.unknown for a in rec.predict_features(X[:3]))


def test_auroc_and_fpr_at_95_percent_of_known_kept():
    assert auroc([2, 3, 4], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5  # ties count half
    known = np.arange(100.0)  # the threshold that keeps 95 of them is 5
    assert fpr_at_tpr(known, np.array([4.0, 5.0, 6.0, -1.0])) == 0.5
