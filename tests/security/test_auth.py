"""Authentication before work (issue 16, section 2), against real `edgelearn serve` processes on 127.0.0.1.

Bounded: a fixed number of requests; the largest body is 50 MiB streamed from a generator, refused
after its headers; everything goes to servers these tests start on loopback.
"""

import os
from pathlib import Path

import pytest

from tests.integration.server import Server
from tests.unit.test_station import png

READ_TOKEN = "read-only-token-0123456789"
MiB = 2**20


def files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def multipart_stream(total: int, on_chunk=lambda: None, chunk: int = MiB):
    """A chunked multipart body (no Content-Length) with one file part of ``total`` bytes."""
    boundary = "edgelearn-boundary"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"\r\n\r\nred\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(total // chunk):
            on_chunk()
            yield b"\0" * chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return headers, body()


def temp_files_held(pid: int, folder: Path) -> list[str]:
    """Files under ``folder`` the process has open (spooled uploads are unlinked at once: only /proc sees them)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


@pytest.fixture(scope="module")
def spool(tmp_path_factory):
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def station(tmp_path_factory, spool):
    """A loopback station with kept images, a 2 MiB request limit and its temp folder under the test's eye."""
    s = Server(tmp_path_factory.mktemp("station") / "data", "--keep-images", "--max-upload-mb", "2",
               "--queue-below", "1.01", env={"TMPDIR": str(spool)})  # every prediction queued
    r = s.client.post("/api/learn", headers=s.auth("ann"), data={"label": "red"},
                      files=files(*[(f"r{i}.png", png("red", i)) for i in range(3)]))
    assert r.status_code == 200
    s.client.post("/api/predict", files={"image": ("q.png", png("blue", 7))})  # queued with its image
    yield s
    s.stop()


def test_a_large_chunked_upload_without_the_token_is_refused_before_any_byte_is_stored(station, spool):
    before, held = set(spool.iterdir()), []
    headers, body = multipart_stream(50 * MiB, on_chunk=lambda: held.extend(temp_files_held(station.process.pid,
                                                                                             spool)))
    r = station.client.post("/api/learn", content=body, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]
    assert held == [] and set(spool.iterdir()) == before


def test_a_thousand_and_one_files_without_the_token_get_401_not_too_many_files(station):
    many = files(*[(f"{i}.png", b"x") for i in range(1001)])
    r = station.client.post("/api/learn", data={"label": "red"}, files=many)
    assert r.status_code == 401 and "token" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(station, spool):
    held = []

    def check_spool():  # long after the 2 MiB limit, nothing of this request may still be kept
        nonlocal sent
        sent += 1
        if sent > 12:
            held.extend(temp_files_held(station.process.pid, spool))

    sent = 0
    headers, body = multipart_stream(16 * MiB, on_chunk=check_spool)  # the station's limit: 2 MiB
    r = station.client.post("/api/learn", content=body, headers={**headers, **station.auth()})
    assert held == []
    assert r.status_code == 413 and r.json()["detail"] == "this request is larger than 2 MiB"
    raw = (b"\0" * MiB for _ in range(30))  # a raw frame without Content-Length
    r = station.client.post("/api/predict", content=raw, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413
    assert station.client.get("/api/status").status_code == 200


def test_sensitive_reads_need_a_token_even_on_loopback(station):
    thumbnail = station.client.post("/api/predict", files={"image": ("q.png", png("red", 9))}).json()
    paths = ["/api/events", "/api/knowledge", f"/api/thumbnails/{thumbnail['representatives'][0]['thumbnail']}",
             f"/api/queue/{station.client.get('/api/queue').json()['items'][0]['id']}/image"]
    for path in paths:
        r = station.client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert station.client.get(path, headers=station.auth()).status_code == 200, path
    public = station.client.get("/api/status")
    assert public.status_code == 200 and "config" not in public.json() and public.json()["classes"] == ["red"]
    assert "config" in station.client.get("/api/status", headers=station.auth()).json()
    for path in ("/", "/static/app.js", "/api/versions", "/api/concepts", "/api/queue"):
        assert station.client.get(path).status_code == 200, path  # loopback, no --read-token: open


@pytest.fixture(scope="module")
def read_protected(tmp_path_factory):
    """A station with a read token and the default 200 MiB request limit."""
    s = Server(tmp_path_factory.mktemp("read") / "data", "--read-token", READ_TOKEN)
    yield s
    s.stop()


def test_a_read_token_opens_reads_but_cannot_write(read_protected):
    server = read_protected
    reader = bearer(READ_TOKEN)
    for path in ("/api/status", "/api/versions", "/api/events", "/api/knowledge", "/api/queue"):
        assert server.client.get(path).status_code == 401, path
        assert server.client.get(path, headers=reader).status_code == 200, path
        assert server.client.get(path, headers=server.auth()).status_code == 200, path  # write token reads
    assert "config" in server.client.get("/api/status", headers=reader).json()
    predict = {"files": {"image": ("q.png", png("red"))}}
    assert server.client.post("/api/predict", **predict).status_code == 401
    assert server.client.post("/api/predict", headers=reader, **predict).status_code == 200
    r = server.client.post("/api/learn", headers=reader, data={"label": "red"}, files=files(("r.png", png("red"))))
    assert r.status_code == 403 and "can only look" in r.json()["detail"]
    assert server.client.post("/api/consolidate", headers=reader).status_code == 403
    assert server.client.get("/api/events", headers=reader).json()["events"] == []  # nothing was learned
    assert server.client.get("/").status_code == 200  # the page asks for the token


def test_requests_without_files_and_single_images_have_their_own_limits(read_protected):
    server = read_protected
    headers, body = multipart_stream(2 * MiB)  # a 2 MiB 'file' where a label is expected
    r = server.client.post("/api/queue/1", content=body, headers={**headers, **server.auth()})
    assert r.status_code == 413 and "64 KiB" in r.json()["detail"]
    big_image = b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * MiB)
    r = server.client.post("/api/learn", headers=server.auth(), data={"label": "a"},
                           files=files(("big.png", big_image)))
    assert r.status_code == 413 and "20 MiB" in r.json()["detail"]
    r = server.client.post("/api/predict", headers=server.auth(), content=(big_image[i:i + MiB]
                                                                           for i in range(0, len(big_image), MiB)))
    assert r.status_code == 413 and "20 MiB" in r.json()["detail"]


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """A station bound to every address (reached here through 127.0.0.1 only) with per-user tokens."""
    folder = tmp_path_factory.mktemp("exposed")
    users = folder / "users"
    users.write_text("# who may teach\nann ann-token-0123456789\nbob: bob-token-0123456789\n")
    users.chmod(0o600)
    s = Server(folder / "data", "--host", "0.0.0.0", "--users", str(users))
    yield s
    s.stop()


