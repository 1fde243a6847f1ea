"""The station: a web page and REST API over a recognizer and its SQLite store."""

import os
import secrets
import stat
from pathlib import Path

from edgelearn.errors import EdgelearnError
from edgelearn.files import private_folder, write_private
from edgelearn.server.app import create_app
from edgelearn.server.station import DATA_ENV, Station, StationConfig, default_data_dir

TOKEN_ENV = "EDGELEARN_TOKEN"
MIN_TOKEN_CHARS = 16


def station_token(data_dir: str | os.PathLike, token: str | None = None) -> tuple[str, bool]:
    """The write token: given, else ``$EDGELEARN_TOKEN``, else ``<data_dir>/token`` (made on first
    start, mode 0600). Refuses tokens shorter than 16 characters and a token file that others can
    read. Returns ``(token, newly_made)``."""
    token = token or os.environ.get(TOKEN_ENV)
    newly_made = False
    if not token:
        path = Path(data_dir) / "token"
        if path.is_file():
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise EdgelearnError(f"{path} can be read by other users of this machine; make it private "
                                     f"(chmod 600 {path}) or remove it to get a new token")
            token = path.read_text().strip()
        else:
            private_folder(path.parent)
            token, newly_made = secrets.token_urlsafe(24), True
            write_private(path, (token + "\n").encode())
    check_token(token)
    return token, newly_made


def check_token(token: str, what: str = "the station's token") -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise EdgelearnError(f"{what} is too short ({len(token)} characters; at least {MIN_TOKEN_CHARS}): "
                             "anyone could guess it")
    return token


__all__ = ["DATA_ENV", "TOKEN_ENV", "Station", "StationConfig", "check_token", "create_app", "default_data_dir",
           "station_token"]
