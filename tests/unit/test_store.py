import sqlite3

import numpy as np
import pytest

from edgelearn.errors import ConflictError, EdgelearnError, GoneError, StoreError
from edgelearn.files import container_bytes
from edgelearn.store import SCHEMA_VERSION, Store
from edgelearn.store import sqlite as store_module


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "station.sqlite")
    yield s
    s.close()


def test_new_store_is_migrated_and_in_wal_mode(store):
    assert store.schema_version == SCHEMA_VERSION
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.active_version is None


def test_migrations_run_once_in_order_and_newer_stores_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        [*store_module.MIGRATIONS, "ALTER TABLE sites ADD COLUMN note TEXT"])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    s = Store(path)  # upgrades the existing file, keeps its data
    assert s.schema_version == SCHEMA_VERSION + 1
    s.record_site("plant-b")
    assert s.sites()[0]["note"] is None
    s.close()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION)
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:SCHEMA_VERSION])
    with pytest.raises(EdgelearnError, match="newer edgelearn"):
        Store(path)


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EdgelearnError, match="not a readable edgelearn store"):
        Store(path)


def test_events_replay_on_top_of_their_version_and_rollback_starts_a_clean_slate(store):
    v1 = store.add_version(b"pkg1", "initial", classes=0, examples=0)
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = store.add_events("teach", ["a", "b", "a"], X, user="ann")
    assert ids == sorted(ids)
    replayed, labels = store.replay(v1)
    np.testing.assert_array_equal(replayed, X)
    assert labels == ["a", "b", "a"]
    v2 = store.add_version(b"pkg2", "consolidate", classes=2, examples=3)
    assert store.active_version == v2 and store.replay(v2)[1] == []
    store.add_events("correct", ["c"], X[:1], predicted=["a"], confidence=[0.4])
    v3 = store.add_version(store.package(v1), "rollback to version 1", parent=v1, classes=0, examples=0)
    assert store.package(v3) == b"pkg1" and store.replay(v3)[1] == []
    assert [v["id"] for v in store.versions()] == [v3, v2, v1]
    assert store.versions()[0]["parent"] == v1
    event = store.events(1)[0]
    assert (event["kind"], event["label"], event["predicted"], event["confidence"]) == ("correct", "c", "a", 0.4)
    with pytest.raises(EdgelearnError, match="no knowledge version 99"):
        store.package(99)


def test_events_are_all_or_nothing(store):
    store.add_version(b"p", "initial", classes=0, examples=0)
    with pytest.raises(ValueError, match="kind must be"):
        store.add_events("guess", ["a"], np.zeros((1, 2)))
    with pytest.raises(IndexError):
        store.add_events("teach", ["a", "b"], np.zeros((1, 2)))  # the second row is missing
    assert store.count("events") == 0


def test_concepts_form_a_hierarchy_and_sites_are_counted(store):
    store.add_concepts(["car/interior/wheel", "car/engine"])
    assert {c["path"]: c["parent"] for c in store.concepts()} == {
        "car": None, "car/interior": "car", "car/interior/wheel": "car/interior", "car/engine": "car"}
    store.record_site("plant-a", "key1")
    store.record_site("plant-a")
    (site,) = store.sites()
    assert site["packages"] == 2 and site["public_key"] == "key1"


def test_queue_keeps_the_newest_open_items_and_records_who_resolved_them(store):
    for i in range(5):
        store.enqueue("a", 0.1 * i, np.full(3, i, np.float32), max_open=3)
    open_items = store.queue()
    assert len(open_items) == 3 and [q["confidence"] for q in open_items] == pytest.approx([0.2, 0.3, 0.4])
    assert len(store.queue("expired")) == 2
    store.resolve(open_items[0]["id"], "b", user="ann")
    item = store.queue_item(open_items[0]["id"])
    assert (item["status"], item["label"], item["user"]) == ("labelled", "b", "ann")
    store.resolve(open_items[1]["id"], None)
    assert store.queue_item(open_items[1]["id"])["status"] == "dismissed"


