"""MqttSink against a real Mosquitto broker on 127.0.0.1, started and stopped by the tests."""

import getpass
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgelearn
from edgelearn.errors import ParameterError, WriteError
from edgelearn.federation.tls import make_certificates
from edgelearn.plant import Decision
from edgelearn.plant.mqtt import MqttSink

mqtt = pytest.importorskip("paho.mqtt.client")

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).is_file(),
                                reason="Mosquitto is not installed (apt-get install mosquitto; CI installs it)")
TIMEOUT = 20  # seconds any one wait may take before the test fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Broker:
    """Mosquitto on 127.0.0.1:``port`` with a config file written here; ``start``/``stop`` may repeat."""

    def __init__(self, folder: Path, port: int | None = None, *, users: dict[str, str] | None = None,
                 persistence: bool = False, tls: dict[str, Path] | None = None):
        """``tls``: also a TLS listener on ``tls_port`` with ``make_certificates``' files."""
        self.folder, self.port = folder, port or free_port()
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}",
                 f"persistence {'true' if persistence else 'false'}", f"persistence_location {folder}/",
                 f"log_dest file {folder}/mosquitto.log",
                 f"user {getpass.getuser()}"]  # run as root, Mosquitto would switch to a user who cannot read tmp_path
        if users:
            passwords = folder / "passwords"
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, *([] if passwords.exists() else ["-c"]), "-b", str(passwords),
                                user, password], check=True, capture_output=True)
            lines.append(f"password_file {passwords}")
        if tls:
            self.tls_port = free_port()
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {tls['ca']}", f"certfile {tls['cert']}",
                      f"keyfile {tls['key']}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        with open(self.folder / "mosquitto.out", "ab") as out:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=out, stderr=out)
        wait_for(self._listening, f"Mosquitto on port {self.port}")
        return self

    def _listening(self) -> bool:
        assert self.process.poll() is None, (self.folder / "mosquitto.out").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: Mosquitto saves its persistence file and exits
        self.process.wait(TIMEOUT)


