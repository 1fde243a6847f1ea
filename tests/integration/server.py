"""A real `edgelearn serve` process on loopback, for API, crash and browser tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``edgelearn serve`` with the tiny random backbone (or ``args``), started and waited for."""

    def __init__(self, data: Path, *args: str, log: Path | None = None, env: dict | None = None,
                 token: str | None = TOKEN):
        """``token=None``: none on the command line (the station's file or ``$EDGELEARN_TOKEN``)."""
        self.data, self.port, self.token = data, free_port(), token or (env or {}).get("EDGELEARN_TOKEN")
        host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
        scheme = "https" if "--tls" in args else "http"
        self.url = f"{scheme}://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"
        self.log = log or data.parent / f"serve-{self.port}.log"
        defaults = ["--backbone", "tiny", "--weights", "random", "--input-size", "32"] if "--backbone" not in args \
            else []
        cmd = [sys.executable, "-m", "edgelearn", "serve", "--data", str(data), "--port", str(self.port),
               *(["--token", token] if token else []), *defaults, *args]
        self.log_file = open(self.log, "ab")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.client = httpx.Client(base_url=self.url, timeout=60, verify=False)  # --tls: self-signed
        self._wait()

    def _wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if self.client.get("/api/status", headers=self.auth()).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.log.read_text()}")

    def teach(self, *labels: str, n: int = 3) -> None:
        """Teach each colour in ``labels`` from ``n`` generated images (tests' colour classes)."""
        from tests.unit.test_station import png

        for name in labels:
            r = self.client.post("/api/learn", headers=self.auth(), data={"label": name},
                                 files=[("files", (f"{name}{i}.png", png(name, i), "image/png")) for i in range(n)])
            assert r.status_code == 200, r.text

    def auth(self, user: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"}
        if user:
            headers["X-User"] = user
        return headers

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.close()

    def stop(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.close()
        return code

    def close(self) -> None:
        self.client.close()
        self.log_file.close()