def test_thumbnails_are_bounded_per_class_and_the_most_redundant_goes(store):
    vectors = [np.array([1, 0, 0]), np.array([0, 1, 0]), np.array([0, 0, 1]), np.array([1, 0.01, 0])]
    ids = [store.add_thumbnail("a", b"jpg%d" % i, v, max_per_class=3) for i, v in enumerate(vectors)]
    kept = {t["id"] for t in store.thumbnails(["a"])}
    assert len(kept) == 3 and ids[1] in kept and ids[2] in kept  # one of the two near-identical went
    assert store.thumbnail(ids[1]) == b"jpg1"
    assert store.thumbnails(["b"]) == []


def test_committed_events_survive_a_connection_that_never_closed(tmp_path):
    path = tmp_path / "s.sqlite"
    s = Store(path)
    s.add_version(b"p", "initial", classes=0, examples=0)
    s.add_events("teach", ["a"], np.ones((1, 4)))
    # no close(): the WAL holds the commit; another process reading the file sees it
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    other.close()


def alter_event(path, event_id):
    """What a damaged disk or a hand edit does: the features change, their hash does not."""
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET features = ? WHERE id = ?", (np.full(4, 9, np.float32).tobytes(), event_id))
    db.commit()
    db.close()


def test_replay_refuses_an_altered_event_and_check_repair_drops_it(tmp_path):
    path = tmp_path / "s.sqlite"
    s = Store(path)
    v1 = s.add_version(container_bytes({}, {}), "initial", classes=0, examples=0)
    ids = s.add_events("teach", ["a", "b", "c"], np.ones((3, 4)))
    alter_event(path, ids[1])
    with pytest.raises(StoreError, match=f"event {ids[1]} \\('b'\\) was altered or damaged"):
        s.replay(v1)
    assert s.check() == [f"event {ids[1]} ('b'): its features do not match their hash (altered or damaged)"]
    assert s.check(repair=True) == [f"dropped event {ids[1]} ('b'): its features do not match their hash "
                                    "(altered or damaged)"]
    assert s.replay(v1)[1] == ["a", "c"] and s.check() == []
    s.add_version(b"not a package", "merge from nowhere", classes=0, examples=0)
    (problem,) = s.check()
    assert problem.startswith("knowledge version 2: not an edgelearn file, or truncated/damaged")
    s.close()


def test_an_empty_or_truncated_store_file_is_refused_and_a_missing_one_is_new(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty file, not a store"):
        Store(empty)
    assert empty.stat().st_size == 0  # nothing was written into it
    full = tmp_path / "full.sqlite"
    s = Store(full)
    s.add_version(b"p" * 50_000, "initial", classes=0, examples=0)
    s.close()
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(EdgelearnError, match="not a readable edgelearn store"):
        Store(truncated)
    new = Store(tmp_path / "new.sqlite")
    assert new.active_version is None
    new.close()


def test_events_without_a_usable_active_version_are_refused(store):
    store.check_active_version()  # a new store: fine
    v1 = store.add_version(b"p", "initial", classes=0, examples=0)
    store.add_events("teach", ["a"], np.ones((1, 4)))
    store.set("active_version", v1 + 5)
    with pytest.raises(StoreError, match=f"active knowledge version {v1 + 5} is missing"):
        store.check_active_version()
    with store.transaction():
        store._db.execute("DELETE FROM meta WHERE key = 'active_version'")
    with pytest.raises(StoreError, match="holds 1 versions and 1 events but names no active version"):
        store.check_active_version()


def test_backup_is_a_private_consistent_copy(store, tmp_path):
    store.add_version(b"p", "initial", classes=0, examples=0)
    store.add_events("teach", ["a", "b"], np.ones((2, 4)))  # still in the WAL
    out = store.backup(tmp_path / "copy.sqlite")
    assert out.stat().st_mode & 0o777 == 0o600
    copy = sqlite3.connect(out)
    assert copy.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copy.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".copy")] == []  # no temp file left


