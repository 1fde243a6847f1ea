"""The store under concurrent and retried writes, against a real `edgelearn serve` on 127.0.0.1.

Bounded: one server, a few dozen requests of tiny images, a timeout on each.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.server import Server
from tests.unit.test_station import png


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A station that queues every prediction (so there are items to label) and knows red and blue."""
    s = Server(tmp_path_factory.mktemp("station") / "data", "--queue-below", "1.01")
    s.teach("red", "blue")
    yield s
    s.stop()


def event_count(server) -> int:
    return server.client.get("/api/status", headers=server.auth()).json()["events"]


def test_four_concurrent_labels_of_one_queue_item_learn_it_once(server):
    assert server.client.post("/api/predict", files={"image": ("g.png", png("green", 7))}).status_code == 200
    item = server.client.get("/api/queue", headers=server.auth()).json()["items"][0]["id"]
    before = event_count(server)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: server.client.post(f"/api/queue/{item}", headers=server.auth("bob"),
                                                             data={"label": "green"}), range(4)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409]
    assert all("already labelled" in a.json()["detail"] for a in answers if a.status_code == 409)
    assert event_count(server) == before + 1


def test_a_retried_idempotency_key_is_answered_from_the_first_result(server):
    before = event_count(server)
    headers = {**server.auth("ann"), "Idempotency-Key": "camera-3-frame-1041"}
    teach = {"data": {"label": "green"}, "files": [("files", ("g.png", png("green", 11), "image/png"))]}
    first = server.client.post("/api/learn", headers=headers, **teach)
    retried = [server.client.post("/api/learn", headers=headers, **teach) for _ in range(2)]
    assert first.status_code == 200 and all(r.status_code == 200 and r.json() == first.json() for r in retried)
    assert event_count(server) == before + 1


def test_concurrent_heat_maps_all_succeed(server):
    def predict(i):
        return server.client.post("/api/predict", params={"heatmap": "true", "enqueue": "false"},
                                  files={"image": (f"{i}.png", png("red", 100 + i))})

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(predict, range(24)))
    assert [a.status_code for a in answers] == [200] * 24
    assert all(a.json()["heatmap"].startswith("data:image/png;base64,") for a in answers)
