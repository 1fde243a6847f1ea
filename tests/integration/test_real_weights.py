"""The real ImageNet MobileNetV2 weights from ../shared/models on a few shared images."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgelearn.backbones import build_backbone
from edgelearn.data import FolderDataset, load_image
from edgelearn.learners import make_learner
from edgelearn.recognizer import Recognizer
from tests.conftest import SHARED

WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet.pt"
IMAGENETTE = SHARED / "data" / "imagenette"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs ../shared/models and ../shared/data")]


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("mobilenet_v2", weights=WEIGHTS, input_size=96)


def test_sidecar_is_honoured(backbone):
    assert backbone.padding == "tf_same" and backbone.feature_dim == 1280
    assert backbone.fingerprint["weights"].startswith("b792cc53")


def test_tf_same_padding_reproduces_the_source_model():
    """The full classifier (head kept) must name the sample photos as the TFLite model does."""
    import torchvision

    from edgelearn.backbones.padding import use_tf_same_padding

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model = use_tf_same_padding(model.eval(), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    preprocess = build_backbone("tiny", weights="random", input_size=224).preprocessing.transform()
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    with torch.inference_mode():
        for name, expected in [("bird.bmp", "chickadee"), ("parrot.jpg", "macaw"), ("hot_dog.jpg", "hotdog")]:
            x = preprocess(load_image(SHARED / "models" / "samples" / name))[None]
            assert categories[model(x).argmax().item()] == expected


@pytest.mark.parametrize("learner", ["fuzzy_artmap", "slda", "ncm"])
def test_two_clearly_different_classes_separate(backbone, learner):
    train, test = FolderDataset.splits(IMAGENETTE)
    pick = ["n01440764_tench", "n03028079_church"]

    def few(ds, k):
        idx = [i for c in pick for i in [j for j, y in enumerate(ds.labels) if y == c][:k]]
        return ds.subset(idx)

    train, test = few(train, 8), few(test, 10)
    rec = Recognizer(backbone, make_learner(learner))
    rec.learn(train.paths, train.labels)
    labels = [p.label for p in rec.predict(test.paths)]
    assert np.mean(np.array(labels) == np.array(test.labels)) >= 0.9


def test_grey_steel_images_embed(backbone):
    path = next((SHARED / "data" / "neu_cls" / "test" / "scratches").iterdir())
    assert Image.open(path).mode == "L"
    features = backbone.embed([load_image(path)])
    assert features.shape == (1, 1280) and np.isfinite(features).all() and features.max() <= 6.0