class Subscriber:
    """A paho client that collects the messages of ``topics`` in arrival order."""

    def __init__(self, broker: Broker, *topics: str, client_id: str = "", clean: bool = True):
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.on_message = lambda client, userdata, m: self.messages.put((m.topic, m.payload.decode(), m.retain))
        ready = queue.Queue()  # connected, and subscribed to ``topics`` if any
        self.client.on_subscribe = lambda *args: ready.put(True)
        self.client.on_connect = lambda client, *args: client.subscribe([(t, 1) for t in topics]) if topics \
            else ready.put(True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        ready.get(timeout=TIMEOUT)

    def take(self, n: int) -> list[tuple[str, str, bool]]:
        return [self.messages.get(timeout=TIMEOUT) for _ in range(n)]

    def results(self, n: int) -> list[dict]:
        return [json.loads(payload) for _, payload, _ in self.take(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def decision(frame_id: int, station: str = "line-3") -> Decision:
    return Decision(station=station, source="cam0", frame_id=frame_id, timestamp=1000.0 + frame_id, label="ok",
                    confidence=0.9, unknown=False, top_k=[{"label": "ok", "confidence": 0.9}], model_version=7)


@pytest.fixture
def broker(tmp_path):
    running = Broker(tmp_path).start()
    yield running
    running.stop()


@pytest.fixture
def sink(broker, tmp_path):
    made = MqttSink(broker.url, "line-3", outbox=tmp_path / "outbox.db")
    yield made
    made.close()


def test_every_decision_arrives_once_in_order_with_its_fields(broker, sink):
    subscriber = Subscriber(broker, "edgelearn/line-3/result")

    for i in range(20):
        sink.publish(decision(i))

    results = subscriber.results(20)
    assert [r["frame_id"] for r in results] == list(range(20))
    assert results[0] == decision(0).to_dict() | {"decided_at": results[0]["decided_at"]}
    wait_for(lambda: sink.buffered == 0, "the outbox to empty after the acknowledgements")
    assert subscriber.messages.empty()
    subscriber.close()


def test_a_late_subscriber_sees_the_last_result_and_online(broker, sink):
    for i in range(3):
        sink.publish(decision(i))
    wait_for(lambda: sink.buffered == 0, "the broker to acknowledge")

    late = Subscriber(broker, "edgelearn/line-3/result", "edgelearn/line-3/state")

    seen = {topic: (payload, retained) for topic, payload, retained in late.take(2)}
    assert seen["edgelearn/line-3/state"] == ("online", True)
    payload, retained = seen["edgelearn/line-3/result"]
    assert retained and json.loads(payload)["frame_id"] == 2
    late.close()


def test_a_clean_close_says_offline(broker, tmp_path):
    sink = MqttSink(broker.url, "line-4", outbox=tmp_path / "outbox.db")
    subscriber = Subscriber(broker, "edgelearn/line-4/state")
    assert subscriber.take(1)[0][1] == "online"

    sink.close()

    assert subscriber.take(1)[0][1:] == ("offline", False)
    subscriber.close()


def test_a_killed_station_is_reported_offline_by_the_broker(broker, tmp_path):
    script = ("import sys, time; from pathlib import Path; from edgelearn.plant.mqtt import MqttSink; "
              "sink = MqttSink(sys.argv[1], 'line-5', outbox=Path(sys.argv[2])); "
              "assert sink.connected; print('ready', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(Path(edgelearn.__file__).parents[1])}
    station = subprocess.Popen([sys.executable, "-c", script, broker.url, str(tmp_path / "outbox.db")],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert station.stdout.readline().strip() == "ready"
        subscriber = Subscriber(broker, "edgelearn/line-5/state")
        assert subscriber.take(1)[0][1] == "online"

        station.send_signal(signal.SIGKILL)

        assert subscriber.take(1)[0][1:] == ("offline", False)
        subscriber.close()
    finally:
        station.kill()
        station.wait(TIMEOUT)


@pytest.mark.parametrize("before", [0, 200], ids=["idle", "in-flight"])
def test_results_made_while_the_broker_is_down_arrive_in_order_after_its_restart(before, tmp_path):
    """``in-flight``: the broker stops while results are still being sent and acknowledged."""
    broker = Broker(tmp_path, persistence=True).start()
    # a persistent session: the broker keeps what arrives for it while this subscriber reconnects
    subscriber = Subscriber(broker, "edgelearn/line-3/result", client_id="dashboard", clean=False)
    sink = MqttSink(broker.url, "line-3", outbox=tmp_path / "outbox.db")
    try:
        for i in range(before):
            sink.publish(decision(i))
        broker.stop()
        wait_for(lambda: not sink.connected, "the sink to notice the broker is gone")

        for i in range(before, before + 50):
            sink.publish(decision(i))
        assert sink.buffered >= 50
        broker.start()

        ids = []
        while len(set(ids)) < before + 50:
            ids.append(subscriber.results(1)[0]["frame_id"])
        assert list(dict.fromkeys(ids)) == list(range(before + 50))  # in order, none lost (QoS 1 may repeat)
        wait_for(lambda: sink.buffered == 0, "the outbox to empty")
    finally:
        sink.close()
        subscriber.close()
        broker.stop()


def test_a_full_outbox_drops_the_oldest_and_the_rest_survive_a_restart(tmp_path):
    broker = Broker(tmp_path)  # not started: the station comes up before the broker
    outbox = tmp_path / "outbox.db"
    sink = MqttSink(broker.url, "line-3", outbox=outbox, max_buffered=5)
    assert not sink.connected
    for i in range(8):
        sink.publish(decision(i))
    assert (sink.dropped, sink.buffered) == (3, 5)
    sink.close()

    broker.start()
    subscriber = Subscriber(broker, "edgelearn/line-3/result")
    sink = MqttSink(broker.url, "line-3", outbox=outbox, max_buffered=5)
    try:
        assert [r["frame_id"] for r in subscriber.results(5)] == [3, 4, 5, 6, 7]
    finally:
        sink.close()
        subscriber.close()
        broker.stop()


def test_a_trigger_message_calls_the_callback(broker, sink):
    calls = queue.Queue()
    sink.on_trigger(lambda: calls.put("decide"))
    publisher = Subscriber(broker)

    for _ in range(2):
        publisher.client.publish("edgelearn/line-3/trigger", b"", qos=1)

    assert [calls.get(timeout=TIMEOUT) for _ in range(2)] == ["decide", "decide"]
    publisher.close()


def test_a_wrong_password_is_refused_with_a_clear_error(tmp_path):
    broker = Broker(tmp_path, users={"station": "right-password"}).start()
    try:
        with pytest.raises(ParameterError, match="refused station 'line-3'.*user name, password"):
            MqttSink(broker.url, "line-3", outbox=tmp_path / "a.db", username="station", password="wrong")
        sink = MqttSink(broker.url, "line-3", outbox=tmp_path / "b.db", username="station", password="right-password")
        assert sink.connected
        sink.close()
    finally:
        broker.stop()


def test_results_arrive_over_tls(tmp_path):
    certificates = make_certificates(tmp_path / "tls")
    broker = Broker(tmp_path, tls=certificates).start()
    subscriber = Subscriber(broker, "edgelearn/line-3/result")
    sink = MqttSink(f"mqtts://127.0.0.1:{broker.tls_port}", "line-3", outbox=tmp_path / "outbox.db",
                    tls_ca=certificates["ca"])
    try:
        assert sink.connected
        sink.publish(decision(1))
        assert subscriber.results(1)[0]["frame_id"] == 1
    finally:
        sink.close()
        subscriber.close()
        broker.stop()


@pytest.mark.parametrize("station", ["", "line/3", "line+", "#", "line\n3"])
def test_a_station_name_unsafe_in_topics_is_refused(station, tmp_path):
    with pytest.raises(ParameterError, match="cannot be used in MQTT topics"):
        MqttSink("mqtt://127.0.0.1:1", station, outbox=tmp_path / "outbox.db")


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "mqtt://", "mqtt://host:notaport", "mqtt://u:p@host:1883",
                                 "127.0.0.1:1883"])
def test_a_malformed_broker_url_is_refused(url, tmp_path):
    with pytest.raises(ParameterError, match="mqtt://HOST:PORT"):
        MqttSink(url, "line-3", outbox=tmp_path / "outbox.db")


def test_an_outbox_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(WriteError, match="cannot keep the MQTT outbox in"):
        MqttSink("mqtt://127.0.0.1:1", "line-3", outbox=tmp_path / "a-file" / "outbox.db")


def test_a_ca_certificate_needs_mqtts(tmp_path):
    with pytest.raises(ParameterError, match="needs an mqtts:// broker URL"):
        MqttSink("mqtt://127.0.0.1:1883", "line-3", outbox=tmp_path / "outbox.db", tls_ca=tmp_path / "ca.pem")
