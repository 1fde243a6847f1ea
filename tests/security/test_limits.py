"""Resource limits against a real `edgelearn serve`: image bombs, zip bombs, formats with delegates,
bad labels. Each is refused at once with a clear 4xx, and the server's memory stays bounded."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.server import Server
from tests.unit.test_limits import zipped
from tests.unit.test_station import colour_image, png

GROWTH_BYTES = 300 * 2**20  # at most this over the idle station; before these limits one request cost +1 GB


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def memory_kb(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmHWM", "VmRSS")}


def learn(server, files, **data):
    return server.client.post("/api/learn", headers=server.auth(), data=data,
                              files=[("files", (name, body, "application/octet-stream")) for name, body in files])


@pytest.fixture(scope="module")
def attacked(station_server):
    """The station after the attacks below: each attack's response, by name, and the idle station's RSS."""
    s = station_server
    idle_kb = memory_kb(s.process.pid)["VmRSS"]
    deep_bomb = encoded(Image.fromarray(np.zeros((6000, 6000), np.uint16)))  # 36 Mpixel of 16-bit in ~70 KB
    deep = encoded(Image.fromarray(np.zeros((2000, 2000), np.uint16)))  # under the pixel limit, but 16-bit
    huge = encoded(Image.new("L", (6000, 6000), 128))  # 36 Mpixel in ~40 KB
    large = encoded(Image.new("L", (3000, 3000), 128))  # 9 Mpixel: allowed alone, not 25 in one request
    huge_zip = zipped({f"parts/grey/{i}.png": huge for i in range(25)})
    large_zip = zipped({f"parts/grey/{i}.png": large for i in range(25)})
    assert max(len(deep_bomb), len(huge_zip), len(large_zip)) < 2**20  # small requests, big decodes
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    responses = {
        "deep bomb": s.client.post("/api/predict", files={"image": ("deep.png", deep_bomb)}),
        "deep": s.client.post("/api/predict", files={"image": ("deep16.png", deep)}),
        "huge zip": learn(s, [("huge.zip", huge_zip)]),
        "large zip": learn(s, [("large.zip", large_zip)]),
        "eps": s.client.post("/api/predict", files={"image": ("drawing.eps", eps)}),
        "eps as jpg": learn(s, [("drawing.jpg", eps)], label="drawings"),
        "dot-dot label": learn(s, [("a.png", png("red"))], label="parts/../../etc"),
        "bidi label": learn(s, [("a.png", png("red"))], label="bolt\u202egnp.exe"),
        "bidi folder": learn(s, [("set.zip", zipped({"parts/bolt\u202egnp/a.png": png("red")}))]),
    }
    return responses, idle_kb


@pytest.mark.parametrize("attack, status, message", [
    ("deep bomb", 413, "deep.png: 6000x6000 pixels is more than the limit of 12,000,000"),
    ("deep", 400, "deep16.png: 16-bit or floating-point pixels"),
    ("huge zip", 413, "huge.zip:parts/grey/0.png: 6000x6000 pixels is more than the limit"),
    ("large zip", 413, "more than 200 million pixels in all"),
    ("eps", 400, "drawing.eps: not an image file we can read"),
    ("eps as jpg", 400, "drawing.jpg: not an image file we can read"),
    ("dot-dot label", 400, "'..' is not a name"),
    ("bidi label", 400, "control or invisible formatting characters"),
    ("bidi folder", 400, "set.zip: parts/bolt\u202egnp/a.png: invalid label"),
])
def test_each_attack_is_refused_with_a_clear_message(attacked, attack, status, message):
    r = attacked[0][attack]
    assert r.status_code == status and message in r.json()["detail"], (attack, r.status_code, r.text)


def test_the_station_learned_nothing_answers_and_its_memory_stayed_bounded(station_server, attacked):
    s = station_server
    idle_kb, memory = attacked[1], memory_kb(s.process.pid)
    assert (memory["VmHWM"] - idle_kb) * 1024 < GROWTH_BYTES, (idle_kb, memory)
    assert s.client.get("/api/status").json()["events"] == 0
    assert learn(s, [("r.png", png("red"))], label="parts/red").json()["learned"] == 1
    r = s.client.post("/api/predict", files={"image": ("q.png", png("red", 1))})
    assert r.status_code == 200 and r.json()["known_classes"] == 1


def test_the_limits_are_options_of_serve(tmp_path):
    s = Server(tmp_path / "data", "--max-image-mpix", "0.01", "--max-request-images", "2", "--decode-slots", "1")
    try:
        r = s.client.post("/api/predict", files={"image": ("q.png", encoded(colour_image("red", size=100)))})
        assert r.status_code == 200
        r = s.client.post("/api/predict", files={"image": ("big.png", encoded(colour_image("red", size=120)))})
        assert r.status_code == 413 and "120x120 pixels is more than the limit of 10,000" in r.json()["detail"]
        r = learn(s, [(f"{i}.png", png("red", i)) for i in range(3)], label="red")
        assert r.status_code == 413 and "more than 2 images" in r.json()["detail"]
    finally:
        s.stop()
