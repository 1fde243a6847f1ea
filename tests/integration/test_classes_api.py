"""The worker's class operations over HTTP, against a real `edgelearn serve`: cards, rename, merge, delete,
undo, "did you mean ...?", packages merged twice, the token check; and a restart answers the same."""

import pytest

from tests.integration.server import Server
from tests.unit.test_station import png


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One station for the tests below, in order (each starts from what the one before left)."""
    s = Server(tmp_path_factory.mktemp("classes") / "data", "--keep-images", "--allow-unsigned")
    yield s
    s.stop()


def teach(server, label, colour, n=3, **form):
    return server.client.post("/api/learn", headers=server.auth("ana"), data={"label": label, **form},
                              files=[("files", (f"{colour}{i}.png", png(colour, i), "image/png")) for i in range(n)])


def post(server, path, **form):
    return server.client.post(path, headers=server.auth("ana"), data=form)


def names(server):
    return sorted(c["name"] for c in server.client.get("/api/classes").json()["classes"])


def test_the_token_check_says_what_a_token_gives(server):
    assert server.client.get("/api/token").json() == {"access": "none"}
    assert server.client.get("/api/token", headers={"Authorization": "Bearer wrong"}).json() == {"access": "none"}
    assert server.client.get("/api/token", headers=server.auth()).json() == {"access": "write"}


def test_class_operations_and_undo_over_http(server):
    assert teach(server, "red", "red").status_code == 200
    assert teach(server, "blue", "blue").status_code == 200
    near = teach(server, "Red ", "red")  # trimmed to "Red": the known class's name in another case
    assert near.status_code == 409 and near.json() == {"detail": "did you mean 'red'?", "suggestion": "red"}

    assert teach(server, "gren", "green").status_code == 200  # a typo ...
    undone = post(server, "/api/undo")  # ... taken back
    assert undone.status_code == 200, undone.text
    assert undone.json()["undone"] == {"kind": "teach", "label": "gren", "examples": 3, "user": "ana"}
    assert names(server) == ["blue", "red"]

    assert teach(server, "grn", "green").status_code == 200
    renamed = post(server, "/api/classes/rename", name="grn", to="green")
    assert renamed.status_code == 200 and sorted(renamed.json()["classes"]) == ["blue", "green", "red"]
    taken = post(server, "/api/classes/rename", name="red", to="blue")
    assert taken.status_code == 409 and "merge" in taken.json()["detail"]
    assert post(server, "/api/classes/rename", name="pink", to="rose").status_code == 404

    assert teach(server, "crimson", "red").status_code == 200
    merged = post(server, "/api/classes/merge", name="crimson", into="red")
    assert merged.status_code == 200 and "crimson" not in merged.json()["classes"]
    cards = {c["name"]: c for c in server.client.get("/api/classes").json()["classes"]}
    assert cards["red"]["examples"] == 6 and not cards["red"]["few"] and cards["blue"]["few"]
    assert 1 <= len(cards["red"]["thumbnails"]) <= 4

    deleted = post(server, "/api/classes/delete", name="blue")
    assert deleted.status_code == 200 and sorted(deleted.json()["classes"]) == ["green", "red"]
    nothing = post(server, "/api/undo")  # the last teach came before the merge and the delete
    assert nothing.status_code == 409 and nothing.json()["detail"].startswith("nothing to undo")

    versions = server.client.get("/api/versions").json()["versions"]
    assert versions[0]["changes"] == {"added": [], "removed": ["blue"], "renamed": {}, "examples": -3}
    assert versions[0]["user"] == "ana" and versions[0]["reason"] == "delete 'blue'"
    events = server.client.get("/api/events", headers=server.auth()).json()["events"]
    assert [e["kind"] for e in events[:3]] == ["delete", "merge", "teach"]

    refused = server.client.post("/api/classes/delete", data={"name": "red"})
    assert refused.status_code == 401 and names(server) == ["green", "red"]


def test_a_package_already_merged_is_refused(server):
    teach(server, "red", "red")
    package = server.client.get("/api/knowledge", headers=server.auth()).content
    upload = {"package": ("k.edge", package, "application/octet-stream")}
    first = server.client.post("/api/knowledge", headers=server.auth(), files=upload)
    assert first.status_code == 200, first.text
    again = server.client.post("/api/knowledge", headers=server.auth(), files=upload)
    assert again.status_code == 409
    assert again.json()["detail"] == f"this package was already merged (version {first.json()['version']})"
    assert server.client.get("/api/versions").json()["versions"][0]["site"] == first.json()["site"]


def test_after_a_rename_and_an_undo_a_restarted_station_answers_the_same(tmp_path):
    data = tmp_path / "data"
    server = Server(data)
    try:
        teach(server, "red", "red")
        teach(server, "bleu", "blue")
        post(server, "/api/classes/rename", name="bleu", to="blue")
        teach(server, "gren", "green")
        assert post(server, "/api/undo").status_code == 200
        before = [server.client.post("/api/predict", files={"image": ("x.png", png(c, 7), "image/png")},
                                     params={"enqueue": "false"}).json() for c in ("red", "blue", "green")]
        classes = server.client.get("/api/classes").json()
    finally:
        server.stop()
    restarted = Server(data)
    try:
        assert restarted.client.get("/api/classes").json() == classes
        after = [restarted.client.post("/api/predict", files={"image": ("x.png", png(c, 7), "image/png")},
                                       params={"enqueue": "false"}).json() for c in ("red", "blue", "green")]
        assert [p["label"] for p in after] == [p["label"] for p in before]
        assert [p["confidence"] for p in after] == pytest.approx([p["confidence"] for p in before], abs=1e-4)
    finally:
        restarted.stop()
