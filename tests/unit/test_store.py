import sqlite3

import numpy as np
import pytest

from edgelearn.errors import EdgelearnError
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
