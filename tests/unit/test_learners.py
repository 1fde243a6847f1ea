"""The Learner protocol, checked for every learner (river's checks / sklearn's parametrize_with_checks)."""

import numpy as np
import pytest

from edgelearn.errors import IncompatibleError, NotFittedError
from edgelearn.learners import LEARNERS, FuzzyArtmap, NearestClassMean, StreamingLDA, learner_from_state, make_learner
from tests.conftest import blobs

ALL = sorted(LEARNERS)
EXACT = ["slda", "ncm"]  # sufficient-statistic learners: merging and chunking are exact


@pytest.fixture(params=ALL)
def kind(request):
    return request.param


def accuracy(learner, X, y):
    return float((learner.predict(X) == y).mean())


def test_proba_is_a_distribution(kind):
    X, y = blobs()
    learner = make_learner(kind).partial_fit(X, y)
    proba = learner.predict_proba(X)
    assert proba.shape == (len(X), 4)
    assert np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(np.asarray(learner.classes_)[proba.argmax(1)]) == list(learner.predict(X))


def test_inputs_are_not_mutated(kind):
    X, y = blobs()
    X0, y0 = X.copy(), y.copy()
    learner = make_learner(kind).partial_fit(X, y)
    learner.predict_proba(X)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_classes_arriving_step_by_step_are_not_forgotten(kind):
    X, y = blobs(n_classes=6)
    learner = make_learner(kind)
    for step in range(3):  # two new classes per step
        mask = np.isin(y, [f"c{2 * step}", f"c{2 * step + 1}"])
        learner.partial_fit(X[mask], y[mask])
        assert len(learner.classes_) == 2 * (step + 1)
    X_test, y_test = blobs(n_classes=6, seed=1)
    assert accuracy(learner, X_test, y_test) >= 0.95
    first = np.isin(y_test, ["c0", "c1"])
    assert accuracy(learner, X_test[first], y_test[first]) >= 0.95


def test_state_round_trip(kind):
    X, y = blobs()
    learner = make_learner(kind).partial_fit(X, y)
    state = learner.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state["arrays"].values())
    clone = learner_from_state(state)
    np.testing.assert_allclose(clone.predict_proba(X), learner.predict_proba(X))
    assert clone.get_params() == learner.get_params()
    assert clone.nbytes == learner.nbytes > 0


def test_unfitted_and_wrong_width_are_refused(kind):
    learner = make_learner(kind)
    with pytest.raises(NotFittedError):
        learner.predict(np.zeros((1, 16)))
    learner.partial_fit(*blobs())
    with pytest.raises(ValueError, match="16 features"):
        learner.predict(np.zeros((1, 8)))
    with pytest.raises(ValueError, match="NaN"):
        learner.partial_fit(np.full((1, 16), np.nan), ["c0"])


def test_unknown_threshold_rejects_uncertain_inputs(kind):
    X, y = blobs()
    learner = make_learner(kind, unknown_threshold=0.9, unknown_label="unknown").partial_fit(X, y)
    t = np.linspace(0, 1, 201)[:, None]  # walk from class c0 to class c1 across the boundary
    path = (1 - t) * X[y == "c0"].mean(0) + t * X[y == "c1"].mean(0)
    at_boundary = path[learner.predict_proba(path).max(axis=1).argmin()]
    assert learner.predict(at_boundary[None])[0] == "unknown"
    assert learner.predict(X[:1])[0] == "c0"


def test_merged_sites_classify_every_site_classes(kind):
    X, y = blobs(n_classes=6)
    left, right = np.isin(y, ["c0", "c1", "c2"]), np.isin(y, ["c3", "c4", "c5"])
    a = make_learner(kind).partial_fit(X[left], y[left])
    b = make_learner(kind).partial_fit(X[right], y[right])
    a.merge(b)
    X_test, y_test = blobs(n_classes=6, seed=2)
    assert sorted(a.classes_) == [f"c{k}" for k in range(6)]
    assert accuracy(a, X_test, y_test) >= 0.95


