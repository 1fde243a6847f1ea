import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(os.environ.get("EDGELEARN_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own feature cache, so no test sees another's features."""
    monkeypatch.setenv("EDGELEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGELEARN_WEIGHTS", raising=False)


def blobs(n_classes=4, per_class=30, dim=16, seed=0, spread=0.3, offset=0):
    """Well separated non-negative Gaussian blobs (ReLU-like features); labels 'c<k>'."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).uniform(0, 3, size=(n_classes + offset, dim))[offset:]
    X = np.concatenate([np.abs(c + spread * rng.standard_normal((per_class, dim))) for c in centres])
    y = np.repeat([f"c{k + offset}" for k in range(n_classes)], per_class)
    return X, y


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_image_folder(root: Path, per_class=6, size=40, nested=False) -> Path:
    """train/ and test/ folders of noisy solid-colour PNGs, one class per colour."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for name, rgb in COLOURS.items():
            folder = root / split / ("colours/" + name if nested else name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-25, 25, size=(size, size, 3))
                pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")
