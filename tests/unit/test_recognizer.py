import os

import numpy as np
import pytest
from PIL import Image

from edgelearn.backbones import build_backbone
from edgelearn.data import FolderDataset
from edgelearn.errors import IncompatibleError, LabelError, ModelFileError
from edgelearn.labels import check_label
from edgelearn.recognizer import Recognizer, rollup
from tests.conftest import COLOURS


@pytest.fixture
def trained(image_folder):
    rec = Recognizer.create("tiny", learner="ncm", weights="random")
    train = FolderDataset.scan(image_folder, "train")
    return rec.learn(train.paths, train.labels), FolderDataset.scan(image_folder, "test")


def test_learns_colours_and_reports_alternatives(trained):
    rec, test = trained
    predictions = rec.predict(test.paths, top_k=3)
    assert [p.label for p in predictions] == list(test.labels)
    for p in predictions:
        assert 0 < p.confidence <= 1 and len(p.alternatives) == 2
        assert p.confidence >= p.alternatives[0][1] >= p.alternatives[1][1]
        assert p.label not in [a for a, _ in p.alternatives]


def test_save_load_round_trip_keeps_predictions_and_no_images(trained, tmp_path):
    rec, test = trained
    path = rec.save(tmp_path / "m.edge")
    loaded = Recognizer.load(path)
    X = rec.embed(test.paths)
    np.testing.assert_allclose(loaded.learner.predict_proba(X), rec.learner.predict_proba(X))
    assert loaded.examples_seen == rec.examples_seen
    assert path.stat().st_size < 10_000  # three class means and a manifest: no images inside
    assert path.stat().st_mode & 0o777 == 0o644  # a package is meant to be shared; keys alone are private


def test_another_backbone_is_refused(trained, tmp_path):
    rec, _ = trained
    path = rec.save(tmp_path / "m.edge")
    with pytest.raises(IncompatibleError, match="weights"):
        Recognizer.load(path, backbone=build_backbone("tiny", weights="random", seed=1))
    with pytest.raises(IncompatibleError, match="input_size"):
        Recognizer.load(path, backbone=build_backbone("tiny", weights="random", input_size=48))


def test_damaged_files_are_refused(trained, tmp_path):
    rec, _ = trained
    data = rec.save(tmp_path / "m.edge").read_bytes()
    (tmp_path / "cut.edge").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        Recognizer.load(tmp_path / "cut.edge")
    (tmp_path / "junk.edge").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError):
        Recognizer.load(tmp_path / "junk.edge")
    with pytest.raises(ModelFileError, match="no such file"):
        Recognizer.load(tmp_path / "missing.edge")


def test_crash_during_save_keeps_the_previous_file(trained, tmp_path, monkeypatch):
    rec, test = trained
    path = rec.save(tmp_path / "models" / "m.edge")
    before = path.read_bytes()
    rec.learn([Image.new("RGB", (32, 32), "white")], ["white"])

    def crash(*args):
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        rec.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["m.edge"]  # no temp file left behind


def test_concept_paths_roll_up(image_folder):
    from tests.conftest import make_image_folder

    root = make_image_folder(image_folder.parent / "nested", nested=True)
    train = FolderDataset.scan(root, "train")
    assert set(train.labels) == {f"colours/{c}" for c in COLOURS}
    rec = Recognizer.create("tiny", learner="slda", weights="random").learn(train.paths, train.labels)
    rec.learn([Image.new("RGB", (40, 40), "white")], ["shades/white"])
    assert rec.concepts() == {"colours": {c: {} for c in sorted(COLOURS)}, "shades": {"white": {}}}
    top = rec.predict(train.paths[:1], level=1)[0]
    assert top.label == "colours" and top.alternatives[0][0] == "shades"


def test_rollup_sums_leaf_probabilities():
    names, proba = rollup(["a/x", "a/y", "b"], np.array([[0.2, 0.3, 0.5]]), level=1)
    assert names == ["a", "b"]
    np.testing.assert_allclose(proba, [[0.5, 0.5]])


def test_unknown_below_threshold_and_bad_labels(trained):
    rec, test = trained
    rec.learner.unknown_threshold = 1.1  # nothing is that certain
    unknown = rec.predict(test.paths[:1], top_k=2)[0]
    assert unknown.label is None
    assert len(unknown.alternatives) == 2 and unknown.alternatives[0][1] == unknown.confidence  # best first
    with pytest.raises(ValueError, match="invalid label"):
        rec.learn([Image.new("RGB", (8, 8))], ["a//b"])


@pytest.mark.parametrize("bad", ["", " / ", "a//b", "a/./b", "..", "x" * 201, "/".join("a" * 17),
                                 "bolt\u202egnp", "line\nbreak", "nul\x00", "zero\u200bwidth", None, 1.5])
def test_the_label_rule_refuses_what_cannot_be_a_class_name(bad):
    with pytest.raises(LabelError, match="invalid label"):
        check_label(bad)


def test_the_label_rule_keeps_ordinary_names():
    assert check_label(" Schraube M8 / Linsenkopf ") == "Schraube M8 / Linsenkopf"
    assert check_label("/".join("a" * 16)) == "/".join("a" * 16)
    assert check_label("x" * 200) == "x" * 200
    assert check_label(7) == "7"


@pytest.mark.parametrize("learner", ["slda", "ncm", "fuzzy_artmap"])
def test_an_empty_recognizer_round_trips_through_bytes(learner):
    rec = Recognizer.create("tiny", learner=learner, weights="random")
    again = Recognizer.from_bytes(rec.to_bytes(), backbone=rec.backbone)
    assert again.classes == [] and again.learner.kind == rec.learner.kind
    again.learn([Image.new("RGB", (32, 32), "red")], ["red"])
    assert again.classes == ["red"]


def test_calibration_temperature_is_fitted_on_held_out_data_and_saved(trained, tmp_path):
    rec, test = trained
    X = rec.embed(test.paths)
    before = rec.predict_proba(X)[1].max(axis=1)
    t = rec.calibrate(X, test.labels)
    assert t > 0 and rec.temperature == t
    after = rec.predict_proba(X)[1].max(axis=1)
    assert not np.allclose(before, after)
    assert (rec.predict_proba(X)[1].argmax(1) == rec.learner.predict_proba(X).argmax(1)).all()  # same decisions
    rec.save(tmp_path / "c.edge")
    assert Recognizer.load(tmp_path / "c.edge").temperature == t
    with pytest.raises(ValueError, match="known class"):
        rec.calibrate(X[:1], ["never-seen"])
