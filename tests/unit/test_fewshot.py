"""SLDA with few examples per class: norm_prior, familiarity and exact leave-one-out (issue 18, section 2)."""

import numpy as np
import pytest

from edgelearn.errors import ModelFileError
from edgelearn.learners import StreamingLDA, learner_from_state


def blobs(seed: int, new_examples: int, d: int = 64, classes: int = 6):
    """``classes - 1`` classes with 100 examples, the last with ``new_examples``; 50 test rows each.
    Anisotropic noise much larger than a single example can average away, as on real features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 0.6 + 3
    scale = np.linspace(0.3, 1.5, d)

    def draw(c, n):
        return centres[c] + rng.normal(size=(n, d)) * scale

    counts = [100] * (classes - 1) + [new_examples]
    X = np.vstack([draw(c, n) for c, n in enumerate(counts)])
    Xt = np.vstack([draw(c, 50) for c in range(classes)])
    return X, np.repeat(np.arange(classes), counts), Xt, np.repeat(np.arange(classes), 50)


def new_class_recall(learner, seeds=range(3)) -> tuple[float, float]:
    recall, old = [], []
    for seed in seeds:
        X, y, Xt, yt = blobs(seed, 1)
        pred = learner.partial_fit(X, y).predict(Xt)
        new = yt == yt.max()
        recall.append((pred[new] == yt.max()).mean())
        old.append((pred[~new] == yt[~new]).mean())
        learner = type(learner)(**learner.get_params())
    return float(np.mean(recall)), float(np.mean(old))


def test_the_default_recognises_a_class_taught_once_and_keeps_the_old_ones():
    recall, old = new_class_recall(StreamingLDA())
    plain_recall, plain_old = new_class_recall(StreamingLDA(norm_prior=0))
    assert plain_recall < 0.3  # plain LDA: a one-example mean carries a whole example's noise
    assert recall >= 0.6
    assert old >= plain_old - 0.01


def test_a_state_saved_before_norm_prior_existed_loads_with_the_default():
    X, y, Xt, _ = blobs(0, 3)
    slda = StreamingLDA().partial_fit(X, y)
    state = slda.state_dict()
    del state["params"]["norm_prior"]
    StreamingLDA.check_state(state)
    np.testing.assert_array_equal(learner_from_state(state).predict(Xt), slda.predict(Xt))
    with pytest.raises(ModelFileError, match="norm_prior"):
        StreamingLDA.check_state({**state, "params": {**state["params"], "norm_prior": -1.0}})


def test_familiarity_is_higher_for_learned_classes_than_for_others():
    X, y, Xt, yt = blobs(2, 100)
    known = y < 4
    slda = StreamingLDA().partial_fit(X[known], y[known])
    score = slda._familiarity(Xt)
    auroc = (score[yt < 4][:, None] > score[yt >= 4][None]).mean()  # P(known scores above unknown)
    assert auroc > 0.95
    snapshot = slda.snapshot()
    slda.partial_fit(X[~known], y[~known])  # learning on does not change what the snapshot says
    np.testing.assert_array_equal(snapshot._familiarity(Xt), score)
    one_class = StreamingLDA().partial_fit(X[y == 0], y[y == 0])  # no population centre: the origin
    assert np.isfinite(one_class._familiarity(Xt)).all()


def refit_class_scores(slda, X, y, i):
    """Row i's logits from a learner refitted without row i, scored with ``slda``'s shared covariance,
    centre and average distance (what the leave-one-out of the logits keeps), and that refit."""
    rest = np.delete(np.arange(len(X)), i)
    refit = StreamingLDA(**slda.get_params()).partial_fit(X[rest], y[rest])
    refit._weights()
    shared = slda._shared
    offset = refit.means_ - shared.centre
    p_offset = shared.whiten(offset)
    distance = np.sqrt((offset * p_offset).sum(axis=1))
    W, b = slda._class_weights(refit.counts_, offset, p_offset, distance)
    x = refit._prepare(X[i:i + 1])
    return (x @ W.T + b)[0], refit


@pytest.mark.parametrize("norm_prior", [30.0, 0.0])
def test_held_out_equals_refitting_without_the_row(norm_prior):
    X, y, _, _ = blobs(3, 2, d=16, classes=4)
    y = y.astype(str)
    slda = StreamingLDA(norm_prior=norm_prior)
    slda.partial_fit(X[:200], y[:200])
    slda.partial_fit(X[200:], y[200:])
    idx = np.array([slda.classes_.index(c) for c in y[200:]])
    scored, logits, familiarity = slda._held_out(X[200:], idx)
    assert scored.all()  # every row's class has another example (the new class has two)
    for row, i in enumerate(range(200, len(X))):
        ref_logits, refit = refit_class_scores(slda, X, y, i)
        np.testing.assert_allclose(logits[row], ref_logits, rtol=1e-4, atol=1e-4 * np.abs(ref_logits).max())
        # familiarity takes the row out of the covariance too: it matches the genuine refit's
        assert familiarity[row] == pytest.approx(refit.familiarity(X[i:i + 1])[0], abs=1e-2)
        # the genuine refit (its covariance without the row too) agrees closely: the shared part barely moves
        true = refit.predict_logits(X[i:i + 1])[0]
        np.testing.assert_allclose(logits[row], true, rtol=0.05, atol=0.05 * np.abs(true).max())


def test_held_out_skips_a_class_seen_once():
    X, y, _, _ = blobs(4, 1, d=16, classes=3)
    slda = StreamingLDA().partial_fit(X, y)
    scored, logits, familiarity = slda._held_out(X[-3:], y[-3:])
    assert scored.tolist() == [True, True, False]
    assert logits.shape == (2, 3) and familiarity.shape == (2,)
