"""Frames from fixed cameras (an MJPEG stream that drops, a video file, a folder drop), the triggers, the
watcher, the webhook and `edgelearn watch`; every server is the test's own, on 127.0.0.1."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgelearn.cli import app
from edgelearn.errors import NotFoundError, ParameterError, TooLargeError
from edgelearn.plant import Decision
from edgelearn.plant.sources import FrameSource, open_source, without_password
from edgelearn.plant.triggers import Triggers
from edgelearn.plant.watch import Watcher
from edgelearn.plant.webhook import WebhookSink

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def jpeg(i: int) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (64, 48), ((i * 40) % 256, 100, 200)).save(data, "JPEG")
    return data.getvalue()


def wait_until(condition, seconds=20.0):
    """Poll ``condition`` until true; the limit only bounds a broken run (no timing is asserted)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class MjpegServer:
    """multipart/x-mixed-replace JPEG frames, as IP cameras serve them; ``stop`` drops every viewer."""

    def __init__(self, port: int = 0):
        stopping = self.stopping = threading.Event()
        connections = self.connections = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                connections.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                while not stopping.is_set():
                    data, i = jpeg(i), i + 1
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                         % (len(data), data))
                    except OSError:
                        return
                    stopping.wait(0.03)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class Recorder:
    """A sink that keeps what it hears."""

    def __init__(self):
        self.decisions: list[Decision] = []

    def publish(self, decision):
        self.decisions.append(decision)

    def close(self):
        pass


def test_a_dropped_stream_is_reopened_by_itself_and_frames_continue():
    camera = MjpegServer()
    source = open_source(f"http://127.0.0.1:{camera.port}/stream.mjpg")
    try:
        first = [source.read(timeout=10) for _ in range(3)]
        assert all(f is not None and f.image.size == (64, 48) and f.image.mode == "RGB" for f in first)

        camera.stop()  # the camera goes away mid-stream ...
        time.sleep(0.3)
        camera = MjpegServer(camera.port)  # ... and comes back on the same address
        last_before = first[-1].frame_id
        wait_until(lambda: (frame := source.read(timeout=1)) is not None and frame.frame_id > last_before + 20)
        assert camera.connections and not source.ended  # the source came back by itself
    finally:
        source.close()
        camera.stop()


def test_a_video_file_is_read_to_its_end_and_may_loop(tmp_path):
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()

    source = open_source(str(video))
    frames = []
    while (frame := source.read(timeout=10)) is not None:
        frames.append(frame)
    assert [f.frame_id for f in frames] == list(range(1, 13)) and source.ended and source.dropped == 0

    looping = open_source(str(video), loop=True)
    assert [looping.read(timeout=10).frame_id for _ in range(30)][-1] == 30  # past the end: again from the start
    # a looping file stands in for a camera: a consumer that falls behind loses the oldest frames, it is not waited for
    deadline = time.monotonic() + 30
    while looping.dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    looping.close()
    assert looping.dropped > 0


def test_a_file_that_is_no_video_and_a_missing_source_are_said_in_one_line(tmp_path):
    (tmp_path / "notes.avi").write_text("not a video")
    source = open_source(str(tmp_path / "notes.avi"))
    with pytest.raises(Exception, match="not a video file we can read"):
        source.read(timeout=10)
    with pytest.raises(ParameterError, match="no such file or folder"):
        open_source(str(tmp_path / "nothing.mp4"))


def test_a_folder_drop_reads_each_new_complete_file_once_in_order(tmp_path):
    (tmp_path / "old.png").write_bytes(jpeg(0))  # there before the start: not new
    source = open_source(str(tmp_path))
    try:
        Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
        first = source.read(timeout=10)
        assert first.image.getpixel((0, 0)) == (255, 0, 0)

        whole = io.BytesIO()
        Image.new("RGB", (40, 30), "blue").save(whole, "PNG")
        with open(tmp_path / "b.png", "wb") as partial:  # a vision system still writing ...
            partial.write(whole.getvalue()[:50])
            partial.flush()
            assert source.read(timeout=0.8) is None  # ... is not read early
            partial.write(whole.getvalue()[50:])
        (tmp_path / "c.jpg.part").write_bytes(jpeg(1))  # not an image name: ignored
        second = source.read(timeout=10)
        assert second.image.getpixel((0, 0)) == (0, 0, 255) and second.frame_id == 2
        assert source.read(timeout=0.8) is None  # each file once
    finally:
        source.close()


