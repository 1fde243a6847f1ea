"""A feature cache on disk: one SQLite file per backbone fingerprint, keyed by image content hash.

Re-running a benchmark or re-learning a folder does not re-embed images whose bytes and backbone
are unchanged. Only feature vectors are stored, never images.
"""

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np

CACHE_ENV = "EDGELEARN_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgelearn")


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes; '' for a file that cannot be read (it fails later, when decoded)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


class FeatureCache:
    """``get``/``put`` float32 feature vectors by content hash, for one backbone fingerprint."""

    def __init__(self, fingerprint_id: str, directory: str | os.PathLike | None = None):
        directory = Path(directory) if directory is not None else default_cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"features-{fingerprint_id}.sqlite"
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (hash TEXT PRIMARY KEY, vector BLOB)")

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for lo in range(0, len(hashes), 500):  # SQLite limits the number of bound parameters
            part = hashes[lo:lo + 500]
            rows = self._db.execute(
                f"SELECT hash, vector FROM features WHERE hash IN ({','.join('?' * len(part))})", part)
            found.update({h: np.frombuffer(v, np.float32) for h, v in rows})
        return found

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        rows = [(h, np.asarray(v, np.float32).tobytes()) for h, v in zip(hashes, vectors, strict=True)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)", rows)

    def close(self) -> None:
        self._db.close()
