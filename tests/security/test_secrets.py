"""Secrets and defaults of a real `edgelearn serve` on 127.0.0.1: HTTPS with the fingerprint it prints,
a private data folder, tokens that are long enough and kept private, nothing in the checkout."""

import hashlib
import os
import re
import ssl
import subprocess
import sys

import pytest

from tests.integration.server import Server

TOKEN = "a-token-from-the-environment-0123"


def test_tls_serves_the_certificate_whose_fingerprint_it_prints_and_keeps_its_folder_private(tmp_path):
    server = Server(tmp_path / "data", "--tls", "--keep-images", token=None, env={"EDGELEARN_TOKEN": TOKEN})
    try:
        assert server.url.startswith("https://")
        assert server.client.get("/api/events", headers=server.auth()).status_code == 200
        served = ssl.get_server_certificate(("127.0.0.1", server.port))
        digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(served)).hexdigest().upper()
        printed = re.search(r"SHA-256 fingerprint ([0-9A-F:]+)", server.log.read_text()).group(1)
        assert printed.replace(":", "") == digest
    finally:
        server.stop()
    log = server.log.read_text()
    assert TOKEN not in log and "--token" not in log  # a token from the environment is never printed
    data = tmp_path / "data"
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("station.sqlite", "tls.key"):
        assert (data / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_short_token_stops_the_station_before_it_listens(tmp_path, how):
    args = [sys.executable, "-m", "edgelearn", "serve", "--data", str(tmp_path / "d"), "--backbone", "tiny",
            "--weights", "random", "--input-size", "32", "--port", "1"]
    env = {k: v for k, v in os.environ.items() if k != "EDGELEARN_TOKEN"}
    if how == "environment":
        env["EDGELEARN_TOKEN"] = "short"
    done = subprocess.run(args + (["--token", "short"] if how == "option" else []), capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 1 and "too short" in done.stderr


def test_a_token_file_others_can_read_stops_the_station(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "token").write_text("x" * 32 + "\n")
    (data / "token").chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "edgelearn", "serve", "--data", str(data), "--backbone", "tiny",
                           "--weights", "random", "--input-size", "32", "--port", "1"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "EDGELEARN_TOKEN"})
    assert done.returncode == 1 and "chmod 600" in done.stderr
