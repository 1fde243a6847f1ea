"""Resource limits of the station's uploads: budgets per request, decode slots, the label rule in zip
folders and data-set folders."""

import io
import threading
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edgelearn.data import FolderDataset
from edgelearn.errors import BusyError, DatasetError, ImageError, LabelError, TooLargeError
from edgelearn.server import Station, create_app, uploads
from edgelearn.server.limits import Budget, DecodeSlots, Limits
from edgelearn.server.uploads import labelled_images
from tests.integration.server import TOKEN
from tests.unit.test_station import config, png, write_video


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def flat_png(width: int, height: int) -> bytes:
    """A few KB on disk, ``width * height`` pixels once decoded."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def decoded(monkeypatch):
    """The names of the images the upload code decodes, in order."""
    names = []
    load = uploads.load_image
    monkeypatch.setattr(uploads, "load_image", lambda data, **kw: names.append(kw["name"]) or load(data, **kw))
    return names


def test_a_zip_over_the_request_budget_is_refused_before_any_image_is_decoded(decoded):
    archive = zipped({f"parts/grey/{i}.png": flat_png(3000, 3000) for i in range(25)})  # 25 x 9 Mpixel
    assert len(archive) < 1_000_000
    with pytest.raises(TooLargeError, match=r"bomb.zip:parts/grey/\d+.png: .* more than 200 million pixels"):
        labelled_images("bomb.zip", archive, None, max_pixels=12_000_000, budget=Budget(200_000_000))
    with pytest.raises(TooLargeError, match="more than 2 images in one request"):
        labelled_images("many.zip", zipped({f"a/{i}.png": png("red", i) for i in range(3)}), None,
                        max_pixels=10**6, budget=Budget(max_images=2))
    assert decoded == []


def test_one_budget_spans_the_files_of_a_request_and_images_decode_one_at_a_time(decoded):
    budget = Budget(max_pixels=10**9, max_images=3)
    pairs = labelled_images("set.zip", zipped({"a/1.png": png("red"), "b/2.png": png("blue")}), None,
                            max_pixels=10**6, budget=budget)
    assert decoded == []
    image, label = next(pairs)
    assert (image.mode, label, decoded) == ("RGB", "a", ["set.zip:a/1.png"])
    assert [label for _, label in pairs] == ["b"]
    assert next(labelled_images("c.png", png("green"), "c", max_pixels=10**6, budget=budget))[1] == "c"
    with pytest.raises(TooLargeError, match="more than 3 images"):
        labelled_images("d.png", png("green"), "d", max_pixels=10**6, budget=budget)


def test_zip_members_are_checked_one_by_one():
    with pytest.raises(TooLargeError, match=r"big.zip:a/huge.png: 5000x5000 pixels is more than the limit"):
        labelled_images("big.zip", zipped({"a/ok.png": png("red"), "a/huge.png": flat_png(5000, 5000)}), None,
                        max_pixels=12_000_000)
    deep = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(deep, "PNG")
    with pytest.raises(ImageError, match="deep.zip:a/d.png: 16-bit"):
        labelled_images("deep.zip", zipped({"a/d.png": deep.getvalue()}), None, max_pixels=10**6)
    with pytest.raises(ImageError, match="eps.zip:a/x.png: not an image file"):
        labelled_images("eps.zip", zipped({"a/x.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"}),
                        None, max_pixels=10**6)


@pytest.mark.parametrize("folder", ["../escape", "a/./b", "a//b", "bolt\u202egnp", "bell\x07", "x" * 201,
                                    "/".join("abcdefghijklmnopq")])
def test_zip_folders_that_break_the_label_rule_are_refused_naming_the_member(folder, decoded):
    with pytest.raises(LabelError, match=r"set.zip: .*/a.png: invalid label"):
        labelled_images("set.zip", zipped({"ok/b.png": png("red"), f"{folder}/a.png": png("blue")}), None,
                        max_pixels=10**6)
    assert decoded == []


def test_a_given_label_is_checked_before_anything_is_decoded(decoded):
    with pytest.raises(LabelError, match="'..' is not a name"):
        labelled_images("a.png", png("red"), "parts/../x", max_pixels=10**6)
    assert decoded == []


def test_video_frames_are_checked_against_the_pixel_limit_before_decoding(tmp_path):
    clip = write_video(tmp_path / "clip.avi", ["red"], size=(64, 48)).read_bytes()
    with pytest.raises(TooLargeError, match="clip.avi: frames of 64x48 pixels are more than the limit of 1,000"):
        list(labelled_images("clip.avi", clip, "red", every=1, max_pixels=1_000))
    with pytest.raises(TooLargeError, match="clip.avi: frame 3: more than 2 images"):
        list(labelled_images("clip.avi", clip, "red", every=1, max_pixels=10**6, budget=Budget(max_images=2)))


def test_data_set_folders_follow_the_label_rule(tmp_path):
    for path in ["good/a.png", "bad\u202efolder/b.png"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(png("red"))
    with pytest.raises(DatasetError, match=r"class folder .*bad.*folder: invalid label .*control or invisible"):
        FolderDataset.scan(tmp_path)
    (tmp_path / "bad\u202efolder/b.png").unlink()
    assert FolderDataset.scan(tmp_path).labels == ("good",)


def test_decode_slots_refuse_at_once_when_all_are_taken():
    slots = DecodeSlots(1)
    with slots(), pytest.raises(BusyError, match="try again"), slots(wait=0.01):
        pass
    with slots():  # released again
        pass


def test_a_prediction_that_finds_no_free_decode_slot_gets_429_with_retry_after(tmp_path, monkeypatch):
    from edgelearn.server.routers import recognize

    station = Station(config(tmp_path))
    client = TestClient(create_app(station, TOKEN, limits=Limits(decode_slots=1)), base_url="http://localhost")
    started, release = threading.Event(), threading.Event()
    load = recognize.load_image

    def slow_load(data, **kw):
        if kw["name"] == "slow.png":
            started.set()
            release.wait(30)
        return load(data, **kw)

    monkeypatch.setattr(recognize, "load_image", slow_load)
    first = threading.Thread(target=lambda: client.post("/api/predict", files={"image": ("slow.png", png("red"))}))
    first.start()
    try:
        assert started.wait(30)
        r = client.post("/api/predict", files={"image": ("next.png", png("red"))})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "try again" in r.json()["detail"]
    finally:
        release.set()
        first.join(30)
    assert client.post("/api/predict", files={"image": ("after.png", png("red"))}).status_code == 200
    station.close()


def test_over_budget_requests_get_413_and_teaching_streams_the_upload(tmp_path):
    station = Station(config(tmp_path, keep_images=True))
    client = TestClient(create_app(station, TOKEN, limits=Limits(request_images=3)), base_url="http://localhost")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/api/predict", files={"image": ("huge.png", flat_png(4000, 4000))})
    assert r.status_code == 413 and "huge.png: 4000x4000 pixels" in r.json()["detail"]
    four = [("files", (f"{i}.png", png("red", i))) for i in range(4)]
    r = client.post("/api/learn", headers=auth, data={"label": "red"}, files=four)
    assert r.status_code == 413 and "more than 3 images" in r.json()["detail"]
    assert station.store.count("events") == 0  # nothing learned from a refused request
    r = client.post("/api/learn", headers=auth, files=[("files", ("set.zip", zipped(
        {"parts/red/a.png": png("red"), "parts/blue/b.png": png("blue"), "parts/blue/c.png": png("blue", 1)})))])
    assert r.status_code == 200 and r.json()["learned"] == 3 and set(r.json()["classes"]) == {"parts/red", "parts/blue"}
    assert station.store.count("events") == 3 and len(station.store.thumbnails(["parts/blue"])) == 2
    station.close()
