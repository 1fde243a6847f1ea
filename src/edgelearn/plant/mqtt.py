"""Decisions out over MQTT: one JSON message per decision, none lost while the broker is away.

Topics, for a station named ``line-3``:

- ``edgelearn/line-3/result``: ``Decision.to_dict()`` as JSON, QoS 1, retained (a dashboard that connects
  later sees the last result at once).
- ``edgelearn/line-3/state``: ``online`` (retained, sent on every connect) and ``offline`` (retained; the
  broker sends it as the last will when the station dies or loses its network, the station on a clean close).
- ``edgelearn/line-3/trigger``: any message asks for a decision now (:meth:`MqttSink.on_trigger`).

Every result first lands in an on-disk outbox (SQLite, WAL) and leaves it only when the broker has
acknowledged it (PUBACK), so results survive a broker outage or a station restart and arrive in order;
QoS 1 allows a duplicate after a reconnect, never a loss. The outbox is bounded: beyond ``max_buffered``
the oldest results are dropped and counted (:attr:`MqttSink.dropped`).

Writes over MQTT (correcting or teaching the station) are off: this module only reads the trigger topic,
which decides on the latest frame and changes nothing. Corrections go through the station's API, which
checks the token and the label rule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

try:
    import paho.mqtt.client as mqtt
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError("MQTT needs the plant install: pip install 'edgelearn[plant]'", name=exc.name) from None

from edgelearn.errors import ParameterError, WriteError
from edgelearn.plant.decision import Decision

log = logging.getLogger(__name__)

PORTS = {"mqtt": 1883, "mqtts": 8883}
IN_FLIGHT = 20  # results handed to paho and not yet acknowledged: paho's own in-flight window
CONNECT_WAIT = 5.0  # seconds the constructor waits for the broker's first answer (a refusal is an error)
CLOSE_WAIT = 2.0  # seconds close() waits for the broker to acknowledge what is in flight


def check_station(station: str) -> str:
    """A station name that is safe inside an MQTT topic: not empty, no ``/``, ``+``, ``#`` or control characters."""
    if not station or len(station) > 100 or any(c in "/+#" or not c.isprintable() for c in station):
        raise ParameterError(f"station name {station!r} cannot be used in MQTT topics: use 1 to 100 printable "
                             "characters without '/', '+' or '#' (for example 'line-3')")
    return station