def test_merge_is_commutative(kind):
    X, y = blobs(n_classes=4)
    halves = [np.isin(y, ["c0", "c1"]), np.isin(y, ["c1", "c2", "c3"])]
    def site(m):
        return make_learner(kind).partial_fit(X[m], y[m])
    ab, ba = site(halves[0]).merge(site(halves[1])), site(halves[1]).merge(site(halves[0]))
    X_test, _ = blobs(n_classes=4, seed=3)
    order = [ba.classes_.index(c) for c in ab.classes_]
    np.testing.assert_allclose(ab.predict_scores(X_test), ba.predict_scores(X_test)[:, order], atol=1e-6)


def test_merge_refuses_other_kinds_and_widths(kind):
    X, y = blobs()
    learner = make_learner(kind).partial_fit(X, y)
    other_kind = next(k for k in ALL if k != kind)
    with pytest.raises(IncompatibleError):
        learner.merge(make_learner(other_kind).partial_fit(X, y))
    with pytest.raises(IncompatibleError, match="8-d"):
        learner.merge(make_learner(kind).partial_fit(X[:, :8], y))


@pytest.mark.parametrize("kind", EXACT)
def test_merging_halves_equals_training_on_all(kind):
    X, y = blobs(n_classes=5, per_class=40)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))  # the halves share classes: an exact merge must pool them
    a = make_learner(kind).partial_fit(X[order[:90]], y[order[:90]])
    b = make_learner(kind).partial_fit(X[order[90:]], y[order[90:]])
    merged = a.merge(b)
    whole = make_learner(kind).partial_fit(X, y)
    perm = [merged.classes_.index(c) for c in whole.classes_]
    mine_state, their_state = merged.state_dict()["arrays"], whole.state_dict()["arrays"]
    for name in mine_state:
        mine, theirs = mine_state[name], their_state[name]
        if mine.ndim >= 1 and mine.shape[0] == len(perm):
            mine = mine[perm]
        np.testing.assert_allclose(mine, theirs, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(merged.predict_proba(X)[:, perm], whole.predict_proba(X), atol=1e-6)


@pytest.mark.parametrize("kind", EXACT)
def test_chunked_and_one_at_a_time_equal_one_batch(kind):
    X, y = blobs()
    whole = make_learner(kind).partial_fit(X, y)
    stream = make_learner(kind)
    for i in np.random.default_rng(0).permutation(len(X)):
        stream.partial_fit(X[i:i + 1], y[i:i + 1])
    perm = [stream.classes_.index(c) for c in whole.classes_]
    np.testing.assert_allclose(stream.predict_proba(X)[:, perm], whole.predict_proba(X), atol=1e-6)


def test_fuzzy_artmap_match_tracking_separates_close_classes():
    # b lies inside a's box at rho = 0.5, so without match tracking it would join a's representation
    fam = FuzzyArtmap(rho=0.5).partial_fit([[0.9, 0.1], [0.8, 0.2]], ["a", "b"])
    assert fam.n_representations == 2
    assert fam.predict([[0.9, 0.1], [0.8, 0.2]]).tolist() == ["a", "b"]


def test_fuzzy_artmap_resonance_updates_instead_of_growing():
    fam = FuzzyArtmap(rho=0.5, learning_rate=0.2).partial_fit([[1.0, 0.0, 0.5]], ["a"])
    w0 = fam.weights_[0].copy()
    fam.partial_fit([[0.9, 0.0, 0.5]], ["a"])
    assert fam.n_representations == 1
    assert fam.category_count_[0] == 2
    assert np.all(fam.weights_[0] <= w0) and not np.allclose(fam.weights_[0], w0)  # box grows


@pytest.mark.parametrize("strategy", ["union", "mean"])
def test_fuzzy_artmap_consolidation_shrinks_memory_and_keeps_accuracy(strategy):
    X, y = blobs(n_classes=5, spread=0.8)
    fam = FuzzyArtmap(rho=0.85).partial_fit(X, y)
    assert fam.n_representations > 5
    before = fam.nbytes
    X_test, y_test = blobs(n_classes=5, spread=0.8, seed=4)
    fam.consolidate(strategy, max_per_class=2)
    assert fam.n_representations <= 10
    fam.consolidate(strategy)
    assert fam.n_representations == 5 and fam.nbytes < before
    assert accuracy(fam, X_test, y_test) >= 0.9


def test_fuzzy_artmap_union_consolidation_is_the_fuzzy_and():
    fam = FuzzyArtmap(rho=0.99).partial_fit([[1.0, 0.2], [0.4, 0.6]], ["a", "a"])
    assert fam.n_representations == 2
    expected = np.minimum(fam.weights_[0], fam.weights_[1])
    np.testing.assert_allclose(fam.consolidate("union").weights_[0], expected)


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="rho"):
        FuzzyArtmap(rho=1.5).partial_fit([[0.1, 0.2]], ["a"])
    with pytest.raises(ValueError, match="metric"):
        NearestClassMean(metric="manhattan").partial_fit([[0.1, 0.2]], ["a"])
    with pytest.raises(ValueError, match="shrinkage"):
        StreamingLDA(shrinkage=2).partial_fit([[0.1, 0.2]], ["a"])
    with pytest.raises(ValueError, match="unknown learner"):
        make_learner("svm")


