"""The station: a web page and REST API over a recognizer and its SQLite store."""

import os
import secrets
from pathlib import Path

from edgelearn.server.app import create_app
from edgelearn.server.station import Station, StationConfig

TOKEN_ENV = "EDGELEARN_TOKEN"


def station_token(data_dir: str | os.PathLike, token: str | None = None) -> tuple[str, bool]:
    """The write token: given, else ``$EDGELEARN_TOKEN``, else ``<data_dir>/token`` (made on first
    start, readable by its owner only). Returns ``(token, newly_made)``."""
    token = token or os.environ.get(TOKEN_ENV)
    if token:
        return token, False
    path = Path(data_dir) / "token"
    if path.is_file():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


__all__ = ["TOKEN_ENV", "Station", "StationConfig", "create_app", "station_token"]
