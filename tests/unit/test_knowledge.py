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
    unchecked = runner.invoke(app, ["merge", *packages, "-o", str(tmp_path / "m3.edge"), "--allow-unsigned"])
    assert unchecked.exit_code == 1 and "no trust folder" in unchecked.stderr  # a signature is always checked


def test_cli_federate_exchanges_signed_knowledge_unless_told_otherwise(tmp_path):
    from typer.testing import CliRunner

    from edgelearn.cli import app

    sites = [f"--site={name}={tmp_path}" for name in ("a", "b")]
    refused = CliRunner().invoke(app, ["federate", *sites, "--workdir", str(tmp_path / "w")])
    assert refused.exit_code == 1 and "--keys" in refused.stderr and "--allow-unsigned" in refused.stderr
    refused = CliRunner().invoke(app, ["federate", *sites, "--keys", str(tmp_path), "--allow-unsigned"])
    assert refused.exit_code == 1 and "--trust" in refused.stderr
    assert not (tmp_path / "w").exists()  # refused before anything started


# -- what an attacker (or a broken site) might send -------------------------------------------------------------
ALLOW_UNSIGNED = ImportPolicy(allow_unsigned=True)


def forged(rec, edit, key=None) -> bytes:
    """``rec``'s package edited by ``edit(manifest, arrays)``, with the integrity hash recomputed (and, given
    ``key``, signed again): only the schema stands between it and the station."""
    from edgelearn.files import parse_container
    from edgelearn.knowledge.package import digest

    manifest, arrays = parse_container(rec.to_bytes(), "p")
    edit(manifest, arrays)
    manifest["integrity"] = {"sha256": digest(manifest, arrays)}
    if key is not None:
        manifest["signature"] = key.sign(manifest["integrity"]["sha256"].encode())
    return container_bytes(manifest, arrays)


def set_param(name, value):
    return lambda m, a: m["learner"]["params"].__setitem__(name, value)


def set_array(name, fn):
    return lambda m, a: a.__setitem__(name, fn(a[name]))


def poison(value):
    def edit(a):
        a = a.copy()
        a.flat[0] = value
        return a
    return edit


MALFORMED = {  # name: (learner kind, edit, what the refusal says)
    "NaN means": ("slda", set_array("means_", poison(np.nan)), "NaN or infinite"),
    "infinite scatter": ("slda", set_array("scatter_", poison(np.inf)), "NaN or infinite"),
    "infinite NCM mean": ("ncm", set_array("means_", poison(-np.inf)), "NaN or infinite"),
    "injected kind": ("slda", set_param("kind", "ncm"), "hyper-parameters"),
    "missing param": ("slda", lambda m, a: m["learner"]["params"].pop("shrinkage"), "hyper-parameters"),
    "param out of range": ("slda", set_param("shrinkage", 5.0), "shrinkage=5.0"),
    "param of the wrong type": ("slda", set_param("normalize", "yes"), "normalize"),
    "unknown metric": ("ncm", set_param("metric", "manhattan"), "metric"),
    "NaN temperature": ("ncm", set_param("temperature", float("nan")), "temperature"),
    "extra class": ("slda", lambda m, a: m["learner"]["classes"].append("c9"), "shape"),
    "missing class": ("ncm", lambda m, a: m["learner"]["classes"].pop(), "shape"),
    "wrong feature width": ("slda", lambda m, a: m["learner"].update(n_features=17), "shape"),
    "full scatter": ("slda", set_array("scatter_", lambda s: np.zeros((16, 16))), "shape"),
    "extra array": ("ncm", lambda m, a: a.update(extra=np.zeros(2)), "expected exactly"),
    "float16 means": ("slda", set_array("means_", lambda x: x.astype(np.float16)), "float16"),
    "float64 weights": ("fuzzy_artmap", set_array("weights_", lambda x: x.astype(np.float64)), "float64"),
    "negative counts": ("ncm", set_array("counts_", poison(-3.0)), "negative"),
    "representation of no class": ("fuzzy_artmap", set_array("category_class_", poison(7)), "not in the class"),
    "weights outside [0, 1]": ("fuzzy_artmap", set_array("weights_", poison(2.0)), "outside"),
    "unknown learner kind": ("slda", lambda m, a: m["learner"].update(kind="pickle"), "unknown learner kind"),
    "unknown learner field": ("slda", lambda m, a: m["learner"].update(code="x"), "unknown learner field"),
    "unknown manifest field": ("slda", lambda m, a: m.update(verified_site="plant-a"), "unknown manifest field"),
    "class list of numbers": ("slda", lambda m, a: m["learner"].update(classes=[0, 1]), "list of texts"),
    "duplicate labels": ("ncm", lambda m, a: m["learner"].update(classes=["c0", "c0"]), "more than once"),
    "negative examples": ("ncm", lambda m, a: m.update(examples_seen={"c0": -1}), "examples_seen"),
    "NaN calibration": ("ncm", lambda m, a: m.update(calibration={"temperature": float("nan")}), "calibration"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_knowledge_is_refused_with_its_reason(case):
    kind, edit, reason = MALFORMED[case]
    data = forged(site(kind), edit)
    with pytest.raises(ModelFileError, match=reason):
        Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=ALLOW_UNSIGNED)


@pytest.mark.parametrize("label", ["a/../b", "bolt\x1b[31m", "x" * 201, " padded", "\u202eevil", "/".join("a" * 17)])
def test_a_package_with_a_bad_label_is_refused_naming_it(label):
    from edgelearn.errors import LabelError

    data = forged(site("ncm"), lambda m, a: m["learner"]["classes"].__setitem__(1, label))
    with pytest.raises(LabelError, match="p.edge: invalid label"):
        Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=ALLOW_UNSIGNED)
    data = forged(site("ncm"), lambda m, a: m.update(examples_seen={label: 3}))
    with pytest.raises(LabelError, match="invalid label"):
        Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=ALLOW_UNSIGNED)


