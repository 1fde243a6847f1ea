"""Knowledge packages: integrity, signatures, compatibility, and merging sites."""

import json

import numpy as np
import pytest

from edgelearn.errors import IncompatibleError, ModelFileError, SignatureError
from edgelearn.files import atomic_write_bytes, container_bytes, read_container
from edgelearn.knowledge import ImportPolicy, SiteKey, TrustStore
from edgelearn.learners import make_learner
from edgelearn.recognizer import Recognizer
from tests.conftest import blobs

FINGERPRINT = {"name": "tiny", "weights": "random:seed=0", "feature_dim": 16}


def site(kind="slda", classes=("c0", "c1"), seed=0, fingerprint=FINGERPRINT):
    """A site's recognizer (fast memory only) that learned ``classes`` from blob features."""
    X, y = blobs(n_classes=6, seed=seed)
    keep = np.isin(y, classes)
    rec = Recognizer(None, make_learner(kind), fingerprint=fingerprint)
    return rec.learn_features(X[keep], y[keep])


def load(path, **kw):
    return Recognizer.load(path, with_backbone=False, **kw)


@pytest.fixture
def keys(tmp_path):
    a, b = SiteKey.generate("plant-a"), SiteKey.generate("plant-b")
    a.save(tmp_path / "keys")
    b.save(tmp_path / "other")
    return a, b, TrustStore.load(tmp_path / "keys")


def test_signed_package_from_a_trusted_site_loads(tmp_path, keys):
    a, _, trust = keys
    path = site().save(tmp_path / "a.edge", key=a)
    manifest, _ = read_container(path)
    assert manifest["site"] == "plant-a" and manifest["signature"]["algorithm"] == "ed25519"
    assert load(path, policy=ImportPolicy(trust)).classes == ["c0", "c1"]


def test_untrusted_signer_unsigned_and_resigned_packages_are_refused(tmp_path, keys):
    _, b, trust = keys
    with pytest.raises(SignatureError, match="not in the trust list"):
        load(site().save(tmp_path / "b.edge", key=b), policy=ImportPolicy(trust))
    with pytest.raises(SignatureError, match="not signed"):
        load(site().save(tmp_path / "u.edge"), policy=ImportPolicy(trust))
    # someone edits a signed package and fixes the integrity hash, but cannot sign as plant-a
    a = keys[0]
    path = site().save(tmp_path / "a.edge", key=a)
    manifest, arrays = read_container(path)
    manifest["learner"]["classes"] = ["c0", "intruder"]
    from edgelearn.knowledge.package import digest

    manifest["integrity"]["sha256"] = digest(manifest, arrays)
    atomic_write_bytes(path, container_bytes(manifest, arrays))
    with pytest.raises(SignatureError, match="altered"):
        load(path, policy=ImportPolicy(trust))


def test_every_flipped_byte_is_refused(tmp_path):
    data = site().save(tmp_path / "p.edge").read_bytes()
    rng = np.random.default_rng(0)
    for position in rng.choice(len(data), 40, replace=False):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        (tmp_path / "d.edge").write_bytes(bytes(damaged))
        with pytest.raises(ModelFileError):
            load(tmp_path / "d.edge")


def test_unknown_version_and_absurd_sizes_are_refused(tmp_path):
    path = site().save(tmp_path / "p.edge")
    manifest, arrays = read_container(path)
    atomic_write_bytes(tmp_path / "v.edge", container_bytes({**manifest, "version": 99}, arrays))
    with pytest.raises(ModelFileError, match="version 99"):
        load(tmp_path / "v.edge")
    manifest["learner"]["classes"] = [f"c{i}" for i in range(200_000)]
    atomic_write_bytes(tmp_path / "big.edge", container_bytes(manifest, arrays))
    with pytest.raises(ModelFileError, match="implausible"):
        load(tmp_path / "big.edge")


def test_incompatible_knowledge_is_refused(tmp_path):
    with pytest.raises(IncompatibleError, match="weights"):
        site().merge(site(fingerprint={**FINGERPRINT, "weights": "sha-of-other-weights"}))
    with pytest.raises(IncompatibleError, match="fuzzy_artmap"):
        site("slda").merge(site("fuzzy_artmap"))


