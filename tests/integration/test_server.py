"""The station's HTTP API against a real uvicorn process on loopback (tiny random backbone)."""

import io
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from tests.integration.server import Server
from tests.unit.test_station import png, write_video


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("station") / "data", "--keep-images", "--max-upload-mb", "2")
    yield s
    s.stop()


def files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def test_writes_need_the_token(server):
    for path in ("/api/learn", "/api/consolidate", "/api/versions/1/rollback", "/api/knowledge", "/api/queue/1"):
        r = server.client.post(path)
        assert r.status_code == 401, path
        assert "token" in r.json()["detail"]
    r = server.client.post("/api/consolidate", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert server.client.get("/api/status").status_code == 200  # reads stay open


def test_bad_uploads_get_a_clear_4xx_and_the_server_carries_on(server):
    r = server.client.post("/api/predict", files={"image": ("x.jpg", b"\xff\xd8 not really a jpeg")})
    assert r.status_code == 400 and "x.jpg" in r.json()["detail"]
    r = server.client.post("/api/learn", headers=server.auth(), data={"label": "a"},
                           files=files(("big.png", b"0" * (3 * 2**20))))
    assert r.status_code == 413 and "MiB" in r.json()["detail"]
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, format="PNG")  # small file, 48 million pixels
    r = server.client.post("/api/predict", files={"image": ("huge.png", buf.getvalue())})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    r = server.client.post("/api/learn", headers=server.auth(), data={"label": ""}, files=files(("a.png", png("red"))))
    assert r.status_code == 400 and "label" in r.json()["detail"]
    r = server.client.post("/api/learn", headers=server.auth(), data={"label": "a", "kind": "guess"},
                           files=files(("a.png", png("red"))))
    assert r.status_code == 422
    assert server.client.get("/api/status").status_code == 200


def test_teach_predict_correct_consolidate_rollback_over_http(server):
    auth = server.auth("ann")
    red = [(f"r{i}.png", png("red", i)) for i in range(4)]
    r = server.client.post("/api/learn", headers=auth, data={"label": "parts/red"}, files=files(*red))
    assert r.status_code == 200 and r.json()["learned"] == 4
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(4):
            z.writestr(f"parts/blue/b{i}.png", png("blue", i))
    r = server.client.post("/api/learn", headers=auth, files=files(("blue.zip", buf.getvalue())))
    assert r.status_code == 200 and set(r.json()["classes"]) == {"parts/red", "parts/blue"}
    v2 = server.client.post("/api/consolidate", headers=auth).json()["version"]

    p = server.client.post("/api/predict", params={"heatmap": True}, files={"image": ("q.png", png("blue", 42))}).json()
    assert p["label"] == "parts/blue" and p["heatmap"].startswith("data:image/png")
    thumb = server.client.get(f"/api/thumbnails/{p['representatives'][0]['thumbnail']}", headers=auth)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

    # a correction: this green thing is new
    r = server.client.post("/api/learn", headers=auth, files=files(("g.png", png("green", 1))),
                           data={"label": "parts/green", "kind": "correct", "predicted": p["label"],
                                 "confidence": p["confidence"]})
    assert r.status_code == 200
    event = server.client.get("/api/events", params={"limit": 1}, headers=auth).json()["events"][0]
    assert (event["user"], event["kind"], event["predicted"], event["label"]) == \
        ("ann", "correct", "parts/blue", "parts/green")
    concepts = {c["path"] for c in server.client.get("/api/concepts").json()["concepts"]}
    assert {"parts", "parts/red", "parts/green"} <= concepts

    r = server.client.post(f"/api/versions/{v2}/rollback", headers=auth)
    assert r.status_code == 200 and "parts/green" not in r.json()["classes"]
    versions = server.client.get("/api/versions").json()
    assert versions["active"] == r.json()["version"] and versions["versions"][0]["parent"] == v2
    assert server.client.post("/api/versions/999/rollback", headers=auth).status_code == 404


