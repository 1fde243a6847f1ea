"""One SQLite file holds what a station knows and how it came to know it.

- ``versions``: knowledge packages; every consolidation, merge, import and rollback adds one.
  ``meta.active_version`` names the one in use; a rollback adds a copy of an older one.
- ``events``: feedback (teach, confirm, correct, label): who, when, old and new label, the feature
  vector and its hash; the image only if the user opted in. The learner's state is always
  ``active version + its events replayed in order``, so an event is learned once it is committed:
  a crash before the commit loses an unconfirmed request, a crash after it loses nothing.
- ``concepts`` (the label hierarchy), ``sites`` (where imported knowledge came from), ``queue``
  (low-confidence predictions waiting for a person), ``thumbnails`` (opt-in, bounded per class).

Schema changes are numbered migrations applied in order (``PRAGMA user_version``).
"""

import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np

from edgelearn.errors import EdgelearnError, NotFoundError
from edgelearn.files import private_folder

MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE concepts (path TEXT PRIMARY KEY, parent TEXT REFERENCES concepts(path), created_at TEXT NOT NULL);
    CREATE TABLE sites (id TEXT PRIMARY KEY, public_key TEXT, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
                        packages INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE versions (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, reason TEXT NOT NULL,
                           parent INTEGER REFERENCES versions(id), user TEXT, site TEXT,
                           classes INTEGER NOT NULL, examples INTEGER NOT NULL, package BLOB NOT NULL);
    CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, user TEXT, kind TEXT NOT NULL,
                         label TEXT NOT NULL, predicted TEXT, confidence REAL,
                         base_version INTEGER NOT NULL REFERENCES versions(id),
                         feature_hash TEXT NOT NULL, features BLOB NOT NULL, image BLOB);
    CREATE INDEX events_by_version ON events(base_version, id);
    CREATE TABLE queue (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, predicted TEXT, confidence REAL,
                        status TEXT NOT NULL DEFAULT 'open', label TEXT, resolved_at TEXT, user TEXT,
                        feature_hash TEXT NOT NULL, features BLOB NOT NULL, image BLOB);
    CREATE INDEX queue_by_status ON queue(status, id);
    CREATE TABLE thumbnails (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, label TEXT NOT NULL,
                             features BLOB NOT NULL, image BLOB NOT NULL);
    CREATE INDEX thumbnails_by_label ON thumbnails(label);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
FEEDBACK_KINDS = ("teach", "confirm", "correct", "label")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def feature_hash(vector: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(vector, np.float32).tobytes()).hexdigest()[:32]