@pytest.mark.parametrize("kind", ["slda", "ncm", "fuzzy_artmap"])
def test_sites_merge_in_any_order_and_share_labels(tmp_path, kind):
    parts = [("c0", "c1"), ("c2", "c3"), ("c1", "c4", "c5")]  # c1 is taught at two sites
    paths = [site(kind, c, seed=i).save(tmp_path / f"s{i}.edge", site=f"s{i}") for i, c in enumerate(parts)]
    forward = load(paths[0]).merge(load(paths[1]), load(paths[2]))
    backward = load(paths[2]).merge(load(paths[1]), load(paths[0]))
    assert sorted(forward.classes) == [f"c{k}" for k in range(6)]  # one class c1, not two
    X, y = blobs(n_classes=6, seed=9)
    order = [backward.classes.index(c) for c in forward.classes]
    np.testing.assert_allclose(forward.learner.predict_proba(X), backward.learner.predict_proba(X)[:, order],
                               atol=1e-6)
    assert np.mean(forward.learner.predict(X) == y) >= 0.95
    assert {s["site"] for s in forward.sources} == {"s0", "s1", "s2"}


@pytest.mark.parametrize("kind", ["slda", "ncm"])
def test_merging_sites_equals_learning_everything_in_one_place(tmp_path, kind):
    parts = [("c0", "c1"), ("c2", "c3"), ("c1", "c4", "c5")]
    merged = load(site(kind, parts[0], seed=0).save(tmp_path / "0.edge"))
    for i, c in enumerate(parts[1:], start=1):
        merged.merge(load(site(kind, c, seed=i).save(tmp_path / f"{i}.edge")))
    central = Recognizer(None, make_learner(kind), fingerprint=FINGERPRINT)
    for i, c in enumerate(parts):
        X, y = blobs(n_classes=6, seed=i)
        keep = np.isin(y, c)
        central.learn_features(X[keep], y[keep])
    X, _ = blobs(n_classes=6, seed=9)
    order = [merged.classes.index(c) for c in central.classes]
    np.testing.assert_allclose(merged.learner.predict_proba(X)[:, order], central.learner.predict_proba(X),
                               atol=1e-6)


def test_cli_keys_learn_sign_and_merge(tmp_path, image_folder):
    from typer.testing import CliRunner

    from edgelearn.cli import app

    runner = CliRunner()
    tiny = ["--backbone", "tiny", "--weights", "random"]
    for name in ("a", "b"):
        assert runner.invoke(app, ["keys", "new", name, "--dir", str(tmp_path / name)]).exit_code == 0
    (tmp_path / "trust").mkdir()
    for name in ("a", "b"):
        (tmp_path / "trust" / f"{name}.pub").write_bytes((tmp_path / name / f"{name}.pub").read_bytes())
    for name in ("a", "b"):
        result = runner.invoke(app, ["learn", str(image_folder), "-o", str(tmp_path / f"{name}.edge"),
                                     "--key", str(tmp_path / name / f"{name}.key"), *tiny])
        assert result.exit_code == 0, result.output
    packages = [str(tmp_path / "a.edge"), str(tmp_path / "b.edge")]
    refused = runner.invoke(app, ["merge", *packages, "-o", str(tmp_path / "m.edge")])
    assert refused.exit_code == 1 and "--trust" in refused.stderr
    merged = runner.invoke(app, ["merge", *packages, "-o", str(tmp_path / "m.edge"), "--trust",
                                 str(tmp_path / "trust"), "--json"])
    assert merged.exit_code == 0, merged.output
    info = json.loads(merged.stdout)
    assert info["n_classes"] == 3 and info["examples_seen"] == 36
    untrusted = runner.invoke(app, ["merge", *packages, "-o", str(tmp_path / "m2.edge"), "--trust",
                                    str(tmp_path / "a")])
    assert untrusted.exit_code == 1 and "trust list" in untrusted.stderr
