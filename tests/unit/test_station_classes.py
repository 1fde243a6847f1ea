"""The worker's class operations at the station: cards, rename, merge, delete, undo, near-duplicate names,
what each version changed, and packages merged twice."""

import numpy as np
import pytest

from edgelearn.errors import ConflictError, NearDuplicateError, NotFoundError
from edgelearn.server import Station
from edgelearn.store import Store
from edgelearn.store import sqlite as store_module
from edgelearn.store.sqlite import feature_hash
from tests.unit.test_station import colour_image, config

COLOUR_OF = {"bleu": "blue", "crimson": "red", "gren": "green", "rouge": "red", "Gas Pump": "red", "gas  pump": "red",
             "gas pump": "red"}


def teach(station, label, n=4, seed=0, **kw):
    """Teach ``label`` from ``n`` images of its colour (a typo or synonym: the colour it stands for)."""
    colour = COLOUR_OF.get(label, label)
    return station.learn([colour_image(colour, seed + i) for i in range(n)], [label] * n, **kw)


@pytest.fixture
def station(tmp_path):
    s = Station(config(tmp_path, keep_images=True, allow_unsigned=True))
    yield s
    s.close()


def answers(station, names=("red", "green", "blue")):
    return [station.predict(colour_image(n, 99), enqueue=False)["label"] for n in names]


def test_class_cards_count_examples_show_thumbnails_and_flag_few(station):
    teach(station, "red", n=6)
    teach(station, "blue", n=2)
    cards = {c["name"]: c for c in station.classes()}
    assert cards["red"]["examples"] == 6 and not cards["red"]["few"]
    assert cards["blue"]["examples"] == 2 and cards["blue"]["few"]
    assert 1 <= len(cards["red"]["thumbnails"]) <= 4


def test_rename_keeps_the_knowledge_under_the_new_name_as_a_new_version(station):
    teach(station, "red")
    teach(station, "bleu")
    station.consolidate()  # a version that holds both
    before = station.store.active_version
    result = station.rename_class("bleu", "blue", user="ana")
    assert result["version"] > before and sorted(result["classes"]) == ["blue", "red"]
    assert station.predict(colour_image("blue", 99), enqueue=False)["label"] == "blue"
    assert {c["name"] for c in station.classes()} == {"red", "blue"}
    assert [c["examples"] for c in station.classes() if c["name"] == "blue"] == [4]
    latest = station.store.versions()[0]
    assert latest["changes"]["renamed"] == {"bleu": "blue"} and latest["user"] == "ana"
    assert station.store.events(1)[0]["kind"] == "rename" and station.store.events(1)[0]["user"] == "ana"
    assert "bleu" not in {c["path"] for c in station.store.concepts()}


def test_rename_to_a_known_class_is_refused_and_changes_nothing(station):
    teach(station, "red")
    teach(station, "blue")
    versions = len(station.store.versions())
    with pytest.raises(ConflictError, match="merge"):
        station.rename_class("red", "blue")
    with pytest.raises(NotFoundError, match="no class 'pink'"):
        station.rename_class("pink", "rose")
    assert len(station.store.versions()) == versions and sorted(station.rec.classes) == ["blue", "red"]


def test_merge_moves_every_example_into_the_other_class(station):
    teach(station, "red")
    teach(station, "crimson", seed=10)
    teach(station, "blue")
    station.consolidate()
    result = station.merge_classes("crimson", "red")
    assert sorted(result["classes"]) == ["blue", "red"]
    assert {c["name"]: c["examples"] for c in station.classes()} == {"red": 8, "blue": 4}
    assert station.store.versions()[0]["changes"] == {"added": [], "removed": ["crimson"], "renamed": {},
                                                      "examples": 0}


def test_delete_forgets_a_class_and_survives_a_restart(tmp_path):
    station = Station(config(tmp_path, keep_images=True))
    teach(station, "red")
    teach(station, "green")
    teach(station, "blue")
    station.delete_class("green")
    assert sorted(station.rec.classes) == ["blue", "red"]
    assert all(t["label"] != "green" for t in station.store.thumbnails())
    station.close()
    again = Station(config(tmp_path, keep_images=True))
    try:
        assert sorted(again.rec.classes) == ["blue", "red"]
        again.delete_class("red")
        assert again.delete_class("blue")["classes"] == []  # the last one: back to knowing nothing
        assert "teach" in again.predict(colour_image("red"), enqueue=False)["message"]
        teach(again, "green")
        assert again.rec.classes == ["green"]
    finally:
        again.close()