def test_every_learner_names_the_rules_of_exactly_its_own_hyper_parameters():
    from edgelearn.learners import LEARNERS

    for cls in LEARNERS.values():
        assert set(cls._params) == set(cls().get_params()), cls.kind


def test_a_recomputed_hash_does_not_make_a_tampered_package_acceptable(keys):
    _, _, trust = keys
    data = forged(site(), lambda m, a: m["learner"]["classes"].__setitem__(1, "intruder"))
    for policy in (ImportPolicy(), ImportPolicy(trust)):  # by default: signed by a trusted site, or nothing
        with pytest.raises(SignatureError, match="not signed"):
            Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=policy)


def test_a_made_up_signature_is_refused_even_where_unsigned_packages_are_allowed(keys):
    a, b, trust = keys
    fake = {"algorithm": "ed25519", "site": "plant-a", "key_id": a.key_id, "value": "AAAA"}
    data = forged(site(), lambda m, x: m.update(signature=fake))
    with pytest.raises(SignatureError, match="signed by site 'plant-a', but there is no trust folder"):
        Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=ALLOW_UNSIGNED)
    with pytest.raises(SignatureError, match="altered"):
        Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=ImportPolicy(trust, allow_unsigned=True))
    signed = site().to_bytes(key=b)  # a real signature, by a site we do not trust
    with pytest.raises(SignatureError, match="no trust folder"):
        Recognizer.from_bytes(signed, "p.edge", with_backbone=False, policy=ALLOW_UNSIGNED)
    assert Recognizer.from_bytes(site().to_bytes(), "p", with_backbone=False, policy=ALLOW_UNSIGNED).classes


def test_a_trusted_site_cannot_send_malformed_knowledge_either(keys):
    a, _, trust = keys
    data = forged(site(), set_array("means_", poison(np.nan)), key=a)
    with pytest.raises(ModelFileError, match="NaN"):
        Recognizer.from_bytes(data, "p.edge", with_backbone=False, policy=ImportPolicy(trust))


def test_sizes_are_checked_from_the_header_before_anything_is_allocated(monkeypatch):
    import struct

    import edgelearn.files
    from edgelearn.files import parse_container

    def never(*args):
        raise AssertionError("safetensors allocated arrays for a file that should have been refused")

    monkeypatch.setattr(edgelearn.files, "st_load", never)

    def container(header: bytes, body: bytes = b"") -> bytes:
        return struct.pack("<Q", len(header)) + header + body

    manifest = {"__metadata__": {"edgelearn": "{}"}}
    huge = {**manifest, "scatter_": {"dtype": "F64", "shape": [2**20, 2**20], "data_offsets": [0, 2**43]}}
    cases = {
        "header of 1,099,511,627,776 bytes": struct.pack("<Q", 2**40) + b"{}",
        "would take 8,796,093,022,208 bytes": container(json.dumps(huge).encode(), b"\0" * 64),
        "unsupported dtype": container(json.dumps({**manifest, "x": {"dtype": "OBJ", "shape": [1],
                                                                     "data_offsets": [0, 8]}}).encode(), b"\0" * 8),
        "malformed shape": container(json.dumps({**manifest, "x": {"dtype": "F32", "shape": [-1],
                                                                   "data_offsets": [0, 4]}}).encode(), b"\0" * 4),
        "header": container(b"[" * 100_000 + b"]" * 100_000),  # nesting deep enough to exhaust the recursion
    }
    for reason, data in cases.items():
        with pytest.raises(ModelFileError, match=reason):
            parse_container(data, "p.edge")


