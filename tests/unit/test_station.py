import io
import sqlite3
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from edgelearn import Recognizer
from edgelearn.cli import app as cli_app
from edgelearn.data.frames import extract_dataset, read_frames
from edgelearn.errors import ConflictError, DatasetError, EdgelearnError, ImageError, IncompatibleError, StoreError
from edgelearn.learners import StreamingLDA
from edgelearn.server import Station, StationConfig, create_app, default_data_dir, station_token
from edgelearn.server.tls import fingerprint, self_signed
from edgelearn.server.uploads import labelled_images
from edgelearn.store import Store
from tests.conftest import COLOURS
from tests.integration.server import TOKEN


def colour_image(name, seed=0, size=40):
    rng = np.random.default_rng(seed)
    noise = rng.integers(-25, 25, size=(size, size, 3))
    return Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8))


def config(tmp_path, **kw):
    kw.setdefault("runtime", "torch")
    return StationConfig(tmp_path / "station", backbone="tiny", weights="random", input_size=32, **kw)


@pytest.fixture
def station(tmp_path):
    s = Station(config(tmp_path, keep_images=True))
    yield s
    s.close()


def teach(station, name, n=4, seed=0, **kw):
    return station.learn([colour_image(name, seed + i) for i in range(n)], [name] * n, **kw)


def test_a_new_station_knows_nothing_and_says_so(station):
    p = station.predict(colour_image("red"))
    assert p["label"] is None and p["known_classes"] == 0 and "teach" in p["message"]
    assert station.store.active_version == 1


def test_the_station_runs_its_backbone_on_onnx_runtime_and_explains_through_torch(tmp_path):
    station = Station(config(tmp_path, runtime="onnx"))
    assert station.rec.backbone.runtime == "onnx"
    teach(station, "red")
    teach(station, "blue")
    p = station.predict(colour_image("blue", 3), heatmap=True)
    assert p["label"] == "blue" and p["heatmap"].startswith("data:image/png")
    station.close()


def test_teach_predict_explain(station):
    teach(station, "red")
    teach(station, "blue")
    p = station.predict(colour_image("red", 99), heatmap=True)
    assert p["label"] == "red" and 0 < p["confidence"] <= 1
    assert [a["label"] for a in p["alternatives"]] == ["blue"]
    assert {r["label"] for r in p["representatives"]} == {"red", "blue"}
    assert station.store.thumbnail(p["representatives"][0]["thumbnail"])[:2] == b"\xff\xd8"  # a JPEG
    assert p["heatmap"].startswith("data:image/png;base64,")


def test_restart_rebuilds_the_same_knowledge_from_the_store(tmp_path):
    first = Station(config(tmp_path))
    teach(first, "red")
    teach(first, "green", user="ann")
    probe = colour_image("green", 50)
    before = first.predict(probe, enqueue=False)
    first.store._db.close()  # like a crash: no checkpoint, no clean close
    second = Station(config(tmp_path))
    after = second.predict(probe, enqueue=False)
    assert after["label"] == before["label"] == "green"
    assert after["confidence"] == pytest.approx(before["confidence"], abs=1e-6)
    assert second.status()["examples"] == 8
    assert second.store.events(1)[0]["user"] == "ann"
    second.close()


def test_consolidate_and_rollback_are_versions(station):
    teach(station, "red")
    v_red = station.consolidate()["version"]
    teach(station, "blue")
    assert station.predict(colour_image("blue", 9))["label"] == "blue"
    result = station.rollback(v_red)
    assert result["classes"] == ["red"] and result["version"] > v_red
    assert station.predict(colour_image("blue", 9))["known_classes"] == 1  # predictions follow the rollback
    assert station.store.versions()[0]["reason"] == f"rollback to version {v_red}"
    with pytest.raises(EdgelearnError, match="no knowledge version"):
        station.rollback(999)


def test_corrections_are_logged_and_calibrate_the_confidence(station):
    teach(station, "red", n=3)
    teach(station, "blue", n=3)
    for i in range(12):  # confirmations of known classes: scored before they are learned
        p = station.predict(colour_image("red", 100 + i), enqueue=False)
        station.learn([colour_image("red", 100 + i)], ["red"], kind="confirm", predicted=[p["label"]],
                      confidence=[p["confidence"]])
        station.learn([colour_image("blue", 200 + i)], ["blue"], kind="teach")
    status = station.status()
    assert status["live_calibration"]["n"] == 12
    assert status["temperature"] != 1.0 and status["calibration"]["calibrated"]


