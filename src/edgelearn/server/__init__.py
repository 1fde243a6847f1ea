"""The station: a web page and REST API over a recognizer and its SQLite store."""

import os
import secrets
from pathlib import Path

from edgelearn.files import DATA_ENV, default_data_dir, private_folder, write_private
from edgelearn.server.app import create_app
from edgelearn.server.guard import MIN_TOKEN_CHARS, Tokens, check_token, is_loopback, load_users, read_private
from edgelearn.server.station import Station, StationConfig

TOKEN_ENV = "EDGELEARN_TOKEN"
READ_TOKEN_ENV = "EDGELEARN_READ_TOKEN"


def station_token(data_dir: str | os.PathLike, token: str | None = None) -> tuple[str, bool]:
    """The write token: given, else ``$EDGELEARN_TOKEN``, else ``<data_dir>/token`` (made on first
    start, mode 0600). Refuses tokens shorter than 16 characters and a token file that others can
    read. Returns ``(token, newly_made)``."""
    token = token or os.environ.get(TOKEN_ENV)
    newly_made = False
    if not token:
        path = Path(data_dir) / "token"
        if path.is_file():
            token = read_private(path).strip()
        else:
            private_folder(path.parent)
            token, newly_made = secrets.token_urlsafe(24), True
            write_private(path, (token + "\n").encode())
    check_token(token)
    return token, newly_made


def read_token(data_dir: str | os.PathLike, token: str | None = None) -> str | None:
    """The optional read-only token: given, else ``$EDGELEARN_READ_TOKEN``, else ``<data_dir>/read-token``
    if that file exists (never made by itself: without one, reads need the write token or are open)."""
    token = token or os.environ.get(READ_TOKEN_ENV)
    path = Path(data_dir) / "read-token"
    if not token and path.is_file():
        token = read_private(path).strip()
    return check_token(token, "the read token") if token else None


__all__ = ["DATA_ENV", "MIN_TOKEN_CHARS", "READ_TOKEN_ENV", "TOKEN_ENV", "Station", "StationConfig", "Tokens",
           "check_token", "create_app", "default_data_dir", "is_loopback", "load_users", "read_token", "station_token"]
