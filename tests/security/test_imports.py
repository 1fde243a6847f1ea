"""Malicious knowledge packages against a real `edgelearn serve --trust DIR` on 127.0.0.1.

Each package is refused with a 4xx and a reason, the station keeps answering exactly as before, and
it still starts afterwards (no package can brick it). Bounded: a dozen small uploads, two starts.
"""

import struct

import numpy as np
import pytest

from edgelearn.knowledge import SiteKey
from tests.integration.server import Server
from tests.unit.test_knowledge import forged, poison, set_array, set_param
from tests.unit.test_station import COLOURS, png


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """A trusted site's key (its .pub in the station's trust folder) and an untrusted one."""
    root = tmp_path_factory.mktemp("keys")
    plant_a, stranger = SiteKey.generate("plant-a"), SiteKey.generate("stranger")
    plant_a.save(root / "trust")
    stranger.save(root / "elsewhere")
    (root / "trust" / "plant-a.key").unlink()  # the station needs only the public key
    return root / "trust", plant_a, stranger


@pytest.fixture(scope="module")
def station(tmp_path_factory, trusted):
    s = Server(tmp_path_factory.mktemp("station") / "data", "--trust", str(trusted[0]))
    s.teach("red", "blue")
    yield s
    s.stop()


def answers(server) -> list:
    out = []
    for name in COLOURS:
        r = server.client.post("/api/predict", headers=server.auth(), files={"image": ("x.png", png(name, 50))})
        assert r.status_code == 200, r.text
        out.append((r.json()["label"], round(r.json()["confidence"], 5)))
    return out


def exported(server):
    """The station's own knowledge as a Recognizer: the raw material of the forgeries."""
    from edgelearn.recognizer import Recognizer

    r = server.client.get("/api/knowledge", headers=server.auth())
    assert r.status_code == 200
    return Recognizer.from_bytes(r.content, with_backbone=False)


def made_up_signature(key):
    return lambda m, a: m.update(signature={"algorithm": "ed25519", "site": key.site, "key_id": key.key_id,
                                            "value": "AAAA"})


def oversized_header(_rec, _key) -> bytes:
    return struct.pack("<Q", 2**40) + b"{}"


ATTACKS = {  # name: (make the package from (recognizer, trusted key, untrusted key), what the refusal says)
    "unsigned, hash recomputed": (lambda rec, a, s: forged(rec, set_param("shrinkage", 0.1)), "not signed"),
    "made-up signature": (lambda rec, a, s: forged(rec, made_up_signature(a)), "altered"),
    "signed by a stranger": (lambda rec, a, s: forged(rec, lambda m, x: None, key=s), "trust list"),
    "NaN arrays": (lambda rec, a, s: forged(rec, set_array("means_", poison(np.nan)), key=a), "NaN"),
    "injected learner kind": (lambda rec, a, s: forged(rec, set_param("kind", "ncm"), key=a), "hyper-parameters"),
    "class list off the shapes": (lambda rec, a, s: forged(rec, lambda m, x: m["learner"]["classes"].pop(), key=a),
                                  "shape"),
    "bad label": (lambda rec, a, s: forged(rec, lambda m, x: m["learner"]["classes"].__setitem__(0, "../etc"),
                                           key=a), "invalid label"),
    "float16 arrays": (lambda rec, a, s: forged(rec, set_array("means_", lambda x: x.astype(np.float16)), key=a),
                       "float16"),
    "oversized header": (lambda rec, a, s: oversized_header(rec, a), "header"),
}


def test_malicious_packages_are_refused_and_change_nothing(station, trusted):
    _, plant_a, stranger = trusted
    rec, before = exported(station), answers(station)
    versions = station.client.get("/api/versions", headers=station.auth()).json()
    for name, (make, reason) in ATTACKS.items():
        r = station.client.post("/api/knowledge", headers=station.auth(),
                                files={"package": ("k.edge", make(rec, plant_a, stranger))})
        assert 400 <= r.status_code < 500 and reason in r.json()["detail"], (name, r.status_code, r.text)
        assert answers(station) == before, name
    assert station.client.get("/api/versions", headers=station.auth()).json() == versions


def test_a_trusted_sites_package_is_merged_and_the_station_restarts(station, trusted, tmp_path):
    _, plant_a, _ = trusted
    r = station.client.post("/api/knowledge", headers=station.auth(),
                            files={"package": ("a.edge", forged(exported(station), lambda m, x: None, key=plant_a))})
    assert r.status_code == 200, r.text
    before = answers(station)
    station.stop()
    again = Server(station.data, "--trust", str(trusted[0]), log=tmp_path / "restart.log")
    try:
        assert answers(again) == before
    finally:
        again.stop()


def test_without_a_trust_folder_the_station_says_how_to_set_one_up(station_server, trusted):
    _, plant_a, _ = trusted
    r = station_server.client.post("/api/knowledge", headers=station_server.auth(),
                                   files={"package": ("a.edge", exported(station_server).to_bytes(key=plant_a))})
    assert r.status_code == 400 and "--trust" in r.json()["detail"]
