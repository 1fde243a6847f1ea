"""The station's guard: who may do what, decided from the request line and headers alone."""

import pytest

from edgelearn.errors import EdgelearnError
from edgelearn.server import Tokens, load_users, read_token
from edgelearn.server.guard import host_allowed, is_loopback, needed_access, served_names

WRITE_TOKEN, READ_TOKEN = "write-token-0123456789", "read-token-0123456789"


def test_routes_need_what_they_change_or_reveal():
    assert needed_access("POST", "/api/learn", False) == "write"
    assert needed_access("POST", "/api/predict", False) is None
    assert needed_access("POST", "/api/predict", True) == "read"
    assert needed_access("GET", "/api/status", False) is None
    for path in ("/api/events", "/api/knowledge", "/api/thumbnails/3", "/api/queue/7/image"):
        assert needed_access("GET", path, False) == "read", path
    for path in ("/", "/static/app.js", "/docs", "/openapi.json"):
        assert needed_access("GET", path, True) is None, path


def test_tokens_tell_writers_readers_and_users_apart():
    tokens = Tokens(WRITE_TOKEN, READ_TOKEN, {"ann": "ann-token-0123456789"})
    assert tokens.who(WRITE_TOKEN) == ("write", None)
    assert tokens.who(READ_TOKEN) == ("read", None)
    assert tokens.who("ann-token-0123456789") == ("write", "ann")
    assert tokens.who("wrong-token-0123456789") == (None, None)
    assert tokens.who(None) == (None, None)


def test_loopback_is_decided_on_the_address_given():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "station.plant.example"))


def test_host_header_names_are_checked_addresses_pass():
    names = served_names("127.0.0.1", ["Station.Plant.Example"])
    for host in ("localhost:8000", "LOCALHOST", "[::1]:8000", "station.plant.example.", "10.0.0.7:8000", "[fe80::1]"):
        assert host_allowed(host, names), host
    for host in ("evil.example", "localhost.evil.example", "", "127.0.0.1.nip.io"):
        assert not host_allowed(host, names), host


def test_the_read_token_comes_from_the_option_the_environment_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGELEARN_READ_TOKEN", raising=False)
    assert read_token(tmp_path) is None  # never made by itself
    (tmp_path / "read-token").write_text(READ_TOKEN + "\n")
    (tmp_path / "read-token").chmod(0o644)
    with pytest.raises(EdgelearnError, match="chmod 600"):
        read_token(tmp_path)
    (tmp_path / "read-token").chmod(0o600)
    assert read_token(tmp_path) == READ_TOKEN
    monkeypatch.setenv("EDGELEARN_READ_TOKEN", "env-read-token-0123456789")
    assert read_token(tmp_path) == "env-read-token-0123456789"
    with pytest.raises(EdgelearnError, match="too short"):
        read_token(tmp_path, "short")


def test_a_users_file_others_can_read_or_with_short_tokens_is_refused(tmp_path):
    users = tmp_path / "users"
    users.write_text("ann ann-token-0123456789\n")
    users.chmod(0o644)
    with pytest.raises(EdgelearnError, match="chmod 600"):
        load_users(users)
    users.chmod(0o600)
    assert load_users(users) == {"ann": "ann-token-0123456789"}
    users.write_text("ann short\n")
    with pytest.raises(EdgelearnError, match="too short"):
        load_users(users)
    users.write_text("ann\n")
    with pytest.raises(EdgelearnError, match="line 1"):
        load_users(users)