def test_a_frame_can_be_sent_as_the_request_body(server):
    r = server.client.post("/api/predict", content=png("blue", 43), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["label"] == "parts/blue"
    r = server.client.post("/api/predict", content=b"garbage", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = server.client.post("/api/predict", files={"other": ("x.png", png("red"))})
    assert r.status_code == 422


def test_videos_teach_their_frames(server, tmp_path):
    video = write_video(tmp_path / "clip.avi", ["green", "red"], frames_each=10).read_bytes()
    r = server.client.post("/api/learn", headers=server.auth(), data={"label": "clip", "every": "5"},
                           files=files(("clip.avi", video)))
    assert r.status_code == 200 and 1 <= r.json()["learned"] <= 4


def test_knowledge_export_and_import(server, tmp_path):
    package = server.client.get("/api/knowledge", headers=server.auth())
    assert package.status_code == 200 and len(package.content) > 1000
    other = Server(tmp_path / "other", "--allow-unsigned")
    try:
        r = other.client.post("/api/knowledge", headers=other.auth(),
                              files={"package": ("k.edge", package.content)})
        assert r.status_code == 200 and "parts/red" in r.json()["classes"]
        tampered = bytearray(package.content)
        tampered[len(tampered) // 2] ^= 0xFF
        r = other.client.post("/api/knowledge", headers=other.auth(), files={"package": ("t.edge", bytes(tampered))})
        assert r.status_code == 400 and ("damaged" in r.json()["detail"] or "integrity" in r.json()["detail"])
    finally:
        other.stop()


def test_predictions_run_concurrently_with_learning(server):
    errors = []

    def predict(i):
        r = server.client.post("/api/predict", params={"enqueue": False}, files={"image": ("q.png", png("red", i))})
        return r.status_code

    def learn():
        for i in range(5):
            r = server.client.post("/api/learn", headers=server.auth(), data={"label": "parts/red"},
                                   files=files(("r.png", png("red", 100 + i))))
            if r.status_code != 200:
                errors.append(r.text)

    writer = threading.Thread(target=learn)
    writer.start()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(predict, range(24)))
    writer.join()
    assert codes == [200] * 24 and not errors


def test_openapi_documents_the_api(server):
    spec = server.client.get("/openapi.json").json()
    assert {"/api/predict", "/api/learn", "/api/consolidate", "/api/knowledge", "/api/queue"} <= set(spec["paths"])
    assert server.client.get("/docs").status_code == 200
    assert "edgelearn station" in server.client.get("/").text


def test_sigkill_during_learning_loses_nothing_confirmed(tmp_path):
    data = tmp_path / "data"
    server = Server(data)
    confirmed, stop = [], threading.Event()

    def learn_forever():
        i = 0
        while not stop.is_set():
            label = ["red", "blue"][i % 2]
            try:
                r = server.client.post("/api/learn", headers=server.auth(), data={"label": label},
                                       files=files((f"{i}.png", png(label, i))))
            except Exception:  # the server died under this request
                return
            if r.status_code == 200:
                confirmed.extend(r.json()["events"])
            i += 1

    threads = [threading.Thread(target=learn_forever) for _ in range(3)]
    for t in threads:
        t.start()
    while len(confirmed) < 30:
        threading.Event().wait(0.05)
    server.kill()  # SIGKILL: no shutdown handler runs
    stop.set()
    for t in threads:
        t.join(30)

    restarted = Server(data)
    try:
        events = restarted.client.get("/api/events", params={"limit": 1000}, headers=restarted.auth()).json()["events"]
        ids = {e["id"] for e in events}
        assert set(confirmed) <= ids  # every acknowledged event is there
        status = restarted.client.get("/api/status").json()
        assert status["examples"] == len(events) == status["events"]  # knowledge = store, exactly
        p = restarted.client.post("/api/predict", files={"image": ("q.png", png("blue", 999))}).json()
        assert (p["label"] or p["alternatives"][0]["label"]) == "blue"  # known, or unknown with blue closest
    finally:
        restarted.stop()  # SIGTERM: uvicorn drains requests, runs the shutdown, then re-raises the signal
    assert "Application shutdown complete" in restarted.log.read_text()
    assert not (data / "station.sqlite-wal").exists() or (data / "station.sqlite-wal").stat().st_size == 0