def test_a_station_bound_beyond_loopback_needs_a_token_to_predict(exposed):
    server = exposed
    r = server.client.post("/api/predict", files={"image": ("q.png", png("red"))})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert server.client.get("/api/status").status_code == 401
    r = server.client.post("/api/predict", headers=server.auth(), files={"image": ("q.png", png("red"))})
    assert r.status_code == 200
    assert server.client.get("/").status_code == 200


def test_with_users_each_event_records_the_name_of_its_token(exposed):
    server = exposed
    for token, claimed in (("ann-token-0123456789", "mallory"), ("bob-token-0123456789", "ann")):
        r = server.client.post("/api/learn", headers={**bearer(token), "X-User": claimed}, data={"label": "red"},
                               files=files(("r.png", png("red"))))
        assert r.status_code == 200
    events = server.client.get("/api/events", headers=bearer("ann-token-0123456789")).json()["events"]
    assert sorted(e["user"] for e in events) == ["ann", "bob"]
    assert server.client.post("/api/consolidate", headers=bearer("eve-token-0123456789")).status_code == 401


def test_a_loopback_address_other_than_127_0_0_1_keeps_reads_open_and_allowed_host_adds_a_name(tmp_path):
    server = Server(tmp_path / "data", "--host", "127.0.0.2", "--allowed-host", "station.plant.example")
    try:
        assert server.url.startswith("http://127.0.0.2:")
        assert server.client.get("/api/status").status_code == 200
        assert server.client.get("/", headers={"Host": "station.plant.example:8000"}).status_code == 200
        assert server.client.get("/", headers={"Host": "other.plant.example"}).status_code == 400
    finally:
        server.stop()


@pytest.mark.parametrize("host", ["evil.example", "attacker.test:8000", "localhost.evil.example", ""])
def test_unknown_host_names_are_refused(station, host):
    r = station.client.get("/api/status", headers={"Host": host})
    assert r.status_code == 400 and "--allowed-host" in r.json()["detail"]


def test_served_host_names_and_addresses_are_answered(station):
    for host in ("localhost", f"localhost:{station.port}", "127.0.0.1", f"[::1]:{station.port}", "192.168.1.20"):
        assert station.client.get("/api/status", headers={"Host": host}).status_code == 200, host


def test_every_response_carries_the_security_headers(station):
    for r in (station.client.get("/"), station.client.get("/static/app.js"), station.client.get("/api/status"),
              station.client.get("/api/events"), station.client.get("/missing"),
              station.client.get("/api/status", headers={"Host": "evil.example"})):
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"