def test_undo_takes_back_the_last_teach_exactly(station):
    teach(station, "red")
    teach(station, "blue")
    logits = station.rec.learner.predict_logits(station.rec.embed([colour_image("red", 50)]))
    teach(station, "gren", user="bo")  # the typo
    result = station.undo(user="ana")
    assert result["undone"] == {"kind": "teach", "label": "gren", "examples": 4, "user": "bo"}
    assert sorted(result["classes"]) == ["blue", "red"]
    again = station.rec.learner.predict_logits(station.rec.embed([colour_image("red", 50)]))
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-6)
    assert station.store.versions()[0]["changes"] == {"added": ["red", "blue"], "removed": [], "renamed": {},
                                                      "examples": 8}  # relative to its parent, the empty start
    assert station.store.events(1)[0]["kind"] == "undo" and station.store.events(1)[0]["user"] == "ana"
    assert station.undo()["undone"]["label"] == "blue"  # one more step back
    assert station.rec.classes == ["red"]


def test_undo_looks_through_checkpoints_and_stops_at_other_changes(tmp_path):
    station = Station(config(tmp_path, checkpoint_every=3))
    try:
        teach(station, "red", n=2)
        teach(station, "blue", n=2)  # 4 events on the version: a checkpoint follows
        assert station.store.versions()[0]["reason"] == "checkpoint"
        assert station.undo()["undone"]["label"] == "blue"
        assert station.rec.classes == ["red"]
        teach(station, "green", n=2)
        station.rename_class("red", "rouge")
        with pytest.raises(ConflictError, match=r"nothing to undo since version \d+ \(rename"):
            station.undo()
    finally:
        station.close()


def test_nothing_to_undo_on_a_new_station(station):
    with pytest.raises(ConflictError, match="^nothing to undo$"):
        station.undo()


def test_a_name_that_differs_only_in_case_or_spaces_asks_did_you_mean(station):
    teach(station, "Gas Pump")
    with pytest.raises(NearDuplicateError, match="did you mean 'Gas Pump'") as caught:
        teach(station, "gas  pump")
    assert caught.value.suggestion == "Gas Pump" and station.rec.classes == ["Gas Pump"]
    assert station.store.count("events") == 4  # nothing of the refused request was kept
    teach(station, "gas pump", new_class=True)  # the worker insists
    assert sorted(station.rec.classes) == ["Gas Pump", "gas pump"]
    teach(station, "Gas Pump")  # the same name is no question


def test_a_package_merged_once_is_refused_the_second_time(tmp_path, station):
    teach(station, "red")
    station.consolidate()
    other = Station(config(tmp_path / "other"))
    try:
        teach(other, "blue")
        package = other.export()
    finally:
        other.close()
    version = station.import_package(package, "blue.edge")["version"]
    with pytest.raises(ConflictError, match=f"already merged \\(version {version}\\)"):
        station.import_package(package, "blue.edge")
    latest = station.store.versions()[0]
    assert latest["changes"]["added"] == ["blue"] and latest["changes"]["examples"] == 4 and latest["site"]
    station.rollback(version - 1)  # back to before the merge: merging it again is fine
    station.import_package(package, "blue.edge")
    assert sorted(station.rec.classes) == ["blue", "red"]


def test_a_queue_label_close_to_a_known_name_asks_first_and_keeps_the_item_open(station):
    teach(station, "red")
    features = station.rec.embed([colour_image("red", 60)])[0]
    item = station.store.enqueue("red", 0.2, features)
    with pytest.raises(NearDuplicateError, match="did you mean 'red'"):
        station.label_queue(item, "Red")
    assert station.store.queue_item(item)["status"] == "open" and station.rec.classes == ["red"]
    station.label_queue(item, "Red", new_class=True)
    assert sorted(station.rec.classes) == ["Red", "red"]
    assert station.undo()["undone"]["kind"] == "label"  # the item waits for a person again
    assert station.store.queue_item(item)["status"] == "open" and station.rec.classes == ["red"]


def test_undo_drops_the_thumbnails_of_what_it_took_back(station):
    teach(station, "red")
    teach(station, "gren")
    assert any(t["label"] == "gren" for t in station.store.thumbnails())
    station.undo()
    assert {t["label"] for t in station.store.thumbnails()} == {"red"}
    assert [c["path"] for c in station.store.concepts()] == ["red"]


def test_a_store_from_before_undo_replays_its_events_and_can_undo_them_one_by_one(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:2])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    old = Store(path)
    old._db.execute("INSERT INTO versions (created_at, reason, classes, examples, package) "
                    "VALUES ('t', 'initial', 0, 0, x'00')")
    old._db.execute("INSERT INTO meta VALUES ('active_version', '1')")
    for i, label in enumerate(["red", "blue"]):
        vector = np.full(4, i, np.float32)
        old._db.execute("INSERT INTO events (created_at, kind, label, base_version, feature_hash, features) "
                        "VALUES ('t', 'teach', ?, 1, ?, ?)", (label, feature_hash(vector), vector.tobytes()))
    old.close()
    monkeypatch.undo()
    store = Store(path)  # migrated: the old events are requests of one event each
    try:
        assert store.replay(1)[1] == ["red", "blue"]
        last = store.last_request(1)
        assert (last["label"], last["examples"]) == ("blue", 1)
        store.add_operation("undo", "blue", {}, request=last["request"])
        assert store.replay(1)[1] == ["red"] and store.last_request(1)["label"] == "red"
    finally:
        store.close()