class Store:
    """The station's SQLite file. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        private_folder(self.path.parent)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self.path.chmod(0o600)  # before the first byte is written; SQLite gives the WAL the same mode
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed event survives power loss too
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise EdgelearnError(f"{self.path}: not a readable edgelearn store ({exc})") from exc

    # -- schema -------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise EdgelearnError(f"{self.path} was written by a newer edgelearn (schema {version}, this one "
                                 f"knows up to {SCHEMA_VERSION}); upgrade edgelearn to open it")
        for number in range(version, SCHEMA_VERSION):
            with self._transaction():
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _transaction(self):
        return _Transaction(self._db, self._lock)

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- settings -----------------------------------------------------------------------------------
    def get(self, key: str, default=None):
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set(self, key: str, value) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- knowledge versions -------------------------------------------------------------------------
    def add_version(self, package: bytes, reason: str, *, classes: int, examples: int,
                    parent: int | None = None, user: str | None = None, site: str | None = None) -> int:
        """Store a package as a new version and make it the active one (one transaction)."""
        with self._transaction():
            parent = parent if parent is not None else self.get("active_version")
            cur = self._db.execute(
                "INSERT INTO versions (created_at, reason, parent, user, site, classes, examples, package) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (now(), reason, parent, user, site, classes, examples, package))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('active_version', ?)", (str(cur.lastrowid),))
        return int(cur.lastrowid)

    @property
    def active_version(self) -> int | None:
        return self.get("active_version")

    def versions(self) -> list[dict]:
        """All versions, newest first, without their packages."""
        return self._query("SELECT id, created_at, reason, parent, user, site, classes, examples, "
                           "length(package) AS bytes FROM versions ORDER BY id DESC")

    def package(self, version: int) -> bytes:
        rows = self._query("SELECT package FROM versions WHERE id = ?", (version,))
        if not rows:
            raise NotFoundError(f"there is no knowledge version {version}")
        return rows[0]["package"]

    # -- feedback events ----------------------------------------------------------------------------
    def add_events(self, kind: str, labels: list[str], features: np.ndarray, *, user: str | None = None,
                   predicted: list | None = None, confidence: list | None = None,
                   images: list[bytes | None] | None = None) -> list[int]:
        """Record feedback on top of the active version, all or nothing; returns the event ids."""
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"kind must be one of {FEEDBACK_KINDS}, got {kind!r}")
        n = len(labels)
        predicted, confidence, images = predicted or [None] * n, confidence or [None] * n, images or [None] * n
        ids = []
        with self._transaction():
            base = self.get("active_version")
            for i in range(n):
                vector = np.asarray(features[i], np.float32)
                cur = self._db.execute(
                    "INSERT INTO events (created_at, user, kind, label, predicted, confidence, base_version, "
                    "feature_hash, features, image) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (now(), user, kind, labels[i], predicted[i], confidence[i], base, feature_hash(vector),
                     vector.tobytes(), images[i]))
                ids.append(int(cur.lastrowid))
            self._add_concepts(labels)
        return ids

    def replay(self, version: int) -> tuple[np.ndarray, list[str]]:
        """The features and labels recorded on top of ``version``, in order."""
        rows = self._query("SELECT label, features FROM events WHERE base_version = ? ORDER BY id", (version,))
        if not rows:
            return np.zeros((0, 0), np.float32), []
        return np.stack([np.frombuffer(r["features"], np.float32) for r in rows]), [r["label"] for r in rows]

    def events_on(self, version: int) -> int:
        """How many events would be replayed on top of ``version``."""
        return self._query("SELECT count(*) AS n FROM events WHERE base_version = ?", (version,))[0]["n"]

    def events(self, limit: int = 100) -> list[dict]:
        return self._query("SELECT id, created_at, user, kind, label, predicted, confidence, base_version, "
                           "feature_hash, image IS NOT NULL AS has_image FROM events ORDER BY id DESC LIMIT ?",
                           (limit,))

    def count(self, table: str) -> int:
        if table not in ("events", "versions", "concepts", "sites", "queue", "thumbnails"):
            raise ValueError(f"no table {table!r}")
        return self._query(f"SELECT count(*) AS n FROM {table}")[0]["n"]

    def feedback_confidences(self) -> tuple[np.ndarray, np.ndarray]:
        """``(confidence, correct)`` of the predictions people confirmed or corrected: live calibration."""
        rows = self._query("SELECT kind, confidence FROM events WHERE kind IN ('confirm', 'correct') "
                           "AND confidence IS NOT NULL")
        return (np.array([r["confidence"] for r in rows]), np.array([r["kind"] == "confirm" for r in rows]))

    # -- concepts and sites -------------------------------------------------------------------------
    def _add_concepts(self, labels) -> None:
        for label in set(labels):
            parts = label.split("/")
            for depth in range(1, len(parts) + 1):
                self._db.execute("INSERT OR IGNORE INTO concepts VALUES (?, ?, ?)",
                                 ("/".join(parts[:depth]), "/".join(parts[:depth - 1]) or None, now()))

    def add_concepts(self, labels) -> None:
        with self._transaction():
            self._add_concepts(labels)

    def concepts(self) -> list[dict]:
        return self._query("SELECT path, parent, created_at FROM concepts ORDER BY path")

    def record_site(self, site: str, public_key: str | None = None) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO sites (id, public_key, first_seen, last_seen, packages) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, packages = packages + 1, "
                "public_key = coalesce(excluded.public_key, public_key)", (site, public_key, now(), now()))

    def sites(self) -> list[dict]:
        return self._query("SELECT * FROM sites ORDER BY id")

    # -- active learning queue ----------------------------------------------------------------------
    def enqueue(self, predicted: str | None, confidence: float, features: np.ndarray,
                image: bytes | None = None, max_open: int = 500) -> int:
        """Queue a low-confidence prediction for a person; the oldest open items go beyond ``max_open``."""
        vector = np.asarray(features, np.float32).ravel()
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO queue (created_at, predicted, confidence, feature_hash, features, image) "
                "VALUES (?, ?, ?, ?, ?, ?)", (now(), predicted, confidence, feature_hash(vector), vector.tobytes(),
                                              image))
            self._db.execute("UPDATE queue SET status = 'expired' WHERE status = 'open' AND id NOT IN "
                             "(SELECT id FROM queue WHERE status = 'open' ORDER BY id DESC LIMIT ?)", (max_open,))
        return int(cur.lastrowid)

    def queue(self, status: str = "open", limit: int = 50) -> list[dict]:
        return self._query("SELECT id, created_at, predicted, confidence, status, label, feature_hash, "
                           "image IS NOT NULL AS has_image FROM queue WHERE status = ? ORDER BY confidence, id "
                           "LIMIT ?", (status, limit))

    def open_queue_size(self) -> int:
        return self._query("SELECT count(*) AS n FROM queue WHERE status = 'open'")[0]["n"]

    def queue_item(self, item: int) -> dict:
        rows = self._query("SELECT * FROM queue WHERE id = ?", (item,))
        if not rows:
            raise NotFoundError(f"there is no queue item {item}")
        return rows[0]

    def resolve(self, item: int, label: str | None, user: str | None = None) -> None:
        """Mark a queue item labelled (``label``) or dismissed (``None``)."""
        with self._transaction():
            self._db.execute("UPDATE queue SET status = ?, label = ?, resolved_at = ?, user = ? WHERE id = ?",
                             ("labelled" if label else "dismissed", label, now(), user, item))

    # -- thumbnails (opt-in) --------------------------------------------------------------------------
    def add_thumbnail(self, label: str, image: bytes, features: np.ndarray, max_per_class: int) -> int:
        """Keep a thumbnail; beyond ``max_per_class`` drop the most redundant one of the class (the one
        closest in feature space to another), so the kept set stays diverse."""
        vector = np.asarray(features, np.float32).ravel()
        with self._transaction():
            cur = self._db.execute("INSERT INTO thumbnails (created_at, label, features, image) VALUES (?, ?, ?, ?)",
                                   (now(), label, vector.tobytes(), image))
            rows = self._db.execute("SELECT id, features FROM thumbnails WHERE label = ?", (label,)).fetchall()
            if len(rows) > max_per_class:
                F = np.stack([np.frombuffer(f, np.float32) for _, f in rows]).astype(np.float64)
                F /= np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
                sim = F @ F.T
                np.fill_diagonal(sim, -np.inf)
                self._db.execute("DELETE FROM thumbnails WHERE id = ?", (rows[int(sim.max(axis=1).argmax())][0],))
        return int(cur.lastrowid)

    def thumbnails(self, labels: list[str] | None = None) -> list[dict]:
        """``id, label, features`` (as arrays) of the kept thumbnails, for the given labels or all."""
        if labels is None:
            rows = self._query("SELECT id, label, features FROM thumbnails ORDER BY id")
        else:
            rows = self._query(f"SELECT id, label, features FROM thumbnails WHERE label IN "
                               f"({','.join('?' * len(labels))}) ORDER BY id", labels)
        return [{**r, "features": np.frombuffer(r["features"], np.float32)} for r in rows]

    def thumbnail(self, item: int) -> bytes:
        rows = self._query("SELECT image FROM thumbnails WHERE id = ?", (item,))
        if not rows:
            raise NotFoundError(f"there is no thumbnail {item}")
        return rows[0]["image"]

    def close(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self.db, self.lock = db, lock

    def __enter__(self):
        self.lock.acquire()
        self.depth = self.db.in_transaction
        if not self.depth:
            self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self.depth:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
        return False