def test_the_wal_is_checkpointed_so_the_main_file_alone_holds_committed_events(tmp_path):
    path = tmp_path / "s.sqlite"
    s = Store(path, checkpoint_s=0)  # checkpoint after every write
    s.add_version(b"p", "initial", classes=0, examples=0)
    s.add_events("teach", ["a"], np.ones((1, 4)))
    main_only = tmp_path / "main-only.sqlite"
    main_only.write_bytes(path.read_bytes())  # without its -wal file
    copy = sqlite3.connect(main_only)
    assert copy.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    copy.close()
    s.close()


def test_labelling_an_item_twice_is_a_conflict(store):
    item = store.enqueue("a", 0.1, np.ones(3))
    assert store.resolve(item, "b")["id"] == item
    with pytest.raises(ConflictError, match=f"queue item {item} is already labelled"):
        store.resolve(item, "c")
    assert store.queue_item(item)["label"] == "b"


def test_pruning_keeps_tagged_active_and_parent_versions_and_bounds_events_and_queue(tmp_path):
    s = Store(tmp_path / "s.sqlite", keep_versions=2, keep_events=3, keep_resolved=2)
    v1 = s.add_version(b"p1", "initial", classes=0, examples=0)
    s.add_events("teach", ["a"] * 4, np.ones((4, 4)))
    v2 = s.add_version(b"p2", "checkpoint", classes=1, examples=4)
    s.tag_version(v2, "  before line 3 ")
    v3 = s.add_version(b"p3", "checkpoint", classes=1, examples=4)
    s.add_version(b"p4", "checkpoint", classes=1, examples=4)
    active = s.add_version(s.package(v3), "rollback to version 3", parent=v3, classes=1, examples=4)
    assert s.package(v3) == b"p3"  # the active version's parent keeps its package
    s.add_events("teach", ["b"] * 5, np.ones((5, 4)))
    s.add_version(b"p8", "checkpoint", classes=2, examples=9, parent=active)  # prunes again
    kept = {v["id"]: v for v in s.versions()}
    assert [i for i, v in kept.items() if v["pruned_at"] is None] == [active + 1, active, v2]
    assert kept[v2]["tag"] == "before line 3" and kept[v1]["bytes"] == 0 and len(kept) == active + 1
    with pytest.raises(GoneError, match=f"knowledge version {v1} was pruned .* its package is gone"):
        s.package(v1)
    with pytest.raises(GoneError):
        s.tag_version(v1, "too late")
    with pytest.raises(ValueError, match="1 to 100 printable"):
        s.tag_version(v2, "\x1b[31m")
    assert s.count("events") == 3 and s.events(1)[0]["label"] == "b"  # the newest 3 of the log
    for i in range(5):
        s.resolve(s.enqueue("a", 0.1, np.full(3, i, np.float32)), "a" if i % 2 else None)
    s.enqueue("a", 0.1, np.ones(3))
    assert s.count("queue") == 3 and len(s.queue("open")) == 1  # open ones stay; 2 resolved kept
    s.close()


def test_answers_to_retried_requests_are_kept_for_a_while_and_bounded(tmp_path):
    s = Store(tmp_path / "s.sqlite", keep_answers=2)
    for i in range(3):
        s.remember_answer(f"k{i}", "/api/learn", "cred", 200, f'{{"n": {i}}}')
    assert s.answer("k0", "/api/learn", "cred") is None  # beyond the bound
    assert s.answer("k2", "/api/learn", "cred") == (200, '{"n": 2}')
    assert s.answer("k2", "/api/learn", "someone else") is None and s.answer("k2", "/api/consolidate", "cred") is None
    s.answers_for_s = 0
    assert s.answer("k2", "/api/learn", "cred") is None  # too old
    s.close()