class SlowConsumerSource(FrameSource):
    """A live source that produces 10 frames at once, faster than anyone reads them."""

    def _read_frames(self):
        for i in range(10):
            self._put(Image.new("RGB", (8, 8), (i, i, i)))


def test_a_full_queue_drops_the_oldest_frames_and_counts_them():
    source = SlowConsumerSource("fast camera", queue_size=3).start()
    wait_until(lambda: source.ended)
    assert source.dropped == 7
    assert [source.read(timeout=1).frame_id for _ in range(3)] == [8, 9, 10]  # the newest stayed


def test_a_frame_over_the_pixel_budget_stops_the_source_with_one_line():
    source = SlowConsumerSource("big camera", max_pixels=32).start()
    with pytest.raises(TooLargeError, match="big camera: frames of 8x8 pixels are more than the limit of 32"):
        source.read(timeout=10)


def test_triggers_every_n_at_most_f_per_second_and_on_change():
    grey = Image.new("RGB", (32, 32), (100, 100, 100))
    every_third = Triggers(every=3)
    assert [every_third.due(grey, t) for t in range(7)] == [True, False, False, True, False, False, True]

    two_per_second = Triggers(max_fps=2)
    assert [two_per_second.due(grey, t / 10) for t in range(12)] == [i % 5 == 0 for i in range(12)]

    on_change = Triggers(on_change=10)
    belt, part = Image.new("RGB", (32, 32), (100, 100, 100)), Image.new("RGB", (32, 32), (100, 100, 100))
    part.paste((250, 250, 250), (8, 8, 24, 24))  # a bright part on a quarter of the picture: +37 grey levels
    noisy_belt = Image.new("RGB", (32, 32), (103, 103, 103))
    assert [on_change.due(image, 0) for image in (belt, noisy_belt, part, part, belt)] == [
        True, False, True, False, True]
    with pytest.raises(ParameterError):
        Triggers(every=0)


class ListSource(FrameSource):
    live = False

    def __init__(self, images):
        super().__init__("list", queue_size=4)
        self.images = images

    def _read_frames(self):
        for image in self.images:
            self._put(image)


class BrokenSink:
    def publish(self, decision):
        raise ConnectionError("the broker is away")

    def close(self):
        pass


def test_the_watcher_decides_publishes_to_every_sink_and_answers_triggers():
    images = [Image.new("RGB", (16, 16), COLOURS["red" if i % 2 else "blue"]) for i in range(6)]
    recorder = Recorder()
    source = ListSource(images).start()
    watcher = Watcher(source, lambda image: {"label": "red" if image.getpixel((0, 0))[0] > 128 else "blue",
                                             "confidence": 0.9, "unknown": False,
                                             "alternatives": [{"label": "x", "confidence": 0.1}]},
                      [BrokenSink(), recorder], station="line-1", every=2, model_version=lambda: 7)
    with pytest.raises(NotFoundError, match="no frame from list yet"):
        watcher.trigger()

    watcher.run(threading.Event())

    assert [d.frame_id for d in recorder.decisions] == [1, 3, 5]  # the broken sink stopped nothing
    assert {d.label for d in recorder.decisions} == {"blue"} and recorder.decisions[0].model_version == 7
    assert recorder.decisions[0].station == "line-1" and recorder.decisions[0].top_k == [{"label": "x",
                                                                                          "confidence": 0.1}]
    assert watcher.stats == {"read": 6, "decided": 3, "dropped": 0}
    triggered = watcher.trigger()  # the latest frame, whatever the triggers say
    assert triggered.frame_id == 6 and triggered.label == "red" and watcher.latest.decision == triggered


def test_a_stream_name_never_carries_its_password():
    assert without_password("rtsp://admin:secret@10.0.0.5:554/live") == "rtsp://admin@10.0.0.5:554/live"
    assert without_password("http://10.0.0.5/video.mjpg") == "http://10.0.0.5/video.mjpg"


