"""The station's fixed camera (`serve --camera`): decisions through the station, the queue, the camera API and
its auth, and a real `edgelearn serve --camera` process publishing to a real Mosquitto; all on 127.0.0.1."""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from edgelearn.cli import app as cli_app
from edgelearn.plant.sources import open_source
from edgelearn.server import Station, create_app
from edgelearn.server.camera import Camera
from tests.integration.server import TOKEN, Server
from tests.unit.test_plant_sources import wait_until
from tests.unit.test_station import colour_image, config, teach

AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_TOKEN = "read-only-token-0123456789"


class ListSink:
    def __init__(self):
        self.decisions, self.closed = [], False

    def publish(self, decision):
        self.decisions.append(decision)

    def close(self):
        self.closed = True


@pytest.fixture
def drop(tmp_path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def station_with_camera(tmp_path, drop, sink=None, **app_options):
    """A taught station (every decision less certain than 1.01: all are queued) and a folder-drop camera."""
    station = Station(config(tmp_path, queue_below=1.01))
    teach(station, "red")
    teach(station, "blue")
    camera = Camera(open_source(str(drop)), [sink or ListSink()], station="line-1")
    return station, TestClient(create_app(station, TOKEN, camera=camera, **app_options), base_url="http://localhost")


def drop_frame(drop, colour, name):
    colour_image(colour, size=48).save(drop / name)


def test_camera_frames_are_decided_by_the_station_and_uncertain_ones_join_the_queue(tmp_path, drop):
    sink = ListSink()
    station, client = station_with_camera(tmp_path, drop, sink)
    with client:
        assert client.get("/api/camera").json()["decision"] is None

        drop_frame(drop, "red", "part1.png")
        wait_until(lambda: client.get("/api/camera").json()["stats"]["decided"] == 1)

        answer = client.get("/api/camera").json()
        assert answer["source"] == str(drop) and answer["frame_id"] == 1
        assert answer["stats"] == {"read": 1, "decided": 1, "dropped": 0}
        decision = answer["decision"]
        assert decision["label"] == "red" and decision["station"] == "line-1" and decision["frame_id"] == 1
        assert decision["model_version"] == station.store.active_version
        assert [d.to_dict() for d in sink.decisions] == [decision]
        queued = client.get("/api/queue").json()["items"]
        assert [(q["predicted"], q["confidence"]) for q in queued] == [("red", decision["confidence"])]
    assert sink.closed  # the app's shutdown closed the camera's outputs


def test_a_trigger_decides_on_the_latest_frame_now_and_sends_it_on(tmp_path, drop):
    sink = ListSink()
    _, client = station_with_camera(tmp_path, drop, sink)
    with client:
        early = client.post("/api/camera/trigger", headers=AUTH)
        assert early.status_code == 409 and "no frame from" in early.json()["detail"]

        drop_frame(drop, "blue", "part1.png")
        wait_until(lambda: len(sink.decisions) == 1)
        answer = client.post("/api/camera/trigger", headers=AUTH)

        assert answer.status_code == 200, answer.text
        assert answer.json()["frame_id"] == 1 and answer.json()["label"] == "blue"
        assert len(sink.decisions) == 2 and client.get("/api/camera").json()["stats"]["decided"] == 2


def test_the_latest_frame_is_served_as_a_jpeg(tmp_path, drop):
    _, client = station_with_camera(tmp_path, drop)
    with client:
        assert client.get("/api/camera/frame", headers=AUTH).status_code == 404

        drop_frame(drop, "red", "part1.png")
        wait_until(lambda: client.get("/api/camera").json()["frame_id"] == 1)
        answer = client.get("/api/camera/frame", headers=AUTH)

        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert answer.headers["x-frame-id"] == "1" and answer.headers["cache-control"] == "no-store"
        assert Image.open(io.BytesIO(answer.content), formats=["JPEG"]).size == (48, 48)


def test_a_station_without_a_camera_says_so(tmp_path):
    station = Station(config(tmp_path))
    with TestClient(create_app(station, TOKEN), base_url="http://localhost") as client:
        for method, path in [("GET", "/api/camera"), ("GET", "/api/camera/frame"), ("POST", "/api/camera/trigger")]:
            answer = client.request(method, path, headers=AUTH)
            assert answer.status_code == 404 and "no camera on this station" in answer.json()["detail"], path


def test_each_camera_route_needs_its_token(tmp_path, drop):
    _, client = station_with_camera(tmp_path, drop, read_token=READ_TOKEN, reads_need_token=True)
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    with client:
        assert client.get("/api/camera").status_code == 401
        assert client.get("/api/camera", headers=read).status_code == 200
        assert client.get("/api/camera/frame").status_code == 401
        assert client.get("/api/camera/frame", headers=read).status_code == 404  # allowed; no frame yet
        assert client.post("/api/camera/trigger").status_code == 401
        assert client.post("/api/camera/trigger", headers=read).status_code == 403
        assert client.post("/api/camera/trigger", headers=AUTH).status_code == 409  # allowed; no frame yet


def test_the_camera_frame_needs_a_token_even_where_reads_are_open(tmp_path, drop):
    _, client = station_with_camera(tmp_path, drop)  # loopback, no read token: reads are open
    with client:
        assert client.get("/api/camera").status_code == 200
        assert client.get("/api/camera/frame").status_code == 401  # an image, like thumbnails


def test_serve_refuses_camera_options_without_a_camera_and_a_wrong_camera_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--data", str(tmp_path / "d"), "--mqtt", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 2 and "serve without --camera does not use --mqtt" in result.output

    result = runner.invoke(cli_app, ["serve", "--data", str(tmp_path / "d"), "--token", TOKEN,
                                     "--camera", str(tmp_path / "none.avi")])
    assert result.exit_code == 1 and "none.avi: no such file or folder" in result.output


def red_video(path: Path, frames: int = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for _ in range(frames):
        writer.write(np.full((32, 32, 3), (30, 30, 220), np.uint8))  # BGR: red
    writer.release()
    return path


def test_serve_with_a_camera_publishes_its_decisions_over_mqtt(tmp_path):
    mqtt_tests = pytest.importorskip("tests.unit.test_plant_mqtt")  # skipped without paho-mqtt
    if not Path(mqtt_tests.MOSQUITTO).is_file():
        pytest.skip("Mosquitto is not installed (apt-get install mosquitto; CI installs it)")
    broker = mqtt_tests.Broker(tmp_path).start()
    subscriber = mqtt_tests.Subscriber(broker, "edgelearn/line-7/result")
    state = mqtt_tests.Subscriber(broker, "edgelearn/line-7/state")
    server = Server(tmp_path / "data", "--camera", str(red_video(tmp_path / "line.avi")), "--loop", "--max-fps", "5",
                    "--station", "line-7", "--mqtt", broker.url, "--mqtt-outbox", str(tmp_path / "outbox.db"))
    try:
        server.teach("red", "blue")
        results = subscriber.results(20)  # 5 a second; the first ones before the teaching (no label)
        taught = [r for r in results if r["label"] is not None]
        assert taught and all(r["label"] == "red" and r["station"] == "line-7" for r in taught)
        assert [r["frame_id"] for r in results] == sorted(r["frame_id"] for r in results)

        triggered = server.client.post("/api/camera/trigger", headers=server.auth())
        assert triggered.status_code == 200 and triggered.json()["label"] == "red"
        for _ in range(100):  # the triggered decision arrives too, after those already on their way
            if subscriber.results(1)[0] == triggered.json():
                break
        else:
            raise AssertionError("the triggered decision never arrived")
        server.stop()  # SIGTERM: the camera and its outputs stop with the station
        assert [payload for _, payload, _ in state.take(2)] == ["online", "offline"]
    finally:
        if server.process.poll() is None:
            server.stop()
        subscriber.close()
        state.close()
        broker.stop()
