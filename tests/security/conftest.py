"""Attacks on a real `edgelearn serve` process on 127.0.0.1 (tiny random backbone).

Every test here is bounded: a fixed number of requests, a timeout on each, and payloads of at most a
few MiB sent from the test itself. Nothing is sent to any address but the loopback one.
"""

import pytest

from tests.integration.server import Server


@pytest.fixture(scope="module")
def station_server(tmp_path_factory):
    """A station with kept images and a 2 MiB request limit, shared by one test module."""
    s = Server(tmp_path_factory.mktemp("station") / "data", "--keep-images", "--max-upload-mb", "2")
    yield s
    s.stop()