class Receiver:
    """An HTTP server that answers 503 to the first ``fail`` POSTs, then keeps the JSON bodies."""

    def __init__(self, fail: int = 0):
        received = self.received = []
        failures = [fail]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if failures[0] > 0:
                    failures[0] -= 1
                    self.send_response(503)
                else:
                    received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/decisions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def decision(frame_id: int) -> Decision:
    return Decision(station="s", source="cam", frame_id=frame_id, timestamp=1.0, label="ok", confidence=0.9,
                    unknown=False, top_k=[{"label": "ok", "confidence": 0.9}])


def test_the_webhook_posts_each_decision_in_order_and_retries_a_receiver_that_failed():
    receiver = Receiver(fail=1)
    sink = WebhookSink(receiver.url)
    try:
        for i in range(3):
            sink.publish(decision(i))
        # the receiver holds a body before the sink has read the answer and counted it: wait for both
        wait_until(lambda: len(receiver.received) == 3 and sink.sent == 3)
        assert [d["frame_id"] for d in receiver.received] == [0, 1, 2] and receiver.received[0]["label"] == "ok"
        assert sink.sent == 3 and sink.dropped == 0
    finally:
        sink.close()
        receiver.close()


def test_the_webhook_queue_drops_the_oldest_when_the_receiver_is_away():
    sink = WebhookSink("http://127.0.0.1:9/nobody", max_buffered=2, timeout=0.5)  # port 9: nothing listens
    for i in range(5):
        sink.publish(decision(i))
    assert sink.dropped == 3
    sink.close(wait=0)
    with pytest.raises(ParameterError, match="give an http"):
        WebhookSink("ftp://example/x")


@pytest.fixture
def tiny_model(tmp_path):
    from edgelearn.recognizer import Recognizer

    rec = Recognizer.create("tiny", learner="ncm", weights="random", input_size=32)
    rec.learn([Image.new("RGB", (32, 32), c) for c in COLOURS.values()], list(COLOURS))
    rec.save(tmp_path / "m.edge")
    return tmp_path / "m.edge"


def test_watch_end_to_end_on_a_video_file(tmp_path, tiny_model):
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(8):
        writer.write(np.full((32, 32, 3), COLOURS["red" if i < 4 else "blue"][::-1], np.uint8))  # BGR
    writer.release()

    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(app, ["watch", str(video), "--model", str(tmp_path / "m.edge"), "--weights",
                                      "random", "--every", "2", "--station", "line-1", "--json-lines", "--for", "60"])

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(d["frame_id"], d["label"]) for d in lines] == [(1, "red"), (3, "red"), (5, "blue"), (7, "blue")]
    assert lines[0]["station"] == "line-1" and lines[0]["source"] == str(video)
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is the caller's again
    assert "frames read 8, decided 4, dropped 0" in result.output


def test_watch_says_what_is_wrong_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["watch", str(tmp_path / "none.avi"), "--model", str(tmp_path / "m.edge"),
                                      "--station", "a/b"])
    assert result.exit_code == 1 and "station name 'a/b'" in result.output


def test_watch_without_the_plant_install_says_what_to_install(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "edgelearn.plant.mqtt", None)  # as if paho-mqtt's module were missing
    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--model", str(tiny_model), "--weights", "random",
                                      "--mqtt", "mqtt://127.0.0.1:1883", "--for", "1"])
    assert result.exit_code == 1 and "needs the plant install: pip install 'edgelearn[plant]'" in result.output


def test_watch_stops_cleanly_on_sigterm_and_reports_its_frames(tmp_path, tiny_model):
    drop = tmp_path / "drop"
    drop.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "edgelearn", "watch", str(drop), "--model", str(tiny_model),
                                "--weights", "random", "--station", "line-1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    seen = threading.Event()

    def drop_parts():  # files there before the start are not new: keep dropping until one is seen
        for i in range(300):
            if seen.wait(0.5):
                return
            Image.new("RGB", (32, 32), COLOURS["blue"]).save(drop / f"part{i}.png")

    threading.Thread(target=drop_parts, daemon=True).start()
    bound = threading.Timer(120, process.kill)  # a watcher that never answers fails the test, never hangs it
    bound.start()
    try:
        first = process.stdout.readline()
        seen.set()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        seen.set()
        bound.cancel()
        process.kill()
    assert process.returncode == 0, stderr
    assert first.startswith("frame 1: blue") and "frames read" in stderr and "decided" in stderr