def test_status_shows_calibration_progress_and_the_unknown_threshold(tmp_path):
    station = Station(config(tmp_path, learner="ncm"))
    assert station.status()["calibration"] == {"n": 0, "needed": 20, "calibrated": False}
    teach(station, "red", n=12)  # held out: familiarity, but nothing to choose between yet
    assert station.status()["familiarity_threshold"] is None  # 12 values: too few to call anything unknown
    teach(station, "blue", n=12)
    status = station.status()
    assert status["calibration"] == {"n": 12, "needed": 20, "calibrated": False}
    assert status["familiarity_threshold"] is not None
    p = station.predict(colour_image("red", 77), enqueue=False)
    assert p["unknown"] is False and p["label"] == "red" and p["familiarity"] >= status["familiarity_threshold"]
    station.close()


def test_low_confidence_predictions_wait_in_the_queue_and_labelling_learns_them(tmp_path):
    station = Station(config(tmp_path, queue_below=1.01))  # queue everything
    teach(station, "red")
    teach(station, "blue")
    station.predict(colour_image("green"))
    station.predict(colour_image("green"))  # the same scene again: not queued twice
    (item,) = station.store.queue()
    assert item["has_image"] == 0  # no images kept unless the user opted in
    station.label_queue(item["id"], "green", user="bob")
    assert "green" in station.rec.classes
    assert station.store.events(1)[0]["kind"] == "label"
    with pytest.raises(EdgelearnError, match="already labelled"):
        station.label_queue(item["id"], "green")
    station.close()


def test_export_import_merges_and_refuses_other_backbones(tmp_path):
    a = Station(config(tmp_path / "a", allow_unsigned=True))
    b = Station(config(tmp_path / "b"))
    teach(a, "red")
    teach(b, "blue")
    teach(b, "green")
    result = a.import_package(b.export(), "b.edge")
    assert set(result["classes"]) == {"red", "blue", "green"}
    assert a.predict(colour_image("green", 7))["label"] == "green"
    assert a.store.sites()[0]["id"] == "unknown"
    other = Recognizer.create("tiny", learner="slda", weights="random", input_size=32, seed=1)
    other.learn([colour_image("red")], ["red"])
    with pytest.raises(IncompatibleError, match="another backbone"):
        a.import_package(other.to_bytes(), "other.edge")
    tampered = bytearray(b.export())
    tampered[-3] ^= 1
    with pytest.raises(EdgelearnError, match="integrity|damaged"):
        a.import_package(bytes(tampered), "tampered.edge")
    a.close()
    b.close()


def test_token_is_made_once_and_kept_private(tmp_path):
    data = tmp_path / "station"
    token, new = station_token(data)
    assert new and len(token) >= 20
    assert (data / "token").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
    assert station_token(data) == (token, False)
    assert station_token(data, "given-long-enough-1") == ("given-long-enough-1", False)


def test_short_tokens_and_token_files_others_can_read_are_refused(tmp_path, monkeypatch):
    with pytest.raises(EdgelearnError, match="too short"):
        station_token(tmp_path, "secret")
    monkeypatch.setenv("EDGELEARN_TOKEN", "abc")
    with pytest.raises(EdgelearnError, match="too short"):
        station_token(tmp_path)
    monkeypatch.delenv("EDGELEARN_TOKEN")
    station_token(tmp_path)
    (tmp_path / "token").chmod(0o644)
    with pytest.raises(EdgelearnError, match="chmod 600"):
        station_token(tmp_path)


def test_the_store_is_private_and_no_station_defaults_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGELEARN_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "edgelearn"
    monkeypatch.setenv("EDGELEARN_DATA", str(tmp_path / "elsewhere"))
    assert StationConfig().data_dir == tmp_path / "elsewhere"
    st = Store(tmp_path / "new" / "station.sqlite")
    st.set("x", 1)  # forces the WAL file
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    for name in ("station.sqlite", "station.sqlite-wal"):
        assert (tmp_path / "new" / name).stat().st_mode & 0o777 == 0o600
    st.close()


def test_self_signed_certificate_is_made_once_with_a_private_key(tmp_path):
    cert, key = self_signed(tmp_path, ["station.local"])
    assert key.stat().st_mode & 0o777 == 0o600
    assert self_signed(tmp_path, ["other"]) == (cert, key)
    assert fingerprint(cert).count(":") == 31
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "station.local" in names.get_values_for_type(x509.DNSName)


