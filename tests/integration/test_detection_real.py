"""A detector on the real ImageNet MobileNetV2 and a small part of NEU-DET: it learns to find defects."""

from pathlib import Path

import pytest

from edgelearn.detection import build_detector, load_detector
from edgelearn.detection.evaluate import evaluate
from edgelearn.detection.train import train_detector
from tests.conftest import SHARED

WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet.pt"
NEU = SHARED / "data" / "neu_det"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (WEIGHTS.is_file() and NEU.is_dir()), reason="needs ../shared/models and data")]
CLASSES = ("patches", "pitted_surface")


def part_of_neu(split: str, per_class: int, root: Path) -> Path:
    """A VOC folder of links to the first ``per_class`` pictures of each of CLASSES."""
    for sub in ("images", "annotations"):
        (root / sub).mkdir(parents=True)
    for name in CLASSES:
        for xml in sorted((NEU / split / "annotations").glob(f"{name}_*.xml"))[:per_class]:
            (root / "annotations" / xml.name).symlink_to(xml)
            (root / "images" / f"{xml.stem}.jpg").symlink_to(NEU / split / "images" / f"{xml.stem}.jpg")
    return root


def test_ssdlite_on_the_real_trunk_learns_to_find_defects(tmp_path):
    train = part_of_neu("train", 40, tmp_path / "train")
    test = part_of_neu("test", 15, tmp_path / "test")
    untrained = build_detector(list(CLASSES), size=192, weights=str(WEIGHTS))
    assert untrained.meta["padding"] == "tf_same"
    before = evaluate(untrained, test)["map_50"]
    out = tmp_path / "neu.safetensors"
    train_detector(train, out, size=192, weights=str(WEIGHTS), epochs=8, views=2, log=lambda line: None)
    after = evaluate(load_detector(out), test)
    assert after["map_50"] > before + 0.15, (before, after)
    assert set(after["ap_50"]) == set(CLASSES)
