"""The device install (``pip install edgelearn``, no PyTorch): a served station from a bundle.

CI runs these in a second virtual environment with the device install only, on a bundle the full install
exported in the same run (``$EDGELEARN_DEVICE_BUNDLE``); in the full install they export their own.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from edgelearn import Recognizer
from edgelearn.backbones import BundleBackbone
from tests.integration.server import Server
from tests.unit.test_station import colour_image, png

DEVICE_INSTALL = os.environ.get("EDGELEARN_DEVICE_INSTALL") == "1"  # set by .ci/run in the device environment


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    if os.environ.get("EDGELEARN_DEVICE_BUNDLE"):
        return os.environ["EDGELEARN_DEVICE_BUNDLE"]
    if importlib.util.find_spec("torch") is None:
        pytest.skip("no bundle given ($EDGELEARN_DEVICE_BUNDLE) and no PyTorch here to export one")
    from edgelearn.backbones import build_backbone, export_bundle

    backbone = build_backbone("tiny", weights="random", input_size=32)
    return str(export_bundle(backbone, tmp_path_factory.mktemp("bundle") / "tiny.edgebundle"))


@pytest.mark.skipif(not DEVICE_INSTALL, reason="only the device install lacks PyTorch")
def test_the_device_install_has_no_workstation_libraries():
    for name in ("torch", "torchvision", "scipy", "matplotlib", "skimage"):
        assert importlib.util.find_spec(name) is None, f"{name} is in the device install"


def test_a_served_station_learns_predicts_explains_and_shares(bundle, tmp_path):
    server = Server(tmp_path / "station", "--backbone", "tiny", "--weights", bundle, "--input-size", "32")
    try:
        server.teach("red", "blue")
        files = {"image": ("b.png", png("blue", 9), "image/png")}
        answer = server.client.post("/api/predict?heatmap=true", headers=server.auth(), files=files)
        package = server.client.get("/api/knowledge", headers=server.auth())
    finally:
        server.stop()

    assert answer.status_code == 200 and answer.json()["label"] == "blue"
    assert answer.json()["heatmap"].startswith("data:image/png;base64,")
    assert package.status_code == 200
    rec = Recognizer.from_bytes(package.content, backbone=BundleBackbone(bundle))
    assert rec.predict([colour_image("red", 11)])[0].label == "red"


def test_the_command_line_learns_and_predicts_from_a_bundle(bundle, tmp_path):
    from tests.conftest import make_image_folder

    data, model = make_image_folder(tmp_path / "colours", per_class=3), tmp_path / "m.edge"

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "edgelearn", *args, "--json"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    cli("learn", str(data / "train"), "-o", str(model), "--backbone", "tiny", "--weights", bundle)
    assert cli("predict", str(model), str(data / "test" / "blue" / "blue_0.png"))["predictions"][0]["label"] == "blue"
    assert cli("evaluate", str(model), str(data / "test"))["accuracy"] == 1.0