def parse_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` or ``mqtts://host:port`` -> (host, port, TLS?)."""
    parts = urlsplit(url)
    try:
        port = parts.port or PORTS.get(parts.scheme)
    except ValueError:
        port = None
    if parts.scheme not in PORTS or not parts.hostname or not port or parts.path not in ("", "/") \
            or parts.query or parts.username:
        raise ParameterError(f"MQTT broker URL {url!r} is not of the form mqtt://HOST:PORT or mqtts://HOST:PORT "
                             "(user name and password go in their own options)")
    return parts.hostname, port, parts.scheme == "mqtts"


class Outbox:
    """Results waiting for the broker's acknowledgement, oldest first, in a SQLite file (thread-safe)."""

    def __init__(self, path: Path, max_buffered: int):
        if max_buffered < 1:
            raise ParameterError(f"max_buffered must be at least 1, got {max_buffered}")
        self.max_buffered = max_buffered
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives the process dying
            # AUTOINCREMENT: ids never come back, so "handed up to id N" stays true after rows are deleted
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "payload TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            raise WriteError(f"cannot keep the MQTT outbox in {path}: {e}") from e

    def add(self, payload: str) -> int:
        """Append ``payload``; returns how many of the oldest results were dropped to stay in bounds."""
        with self._lock:
            self._db.execute("INSERT INTO outbox (payload) VALUES (?)", (payload,))
            return self._db.execute("DELETE FROM outbox WHERE id <= (SELECT id FROM outbox ORDER BY id DESC "
                                    "LIMIT 1 OFFSET ?)", (self.max_buffered,)).rowcount

    def after(self, row_id: int, limit: int) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute("SELECT id, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (row_id, limit)).fetchall()

    def remove(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MqttSink:
    """Publishes each :class:`Decision` on ``edgelearn/<station>/result`` of the broker at ``url``.

    ``publish`` only writes to the outbox and returns; a sender thread hands results to paho in order,
    at most ``IN_FLIGHT`` unacknowledged at a time, and removes each from the outbox on its PUBACK.
    The constructor waits up to ``CONNECT_WAIT`` s for the broker: a refused login is an error, an
    unreachable broker is not (results wait in the outbox; paho reconnects with backoff).

    Examples
    --------
    >>> sink = MqttSink("mqtt://127.0.0.1:1883", "line-3", outbox=Path("outbox.db"))  # doctest: +SKIP
    >>> sink.publish(decision)  # doctest: +SKIP
    """

    def __init__(self, url: str, station: str, *, outbox: Path, username: str | None = None,
                 password: str | None = None, tls_ca: Path | None = None, max_buffered: int = 100_000):
        host, port, tls = parse_url(url)
        self.url, self.station = url, check_station(station)
        self.topic = f"edgelearn/{station}"
        self.dropped = 0  # results dropped from a full outbox since this sink started
        self._client = self._make_client(tls, username, password, tls_ca)
        self._outbox = Outbox(Path(outbox), max_buffered)
        self._connected = threading.Event()
        self._answered = threading.Event()  # the broker's first answer (or a failed connection) came
        self._refusal: str | None = None
        self._acked: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._in_flight: dict[int, int] = {}  # paho message id -> outbox row id
        self._resent_by_paho = False  # after a reconnect paho resends what was in flight: wait for those first
        self._trigger: Callable[[], object] | None = None
        self._triggers: queue.Queue[None] = queue.Queue(maxsize=16)
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()
        self._connect_or_raise()
        self._sender = threading.Thread(target=self._send_loop, name=f"mqtt-sender-{station}", daemon=True)
        self._sender.start()

    def _make_client(self, tls: bool, username: str | None, password: str | None,
                     tls_ca: Path | None) -> mqtt.Client:
        if password is not None and username is None:
            raise ParameterError("an MQTT password needs a user name too")
        if tls_ca is not None and not tls:
            raise ParameterError(f"a CA certificate ({tls_ca}) needs an mqtts:// broker URL, got {self.url}")
        if tls_ca is not None and not Path(tls_ca).is_file():
            raise ParameterError(f"CA certificate {tls_ca} does not exist")
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgelearn-{self.station}")
        if tls:
            client.tls_set(ca_certs=str(tls_ca) if tls_ca else None)  # None: the system's trusted CAs
        if username is not None:
            client.username_pw_set(username, password)
        client.will_set(f"{self.topic}/state", "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect, client.on_connect_fail = self._on_connect, self._on_connect_fail
        client.on_disconnect, client.on_publish = self._on_disconnect, self._on_publish
        client.on_message = self._on_message
        return client

    def _connect_or_raise(self) -> None:
        self._answered.wait(CONNECT_WAIT)
        if self._refusal is not None:
            self._client.disconnect()  # stops paho's retries
            self._client.loop_stop()
            self._outbox.close()
            raise ParameterError(f"the MQTT broker at {self.url} refused station {self.station!r}: "
                                 f"{self._refusal}; check the user name, password and the broker's access rules")
        if not self._connected.is_set():
            log.warning("MQTT broker at %s is not reachable yet: results wait in the outbox", self.url)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def buffered(self) -> int:
        """Results in the outbox: not yet acknowledged by the broker."""
        return len(self._outbox)

    def publish(self, decision: Decision) -> None:
        """Queue ``decision`` for the broker (a local disk write; never waits for the network)."""
        dropped = self._outbox.add(json.dumps(decision.to_dict()))
        if dropped:
            if not self.dropped:
                log.warning("MQTT outbox full (%d results): dropping the oldest", self._outbox.max_buffered)
            self.dropped += dropped
        self._wake.set()

    def on_trigger(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` for each message on ``edgelearn/<station>/trigger``, on a thread of its own."""
        first, self._trigger = self._trigger is None, callback
        if first:
            threading.Thread(target=self._trigger_loop, name=f"mqtt-trigger-{self.station}", daemon=True).start()
        if self.connected:
            self._client.subscribe(f"{self.topic}/trigger", qos=1)

    def close(self) -> None:
        """Wait briefly for acknowledgements, say ``offline``, disconnect. Unsent results stay in the outbox."""
        if self._stop.is_set():
            return
        deadline = time.monotonic() + CLOSE_WAIT
        while self.connected and len(self._outbox) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):
            self._triggers.put_nowait(None)  # wakes the trigger thread, which then sees _stop
        self._sender.join()
        if self.connected:
            info = self._client.publish(f"{self.topic}/state", "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError):  # the broker went away meanwhile: the last will says it
                info.wait_for_publish(CLOSE_WAIT)
        self._client.disconnect()
        self._client.loop_stop()
        self._outbox.close()

    # the sender thread: hands results to paho in outbox order, removes them when acknowledged

    def _send_loop(self) -> None:
        handed = 0  # the last outbox row handed to paho by this process
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while not self._acked.empty():
                row = self._in_flight.pop(self._acked.get(), None)
                if row is not None:
                    self._outbox.remove(row)
            if self._resent_by_paho and not self._in_flight:
                self._resent_by_paho = False
            if self.connected and not self._resent_by_paho and len(self._in_flight) < IN_FLIGHT:
                for row, payload in self._outbox.after(handed, IN_FLIGHT - len(self._in_flight)):
                    info = self._client.publish(f"{self.topic}/result", payload, qos=1, retain=True)
                    self._in_flight[info.mid] = handed = row

    # paho's callbacks (its network thread): short, and never touching the outbox

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            log.error("MQTT broker at %s refused the connection: %s", self.url, reason)
        else:
            client.publish(f"{self.topic}/state", "online", qos=1, retain=True)
            if self._trigger is not None:
                client.subscribe(f"{self.topic}/trigger", qos=1)
            self._resent_by_paho = bool(self._in_flight)
            self._connected.set()
            self._wake.set()
        self._answered.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._answered.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("lost the MQTT broker at %s (%s): results wait in the outbox", self.url, reason)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self._acked.put(mid)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            self._triggers.put_nowait(None)
        except queue.Full:
            log.warning("MQTT trigger ignored: %d triggers are already waiting", self._triggers.maxsize)

    def _trigger_loop(self) -> None:
        """Decide off paho's thread, so a slow decision does not hold up acknowledgements."""
        while True:
            self._triggers.get()
            if self._stop.is_set():
                return
            try:
                self._trigger()
            except Exception:
                log.exception("MQTT trigger failed")