# -- the one merge of package bytes (CLI, federation, station) ---------------------------------------------------
@pytest.mark.parametrize("kind", ["slda", "ncm", "fuzzy_artmap"])
def test_merged_packages_do_not_depend_on_the_order_they_came_in(kind):
    from edgelearn.knowledge import merge_packages, parse_package

    parts = [("c0", "c1"), ("c2", "c3"), ("c1", "c4", "c5")]
    packages = [site(kind, c, seed=i).to_bytes(site=f"s{i}") for i, c in enumerate(parts)]
    merged = [parse_package(merge_packages(*order, policy=ALLOW_UNSIGNED, consolidate=True))
              for order in (packages, packages[::-1], packages[1:] + packages[:1])]
    for manifest, arrays in merged[1:]:
        assert {**manifest, "created_at": None} == {**merged[0][0], "created_at": None}
        assert arrays.keys() == merged[0][1].keys()
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, merged[0][1][name])
    rec = Recognizer.from_bytes(merge_packages(*packages, policy=ALLOW_UNSIGNED), with_backbone=False)
    X, y = blobs(n_classes=6, seed=9)
    assert sorted(rec.classes) == [f"c{k}" for k in range(6)] and np.mean(rec.learner.predict(X) == y) >= 0.95
    assert {s["site"] for s in rec.sources} == {"s0", "s1", "s2"}
    assert sum(rec.examples_seen.values()) == sum(sum(site(kind, c).examples_seen.values()) for c in parts)


def test_merge_packages_checks_every_package_and_names_the_one_refused(keys):
    from edgelearn.knowledge import merge_packages

    a, _, trust = keys
    signed, unsigned = site().to_bytes(key=a), site(classes=("c2",)).to_bytes()
    with pytest.raises(SignatureError, match="b.edge: the package is not signed"):
        merge_packages(signed, unsigned, policy=ImportPolicy(trust), names=["a.edge", "b.edge"])
    other_backbone = site(fingerprint={**FINGERPRINT, "weights": "sha-of-other-weights"}).to_bytes(key=a)
    with pytest.raises(IncompatibleError, match="another backbone"):
        merge_packages(signed, other_backbone, policy=ImportPolicy(trust))
    with pytest.raises(IncompatibleError, match="only knowledge of one learner kind"):
        merge_packages(signed, site("fuzzy_artmap").to_bytes(key=a), policy=ImportPolicy(trust))
    tampered = forged(site(), set_array("means_", poison(np.nan)), key=a)
    with pytest.raises(ModelFileError, match="NaN"):
        merge_packages(signed, tampered, policy=ImportPolicy(trust))


def test_own_knowledge_keeps_its_settings_and_an_empty_one_adopts_any_learner():
    from edgelearn.knowledge import merge_packages, parse_package

    own = Recognizer(None, make_learner("ncm", temperature=2.0), fingerprint=FINGERPRINT)
    own.learn_features(*blobs(n_classes=2, seed=0))
    own.temperature = 1.5  # learning calibrates it: this site's own setting now
    other = site("ncm", classes=("c1", "c2"), seed=1)
    other.temperature = 0.7
    manifest, _ = parse_package(merge_packages(other.to_bytes(), own=own.to_bytes(), policy=ALLOW_UNSIGNED))
    assert manifest["learner"]["params"]["temperature"] == 2.0 and manifest["calibration"]["temperature"] == 1.5
    assert manifest["learner"]["classes"] == ["c0", "c1", "c2"]  # this site's classes first, then the new ones
    empty = Recognizer(None, make_learner("slda"), fingerprint=FINGERPRINT)
    manifest, _ = parse_package(merge_packages(other.to_bytes(), own=empty.to_bytes(), policy=ALLOW_UNSIGNED))
    assert manifest["learner"]["kind"] == "ncm" and manifest["learner"]["classes"] == ["c1", "c2"]
