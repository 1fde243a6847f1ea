"""Mosquitto on 127.0.0.1 and a subscriber: the real broker the MQTT tests and benchmarks/plant.py use."""

import getpass
import json
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
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
        import paho.mqtt.client as mqtt  # the plant install's

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