def test_the_papers_literal_updater_grows_more_representations():
    X, y = blobs(n_classes=5, spread=1.0, dim=64, per_class=40)  # overlapping classes
    order = np.random.default_rng(0).permutation(len(X))
    tracking = FuzzyArtmap().partial_fit(X[order], y[order])
    literal = FuzzyArtmap(match_tracking=False).partial_fit(X[order], y[order])
    assert literal.n_representations > 2 * tracking.n_representations


def test_snapshots_predict_as_the_learner_did_and_ignore_later_learning(kind):
    X, y = blobs(n_classes=4, per_class=20)
    first = np.isin(y, np.unique(y)[:3])
    learner = make_learner(kind).partial_fit(X[first], y[first])
    logits, gradient = learner.predict_logits(X), learner.logit_gradient(X[:3], y[0])
    frozen = learner.snapshot()
    learner.partial_fit(X, y)  # more examples of every class, and a new one
    assert len(frozen.classes_) == 3 and len(learner.classes_) == 4
    np.testing.assert_array_equal(frozen.predict_logits(X), logits)
    np.testing.assert_array_equal(frozen.logit_gradient(X[:3], y[0]), gradient)
    np.testing.assert_array_equal(learner.snapshot().predict_logits(X), learner.predict_logits(X))


@pytest.mark.parametrize("shrinkage", [0.5, 0.05, 1e-3])
def test_slda_weights_equal_the_float64_solve(shrinkage):  # norm_prior=0: plain LDA, as before it existed
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 256)) ** 2  # non-negative, skewed, fewer examples than a full-rank scatter needs
    y = rng.integers(0, 10, len(X))
    X[:, :10] += np.eye(10)[y] * 2
    slda = StreamingLDA(shrinkage, norm_prior=0).partial_fit(X, y)
    slda._flush()
    d, n = X.shape[1], slda.counts_.sum()
    cov = slda.scatter_ / n
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    W64 = np.linalg.solve(cov, slda.means_.T).T
    b64 = -0.5 * (W64 * slda.means_).sum(axis=1)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    logits64 = U @ W64.T + b64
    W, b = slda._weights()
    np.testing.assert_allclose(W, W64, rtol=1e-5, atol=1e-5 * np.abs(W64).max())
    np.testing.assert_allclose(slda.predict_logits(X), logits64, rtol=1e-4, atol=1e-4 * np.abs(logits64).max())
    np.testing.assert_array_equal(slda.predict_logits(X).argmax(1), logits64.argmax(1))