# -- uploads and videos ------------------------------------------------------------------------------
def png(name, seed=0):
    buf = io.BytesIO()
    colour_image(name, seed).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_uploads_take_labels_from_folders():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("parts/red/a.png", png("red"))
        z.writestr("parts/blue/b.png", png("blue"))
        z.writestr("readme.txt", "ignored")
    pairs = labelled_images("set.zip", buf.getvalue(), None, max_pixels=10**6)
    assert sorted(label for _, label in pairs) == ["parts/blue", "parts/red"]
    assert [label for _, label in labelled_images("set.zip", buf.getvalue(), "x", max_pixels=10**6)] == ["x", "x"]
    with pytest.raises(ImageError, match="not a readable zip"):
        labelled_images("broken.zip", b"PK\x03\x04garbage", None, max_pixels=10**6)
    with pytest.raises(ValueError, match="give a label"):
        labelled_images("a.png", png("red"), None, max_pixels=10**6)
    with pytest.raises(ImageError, match="limit"):
        labelled_images("a.png", png("red"), "red", max_pixels=100)


def write_video(path, colours, frames_each=12, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for name in colours:
        for i in range(frames_each):
            frame = np.zeros((size[1], size[0], 3), np.uint8)
            frame[:] = COLOURS[name][::-1]
            frame[:, : 4 + i // 6] = 255  # a tiny change between frames: near-duplicates
            writer.write(frame)
    writer.release()
    return path


def test_frames_from_concept_folders_drop_near_duplicates(tmp_path):
    (tmp_path / "videos/bike/saddle").mkdir(parents=True)
    (tmp_path / "videos/bike/wheel").mkdir(parents=True)
    write_video(tmp_path / "videos/bike/saddle/clip1.avi", ["red", "blue"])
    write_video(tmp_path / "videos/bike/wheel/clip2.avi", ["green"])
    assert len(list(read_frames(tmp_path / "videos/bike/saddle/clip1.avi", every=3))) == 8
    written = extract_dataset(tmp_path / "videos", tmp_path / "out", every=3)
    assert set(written) == {"bike/saddle", "bike/wheel"}
    assert written["bike/saddle"] < 8 and written["bike/saddle"] >= 1
    assert len(list((tmp_path / "out/bike/saddle").glob("clip1_*.jpg"))) == written["bike/saddle"]
    everything = extract_dataset(tmp_path / "videos", tmp_path / "all", every=3, max_distance=None)
    assert everything["bike/saddle"] == 8


def test_bad_videos_and_folders_are_refused(tmp_path):
    (tmp_path / "v/c").mkdir(parents=True)
    (tmp_path / "v/c/broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ImageError, match="broken.mp4"):
        extract_dataset(tmp_path / "v", tmp_path / "out")
    with pytest.raises(DatasetError, match="no such folder"):
        extract_dataset(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(DatasetError, match="no videos"):
        extract_dataset(tmp_path / "out", tmp_path / "o2")


def test_checkpoints_bound_the_replay_and_keep_the_knowledge(tmp_path):
    station = Station(config(tmp_path, checkpoint_every=5))
    teach(station, "red", n=3)
    teach(station, "blue", n=3)  # 6 events on version 1 -> a checkpoint
    assert station.store.versions()[0]["reason"] == "checkpoint"
    assert station.store.events_on(station.store.active_version) == 0
    teach(station, "green", n=2)
    station.close()
    again = Station(config(tmp_path, checkpoint_every=5))
    assert sorted(again.rec.classes) == ["blue", "green", "red"] and again.status()["examples"] == 8
    again.close()


def test_unknown_below_the_threshold_still_lists_the_closest_classes(tmp_path):
    station = Station(config(tmp_path, unknown_below=1.01))  # nothing is that certain
    teach(station, "red")
    teach(station, "blue")
    p = station.predict(colour_image("red", 77), enqueue=False)
    assert p["label"] is None and p["alternatives"][0]["label"] == "red"
    station.close()
    relaxed = Station(config(tmp_path, unknown_below=0))  # a setting of the station, not of its knowledge
    assert relaxed.predict(colour_image("red", 77), enqueue=False)["label"] == "red"
    relaxed.close()


def test_a_station_refuses_to_start_on_an_altered_event_until_check_repair_drops_it(tmp_path):
    station = Station(config(tmp_path))
    teach(station, "red", n=3)
    event = station.store.events(3)[1]["id"]
    station.close()
    db = sqlite3.connect(config(tmp_path).store_path)
    db.execute("UPDATE events SET features = zeroblob(length(features)) WHERE id = ?", (event,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"event {event} \\('red'\\) was altered or damaged"):
        Station(config(tmp_path))
    runner = CliRunner()
    data = str(config(tmp_path).data_dir)
    checked = runner.invoke(cli_app, ["store", "check", data])
    assert checked.exit_code == 1 and f"event {event} ('red')" in checked.output
    repaired = runner.invoke(cli_app, ["store", "check", data, "--repair"])
    assert repaired.exit_code == 0 and f"dropped event {event} ('red')" in repaired.output
    again = Station(config(tmp_path))
    assert again.status()["examples"] == 2
    again.close()


def test_a_station_with_events_but_no_active_version_refuses_to_start(tmp_path):
    station = Station(config(tmp_path))
    teach(station, "red", n=2)
    station.close()
    store = Store(config(tmp_path).store_path)
    with store.transaction():
        store._db.execute("DELETE FROM meta WHERE key = 'active_version'")
    store.close()
    with pytest.raises(StoreError, match="names no active version"):
        Station(config(tmp_path))
    config(tmp_path).store_path.write_bytes(b"")
    with pytest.raises(StoreError, match="empty file"):
        Station(config(tmp_path))


def test_store_backup_command_copies_a_running_station(tmp_path):
    station = Station(config(tmp_path))
    teach(station, "red", n=2)
    out = tmp_path / "backup.sqlite"
    result = CliRunner().invoke(cli_app, ["store", "backup", str(config(tmp_path).data_dir), str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    restored_path = config(tmp_path / "restored").store_path
    restored_path.parent.mkdir(parents=True)
    restored_path.write_bytes(out.read_bytes())
    restored = Station(config(tmp_path / "restored"))
    assert restored.status()["examples"] == 2
    restored.close()
    station.close()
    missing = CliRunner().invoke(cli_app, ["store", "check", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no station store at" in missing.output


def test_concurrent_labels_of_one_queue_item_learn_it_once(tmp_path):
    station = Station(config(tmp_path, queue_below=1.01))
    teach(station, "red")
    station.predict(colour_image("green"))
    (item,) = station.store.queue()
    events_before = station.store.count("events")

    def label(_):
        try:
            return station.label_queue(item["id"], "green", user="bob")
        except ConflictError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(label, range(4)))
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all("already labelled" in str(r) for r in results if isinstance(r, ConflictError))
    assert station.store.count("events") == events_before + 1 and station.rec.examples_seen["green"] == 1
    station.close()


def test_concurrent_heat_maps_all_succeed(station):
    teach(station, "red")
    teach(station, "blue")
    with ThreadPoolExecutor(6) as pool:
        maps = list(pool.map(lambda i: station.heatmap(colour_image("red", i), "red"), range(12)))
    assert all(m.startswith("data:image/png;base64,") for m in maps)


def test_api_retried_idempotency_key_learns_once_and_labels_conflict_or_are_gone(tmp_path):
    station = Station(config(tmp_path, keep_versions=2))
    client = TestClient(create_app(station, TOKEN), base_url="http://localhost")
    auth = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "teach-red-1"}
    files = [("files", ("red.png", png("red"), "image/png"))]
    first = client.post("/api/learn", headers=auth, data={"label": "red"}, files=files)
    again = client.post("/api/learn", headers=auth, data={"label": "red"}, files=files)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true" and station.store.count("events") == 1
    stranger = client.post("/api/learn", headers={"Idempotency-Key": "teach-red-1"}, data={"label": "red"},
                           files=files)
    assert stranger.status_code == 401  # a key never stands in for the token
    client.post("/api/learn", headers={**auth, "Idempotency-Key": "teach-red-2"}, data={"label": "red"}, files=files)
    assert station.store.count("events") == 2
    assert client.post("/api/versions/1/tag", headers=auth, data={"name": "first"}).json()["tag"] == "first"
    for _ in range(3):
        client.post("/api/consolidate", headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.post("/api/versions/2/rollback", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 410
    assert client.post("/api/versions/1/rollback", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    station.close()


def test_api_second_label_of_a_queue_item_is_a_409(tmp_path):
    station = Station(config(tmp_path, queue_below=1.01))
    teach(station, "red")
    station.predict(colour_image("green"))
    (item,) = station.store.queue()
    client = TestClient(create_app(station, TOKEN), base_url="http://localhost")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post(f"/api/queue/{item['id']}", headers=auth, data={"label": "green"}).status_code == 200
    second = client.post(f"/api/queue/{item['id']}", headers=auth, data={"label": "green"})
    assert second.status_code == 409 and "already labelled" in second.json()["detail"]
    station.close()


def test_predictions_never_wait_for_learning(station, monkeypatch):
    """While a learn re-solves SLDA's weights, predictions answer from the knowledge before it;
    once the learn returned, every prediction sees the new class."""
    teach(station, "red")
    teach(station, "blue")
    solving, release = threading.Event(), threading.Event()
    weights = StreamingLDA._weights

    def slow_weights(self, *args, **kwargs):  # the teacher's solve takes as long as the test wants
        if threading.current_thread().name == "teacher" and getattr(self, "_linear", None) is None:
            solving.set()
            release.wait(timeout=60)
        return weights(self, *args, **kwargs)

    def teach_green_and_blue():
        station.learn([colour_image("green", 1), colour_image("blue", 5)], ["green", "blue"])

    monkeypatch.setattr(StreamingLDA, "_weights", slow_weights)
    teacher = threading.Thread(target=teach_green_and_blue, name="teacher")
    answers = []
    predictor = threading.Thread(target=lambda: answers.append(station.predict(colour_image("blue", 7))))
    teacher.start()
    try:
        assert solving.wait(timeout=30), "the learner never solved"
        predictor.start()
        predictor.join(timeout=30)
        assert answers, "a prediction waited for the learner's solve"
    finally:
        release.set()
        teacher.join(timeout=60)
    predictor.join(timeout=60)
    assert answers[0]["label"] == "blue" and answers[0]["known_classes"] == 2
    after = station.predict(colour_image("green", 9))
    assert after["label"] == "green" and after["known_classes"] == 3


def knowing(station) -> tuple:
    """What a user would notice of a station's knowledge: its classes, its answers, its versions."""
    answers = [(p["label"], round(p["confidence"], 6)) for p in
               (station.predict(colour_image(c, 40 + i), enqueue=False) for i, c in enumerate(COLOURS))]
    return station.rec.classes, answers, station.store.versions(), station.store.active_version


def test_without_a_trust_folder_imports_are_refused_with_how_to_set_one_up(tmp_path):
    a, b = Station(config(tmp_path / "a")), Station(config(tmp_path / "b"))
    teach(a, "red")
    teach(b, "blue")
    before = knowing(a)
    with pytest.raises(EdgelearnError, match="serve --trust FOLDER"):
        a.import_package(b.export(), "b.edge")
    assert knowing(a) == before
    a.close()
    b.close()


def test_a_failed_import_or_rollback_changes_neither_memory_nor_store(tmp_path, monkeypatch):
    import sqlite3

    a, b = Station(config(tmp_path / "a", allow_unsigned=True)), Station(config(tmp_path / "b"))
    teach(a, "red")
    teach(a, "green")
    a.consolidate()
    teach(b, "blue")
    before = knowing(a)

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(a.store, "add_version", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        a.import_package(b.export(), "b.edge")
    assert knowing(a) == before
    with pytest.raises(sqlite3.OperationalError):
        a.rollback(1)
    assert knowing(a) == before
    monkeypatch.undo()
    assert "blue" in a.import_package(b.export(), "b.edge")["classes"]  # and it works once the disk has room
    a.close()
    b.close()


def test_a_stored_version_that_fails_the_checks_is_refused_by_name(tmp_path):
    from edgelearn.errors import ModelFileError
    from tests.unit.test_knowledge import forged, set_param

    station = Station(config(tmp_path))
    teach(station, "red")
    teach(station, "blue")
    good = station.consolidate()["version"]
    bad = station.store.add_version(forged(station.rec, set_param("kind", "ncm")), "from an older edgelearn",
                                    classes=2, examples=8)
    station.close()
    with pytest.raises(ModelFileError, match=f"version {bad} .*hyper-parameters"):
        Station(config(tmp_path))
    store = Store(config(tmp_path).store_path)  # the operator rolls back by hand; the station starts again
    store.add_version(store.package(good), f"rollback to version {good}", classes=2, examples=8)
    store.close()
    station = Station(config(tmp_path))
    before = knowing(station)
    with pytest.raises(ModelFileError, match=f"version {bad}"):
        station.rollback(bad)
    assert knowing(station) == before
    station.close()


def test_api_user_errors_are_4xx_with_their_reason_and_bugs_stay_500(tmp_path, monkeypatch):
    station = Station(config(tmp_path))
    client = TestClient(create_app(station, TOKEN), base_url="http://localhost", raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    no_label = client.post("/api/learn", headers=auth, files=[("files", ("red.png", png("red"), "image/png"))])
    assert no_label.status_code == 400 and "give a label" in no_label.json()["detail"]

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(station, "predict", broken)
    bug = client.post("/api/predict", content=png("red"), headers={"Content-Type": "image/png"})
    assert bug.status_code == 500 and "broadcast" not in bug.text  # an internal message never reaches clients
    station.close()
