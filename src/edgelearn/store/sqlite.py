"""One SQLite file holds what a station knows and how it came to know it.

- ``versions``: knowledge packages; every consolidation, merge, import and rollback adds one.
  ``meta.active_version`` names the one in use; a rollback adds a copy of an older one.
- ``events``: feedback (teach, confirm, correct, label): who, when, old and new label, the feature
  vector and its hash; the image only if the user opted in. The learner's state is always
  ``active version + its events replayed in order``, so an event is learned once it is committed:
  a crash before the commit loses an unconfirmed request, a crash after it loses nothing.
- ``concepts`` (the label hierarchy), ``sites`` (where imported knowledge came from), ``queue``
  (low-confidence predictions waiting for a person), ``thumbnails`` (opt-in, bounded per class),
  ``idempotency`` (the first answer to each retried write request).

Every part is bounded: the last ``keep_versions`` versions keep their packages (tagged ones, the
active one and its parent always do; older rows stay as history), the newest ``keep_events`` events
plus those the active version replays, the newest ``keep_resolved`` resolved or expired queue items.

Schema changes are numbered migrations applied in order (``PRAGMA user_version``).
"""

import datetime as dt
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgelearn.errors import (
    ConflictError,
    EdgelearnError,
    GoneError,
    ModelFileError,
    NotFoundError,
    ParameterError,
    StoreError,
)
from edgelearn.files import parse_container, private_folder

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
    """
    ALTER TABLE versions ADD COLUMN tag TEXT;
    ALTER TABLE versions ADD COLUMN pruned_at TEXT;
    CREATE TABLE idempotency (key TEXT NOT NULL, route TEXT NOT NULL, credential TEXT NOT NULL,
                              created_at TEXT NOT NULL, status INTEGER NOT NULL, response TEXT NOT NULL,
                              PRIMARY KEY (key, route, credential));
    CREATE INDEX idempotency_by_time ON idempotency(created_at);
    """,
    """
    ALTER TABLE events ADD COLUMN request INTEGER;
    ALTER TABLE events ADD COLUMN detail TEXT;
    ALTER TABLE versions ADD COLUMN changes TEXT;
    ALTER TABLE versions ADD COLUMN source_hash TEXT;
    CREATE INDEX versions_by_source ON versions(source_hash);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
FEEDBACK_KINDS = ("teach", "confirm", "correct", "label")
OPERATION_KINDS = ("rename", "merge", "delete", "undo")  # log entries that carry no example
NO_CHANGES = {"added": [], "removed": [], "renamed": {}, "examples": 0}
# events replayed on top of a version: feedback, less the requests an undo took back
REPLAYED = ("kind IN ('teach', 'confirm', 'correct', 'label') AND coalesce(request, id) NOT IN "
            "(SELECT request FROM events WHERE kind = 'undo' AND request IS NOT NULL)")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def feature_hash(vector: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(vector, np.float32).tobytes()).hexdigest()[:32]


class Store:
    """The station's SQLite file. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, path: str | os.PathLike, *, keep_versions: int = 50, keep_events: int = 10_000,
                 keep_resolved: int = 1_000, keep_answers: int = 10_000, answers_for_s: float = 86_400,
                 checkpoint_s: float = 60):
        self.path = Path(path)
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise StoreError(f"{self.path} is an empty file, not a store: its data is lost or it was never written "
                             "(restore a backup, or delete the file to start a new station)")
        private_folder(self.path.parent)
        self.keep_versions, self.keep_events, self.keep_resolved = keep_versions, keep_events, keep_resolved
        self.keep_answers, self.answers_for_s, self.checkpoint_s = keep_answers, answers_for_s, checkpoint_s
        self._last_checkpoint = time.monotonic()
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

    def transaction(self):
        """One transaction around several store calls (they join it): all of them commit, or none."""
        return self._transaction()

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
                    parent: int | None = None, user: str | None = None, site: str | None = None,
                    changes: dict | None = None, source_hash: str | None = None) -> int:
        """Store a package as a new version and make it the active one (one transaction). ``changes``: what
        it changed (classes added, removed, renamed; examples); ``source_hash``: the imported package's."""
        with self._transaction():
            parent = parent if parent is not None else self.get("active_version")
            cur = self._db.execute(
                "INSERT INTO versions (created_at, reason, parent, user, site, classes, examples, package, changes, "
                "source_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now(), reason, parent, user, site, classes, examples, package,
                 json.dumps(changes) if changes else None, source_hash))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('active_version', ?)", (str(cur.lastrowid),))
            self._prune_versions_and_events()
        return int(cur.lastrowid)

    def _prune_versions_and_events(self) -> None:
        """Drop the packages of versions beyond the newest ``keep_versions`` (never a tagged one, the active
        one or its parent; the row stays as history), and events beyond the newest ``keep_events`` that the
        active version does not replay."""
        active = self.get("active_version")
        self._db.execute(
            "UPDATE versions SET package = X'', pruned_at = ? WHERE pruned_at IS NULL AND tag IS NULL "
            "AND id <= (SELECT id FROM versions ORDER BY id DESC LIMIT 1 OFFSET ?) AND id != ? "
            "AND id IS NOT (SELECT parent FROM versions WHERE id = ?)", (now(), self.keep_versions, active, active))
        self._db.execute("DELETE FROM events WHERE base_version != ? AND id <= "
                         "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)", (active, self.keep_events))

    @property
    def active_version(self) -> int | None:
        return self.get("active_version")

    def versions(self) -> list[dict]:
        """All versions, newest first, without their packages; ``changes`` relative to the knowledge before."""
        rows = self._query("SELECT id, created_at, reason, parent, user, site, classes, examples, "
                           "length(package) AS bytes, tag, pruned_at, changes FROM versions ORDER BY id DESC")
        return [{**r, "changes": {**NO_CHANGES, **json.loads(r["changes"] or "{}")}} for r in rows]

    def version(self, version: int) -> dict:
        """One version's row (no package)."""
        rows = self._query("SELECT id, reason, parent, examples FROM versions WHERE id = ?", (version,))
        if not rows:
            raise NotFoundError(f"there is no knowledge version {version}")
        return rows[0]

    def merged_version(self, source_hash: str) -> int | None:
        """The version that merged the package with this hash into the active knowledge (following parents
        back from the active version: a rollback to before the merge forgets it), or None."""
        rows = self._query("WITH RECURSIVE lineage(id) AS (SELECT ? UNION SELECT v.parent FROM versions v "
                           "JOIN lineage ON v.id = lineage.id WHERE v.parent IS NOT NULL) "
                           "SELECT max(id) AS id FROM versions WHERE source_hash = ? AND id IN lineage",
                           (self.get("active_version"), source_hash))
        return rows[0]["id"]

    def package(self, version: int) -> bytes:
        rows = self._query("SELECT package, pruned_at FROM versions WHERE id = ?", (version,))
        if not rows:
            raise NotFoundError(f"there is no knowledge version {version}")
        if rows[0]["pruned_at"]:
            raise GoneError(f"knowledge version {version} was pruned on {rows[0]['pruned_at'][:10]} (the station "
                            f"keeps the last {self.keep_versions} versions and tagged ones); its package is gone")
        return rows[0]["package"]

    def tag_version(self, version: int, tag: str) -> None:
        """Name a version; a tagged version is never pruned."""
        tag = tag.strip()
        if not tag or len(tag) > 100 or not tag.isprintable():
            raise ParameterError("a version tag is 1 to 100 printable characters")
        with self._transaction():
            self.package(version)  # exists and still has its package
            self._db.execute("UPDATE versions SET tag = ? WHERE id = ?", (tag, version))

    def check_active_version(self) -> None:
        """Refuse a store that has knowledge but no usable active version: never start as an empty station."""
        active = self.get("active_version")
        if active is None and (self.count("versions") or self.count("events")):
            raise StoreError(f"{self.path} holds {self.count('versions')} versions and {self.count('events')} events "
                             "but names no active version: it is damaged (restore a backup)")
        if active is not None and not self._query("SELECT 1 FROM versions WHERE id = ? AND pruned_at IS NULL",
                                                  (active,)):
            raise StoreError(f"{self.path}: the active knowledge version {active} is missing: the store is damaged "
                             "(restore a backup)")

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
            if ids:  # one request, one group: what an undo takes back
                self._db.execute("UPDATE events SET request = ? WHERE id >= ?", (ids[0], ids[0]))
            self._add_concepts(labels)
        self._checkpoint_now_and_then()
        return ids

    def _checkpoint_now_and_then(self) -> None:
        """Copy the WAL into the main file every ``checkpoint_s`` (PASSIVE: never waits for readers), so the
        main file alone is recent and the WAL stays small between restarts."""
        with self._lock:
            if time.monotonic() - self._last_checkpoint >= self.checkpoint_s and not self._db.in_transaction:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._last_checkpoint = time.monotonic()

    def replay(self, version: int, skip_request: int | None = None) -> tuple[np.ndarray, list[str]]:
        """The features and labels recorded on top of ``version``, in order (less undone requests and
        ``skip_request``); an event whose features do not match their stored hash (altered or damaged) raises
        :class:`StoreError` naming it."""
        rows = self._query(f"SELECT id, label, feature_hash, features FROM events WHERE base_version = ? "
                           f"AND {REPLAYED} AND coalesce(request, id) IS NOT ? ORDER BY id", (version, skip_request))
        for r in rows:
            if feature_hash(np.frombuffer(r["features"], np.float32)) != r["feature_hash"]:
                raise StoreError(f"{self.path}: event {r['id']} ({r['label']!r}) was altered or damaged: its features "
                                 "do not match their hash; `edgelearn store check --repair` drops it")
        if not rows:
            return np.zeros((0, 0), np.float32), []
        return np.stack([np.frombuffer(r["features"], np.float32) for r in rows]), [r["label"] for r in rows]

    def events_on(self, version: int) -> int:
        """How many events would be replayed on top of ``version``."""
        return self._query(f"SELECT count(*) AS n FROM events WHERE base_version = ? AND {REPLAYED}",
                           (version,))[0]["n"]

    def add_operation(self, kind: str, label: str, detail: dict, *, user: str | None = None,
                      request: int | None = None) -> int:
        """Log a class operation or an undo (no example; ``request``: the request an undo takes back)."""
        if kind not in OPERATION_KINDS:
            raise ValueError(f"kind must be one of {OPERATION_KINDS}, got {kind!r}")
        empty = np.zeros(0, np.float32)
        with self._transaction():
            cur = self._db.execute(
                "INSERT INTO events (created_at, user, kind, label, base_version, feature_hash, features, request, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (now(), user, kind, label, self.get("active_version"),
                                                                feature_hash(empty), empty.tobytes(), request,
                                                                json.dumps(detail)))
        return int(cur.lastrowid)

    def last_request(self, version: int) -> dict | None:
        """The newest feedback request replayed on top of ``version``: ``request, kind, label, user, examples``."""
        rows = self._query(f"SELECT coalesce(request, id) AS request, kind, label, user, count(*) AS examples "
                           f"FROM events WHERE base_version = ? AND {REPLAYED} GROUP BY coalesce(request, id) "
                           "ORDER BY request DESC LIMIT 1", (version,))
        return rows[0] if rows else None

    def request_features(self, request: int) -> list[tuple[str, bytes]]:
        """``(label, feature bytes)`` of a request's events."""
        rows = self._query("SELECT label, features FROM events WHERE coalesce(request, id) = ? AND kind IN "
                           "('teach', 'confirm', 'correct', 'label')", (request,))
        return [(r["label"], r["features"]) for r in rows]

    def events(self, limit: int = 100) -> list[dict]:
        rows = self._query("SELECT id, created_at, user, kind, label, predicted, confidence, base_version, "
                           "feature_hash, image IS NOT NULL AS has_image, request, detail FROM events "
                           "ORDER BY id DESC LIMIT ?", (limit,))
        return [{**r, "detail": json.loads(r["detail"]) if r["detail"] else None} for r in rows]

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

    def keep_concepts(self, labels) -> None:
        """The hierarchy holds exactly ``labels`` and their parents (after a rename, merge, delete or undo)."""
        paths = {"/".join(label.split("/")[:depth]) for label in labels for depth in range(1, label.count("/") + 2)}
        with self._transaction():
            self._add_concepts(labels)
            self._db.execute(f"DELETE FROM concepts WHERE path NOT IN ({','.join('?' * len(paths))})", sorted(paths))

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
            self._prune_queue()
        return int(cur.lastrowid)

    def _prune_queue(self) -> None:
        """Resolved and expired items (and their images) beyond the newest ``keep_resolved`` go."""
        self._db.execute("DELETE FROM queue WHERE status != 'open' AND id <= (SELECT id FROM queue "
                         "WHERE status != 'open' ORDER BY id DESC LIMIT 1 OFFSET ?)", (self.keep_resolved,))

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

    def resolve(self, item: int, label: str | None, user: str | None = None) -> dict:
        """Mark an open queue item labelled (``label``) or dismissed (``None``) and return it; an item that
        is no longer open raises :class:`ConflictError` (someone else was first). Call it inside
        :meth:`transaction` with the event it leads to, so that the item is learned once."""
        with self._transaction():
            row = self.queue_item(item)
            cur = self._db.execute("UPDATE queue SET status = ?, label = ?, resolved_at = ?, user = ? "
                                   "WHERE id = ? AND status = 'open'",
                                   ("labelled" if label else "dismissed", label, now(), user, item))
            if cur.rowcount != 1:
                raise ConflictError(f"queue item {item} is already {row['status']}")
            self._prune_queue()
        return row

    def reopen(self, features: list[bytes]) -> None:
        """Labelled queue items of these features wait for a person again (their label was undone)."""
        hashes = [feature_hash(np.frombuffer(f, np.float32)) for f in features]
        with self._transaction():
            self._db.execute(f"UPDATE queue SET status = 'open', label = NULL, resolved_at = NULL, user = NULL "
                             f"WHERE status = 'labelled' AND feature_hash IN ({','.join('?' * len(hashes))})", hashes)

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

    def thumbnail_ids(self, per_class: int) -> dict[str, list[int]]:
        """label -> ids of up to ``per_class`` kept thumbnails, oldest first."""
        out: dict[str, list[int]] = {}
        for r in self._query("SELECT id, label FROM thumbnails ORDER BY id"):
            ids = out.setdefault(r["label"], [])
            if len(ids) < per_class:
                ids.append(r["id"])
        return out

    def relabel_thumbnails(self, label: str, to: str | None, features: list[bytes] | None = None) -> None:
        """Thumbnails of ``label`` (only those of these ``features``, when given) become ``to``'s, or go (None)."""
        where, args = "label = ?", [label]
        if features is not None:
            where += f" AND features IN ({','.join('?' * len(features))})"
            args += features
        with self._transaction():
            if to is None:
                self._db.execute(f"DELETE FROM thumbnails WHERE {where}", args)
            else:
                self._db.execute(f"UPDATE thumbnails SET label = ? WHERE {where}", [to, *args])

    def thumbnail(self, item: int) -> bytes:
        rows = self._query("SELECT image FROM thumbnails WHERE id = ?", (item,))
        if not rows:
            raise NotFoundError(f"there is no thumbnail {item}")
        return rows[0]["image"]

    # -- idempotent requests ----------------------------------------------------------------------------
    def answer(self, key: str, route: str, credential: str) -> tuple[int, str] | None:
        """The stored ``(status, JSON body)`` of the first request with this key, route and credential."""
        rows = self._query("SELECT status, response FROM idempotency WHERE key = ? AND route = ? AND credential = ? "
                           "AND created_at > ?", (key, route, credential, _ago(self.answers_for_s)))
        return (rows[0]["status"], rows[0]["response"]) if rows else None

    def remember_answer(self, key: str, route: str, credential: str, status: int, response: str) -> None:
        """Keep a request's answer for its retries: for ``answers_for_s`` seconds, at most ``keep_answers``."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                             (key, route, credential, now(), status, response))
            self._db.execute("DELETE FROM idempotency WHERE created_at < ? OR rowid <= (SELECT rowid FROM "
                             "idempotency ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                             (_ago(self.answers_for_s), self.keep_answers))

    # -- maintenance ----------------------------------------------------------------------------------
    def backup(self, target: str | os.PathLike) -> Path:
        """A consistent copy of the store, made while it is in use (SQLite's online backup), mode 0600;
        written beside ``target`` and renamed over it, so ``target`` is never half a copy."""
        target = Path(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # mode 0600
        os.close(fd)
        try:
            copy = sqlite3.connect(tmp)
            with self._lock:
                self._db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            copy.close()
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def check(self, repair: bool = False) -> list[str]:
        """Problems found: SQLite's integrity check, events whose features do not match their hash,
        version packages that do not parse, no usable active version. ``repair`` drops the bad events
        (the problem then reads "dropped ...")."""
        problems = [f"sqlite: {row['integrity_check']}" for row in self._query("PRAGMA integrity_check")
                    if row["integrity_check"] != "ok"]
        for r in self._query("SELECT id, label, feature_hash, features FROM events ORDER BY id"):
            if feature_hash(np.frombuffer(r["features"], np.float32)) != r["feature_hash"]:
                if repair:
                    with self._transaction():
                        self._db.execute("DELETE FROM events WHERE id = ?", (r["id"],))
                problems.append(f"{'dropped ' if repair else ''}event {r['id']} ({r['label']!r}): its features do "
                                "not match their hash (altered or damaged)")
        for r in self._query("SELECT id, package FROM versions WHERE pruned_at IS NULL ORDER BY id"):
            try:
                parse_container(r["package"], f"knowledge version {r['id']}")
            except ModelFileError as exc:
                problems.append(str(exc))
        try:
            self.check_active_version()
        except StoreError as exc:
            problems.append(str(exc))
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()


def _ago(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


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
