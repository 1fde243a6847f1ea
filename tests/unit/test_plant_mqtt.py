"""MqttSink against a real Mosquitto broker on 127.0.0.1, started and stopped by the tests."""

import json
import os
import queue
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import edgelearn
from edgelearn.errors import ParameterError, WriteError
from edgelearn.federation.tls import make_certificates
from edgelearn.plant import Decision
from edgelearn.plant.mqtt import MqttSink
from tests.mosquitto import MOSQUITTO, TIMEOUT, Broker, Subscriber, wait_for

pytest.importorskip("paho.mqtt.client")

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).is_file(),
                                reason="Mosquitto is not installed (apt-get install mosquitto; CI installs it)")


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
