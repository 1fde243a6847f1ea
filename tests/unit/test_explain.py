import numpy as np
import pytest
from PIL import Image

from edgelearn import Recognizer
from edgelearn.explain import HeatMapper, deletion_curve, expected_calibration_error, fit_temperature, overlay
from edgelearn.explain.calibration import OnlineTemperature, reliability
from edgelearn.explain.representatives import (
    METHODS,
    SIMILARITIES,
    distance_matrix,
    get_similarity,
    nearest,
    pick_diverse,
)
from edgelearn.learners import make_learner
from edgelearn.learners.base import softmax
from tests.conftest import blobs


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    conf = np.full(1000, 0.7)
    correct = np.arange(1000) < 700
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(1000, 0.99), correct) == pytest.approx(0.29)
    bins = reliability(conf, correct)
    assert len(bins) == 1 and bins[0]["n"] == 1000 and bins[0]["lo"] == 0.7
    assert bins[0]["confidence"] == pytest.approx(0.7) and bins[0]["accuracy"] == pytest.approx(0.7)


def test_fitted_temperature_recovers_the_one_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 6
    p = softmax(logits / 3.0)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(logits, y) == pytest.approx(3.0, rel=0.1)
    raw = expected_calibration_error(softmax(logits), softmax(logits).argmax(1) == y)
    fitted = expected_calibration_error(softmax(logits / 3.0), p.argmax(1) == y)
    assert fitted < raw / 3


def test_online_temperature_waits_for_enough_examples_and_handles_growing_class_lists():
    online = OnlineTemperature(min_examples=20)
    rng = np.random.default_rng(1)
    assert online.observe(rng.normal(size=(10, 2)), rng.integers(0, 2, 10)) is None
    t = online.observe(rng.normal(size=(15, 4)) * 10, rng.integers(0, 4, 15))  # random labels: flatten
    assert t is not None and t > 5


@pytest.mark.parametrize("kind, params", [("slda", {}), ("ncm", {}), ("ncm", {"metric": "euclidean"}),
                                          ("fuzzy_artmap", {"feature_scale": 6.0})])
def test_logit_gradient_matches_finite_differences(kind, params):
    X, y = blobs(n_classes=3, dim=8)
    learner = make_learner(kind, **params).partial_fit(X, y)
    x = X[:4] + 0.013
    g = learner.logit_gradient(x, "c1")
    eps, numeric = 1e-3, np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[i] = eps
        numeric[:, i] = (learner.predict_logits(x + e)[:, 1] - learner.predict_logits(x - e)[:, 1]) / (2 * eps)
    assert np.abs(g - numeric).max() < 1e-2 * max(np.abs(numeric).max(), 1)
    with pytest.raises(ValueError, match="unknown class"):
        learner.logit_gradient(x, "nope")


def _picture(colour, square=None):
    im = Image.new("RGB", (48, 48), colour)
    if square:
        im.paste(square, (8, 8, 28, 28))
    return im


@pytest.mark.parametrize("method", sorted(SIMILARITIES))
def test_every_similarity_is_zero_for_the_same_image_and_prefers_the_alike(method):
    s = get_similarity(method)
    a, a2, b = _picture("red", "white"), _picture("red", "white"), _picture("blue")
    a2.putpixel((40, 40), (0, 0, 0))
    sa, sa2, sb = s.signature(a), s.signature(a2), s.signature(b)
    assert s.distance(sa, sa) == pytest.approx(0, abs=1e-9)
    assert s.distance(sa, sa2) <= s.distance(sa, sb)


def test_similarity_names_and_errors():
    assert {"phash", "hist", "ssim", "feature", "mse", "colorhash"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown similarity"):
        get_similarity("nope")
    with pytest.raises(ValueError, match="needs a backbone"):
        get_similarity("feature")


def test_representatives_are_typical_first_then_diverse():
    images = [_picture((200 + i, 0, 0)) for i in range(5)] + [_picture("blue"), _picture("green")]
    s = get_similarity("hist")
    D = distance_matrix([s.signature(im) for im in images], s)
    chosen = pick_diverse(D, 3)
    assert chosen[0] < 5 and set(chosen[1:]) == {5, 6}
    assert sorted(pick_diverse(D, 10)) == list(range(7))  # all of them, none twice
    assert nearest(s.signature(_picture("blue")), [s.signature(im) for im in images], s)[0][0] == 5


def test_heat_map_is_a_normalised_map_over_the_crop_and_deletion_starts_at_the_prediction():
    rec = Recognizer.create("tiny", learner="slda", weights="random", input_size=48)
    left = [Image.fromarray(_stripes(side="left", seed=i)) for i in range(6)]
    right = [Image.fromarray(_stripes(side="right", seed=i)) for i in range(6)]
    rec.learn(left + right, ["left"] * 6 + ["right"] * 6)
    mapper = HeatMapper(rec.backbone)
    image = left[0]
    heat = mapper.heat(image, lambda f: rec.learner.logit_gradient(f, "left"))
    assert heat.shape == (48, 48) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    shown = overlay(mapper.crop(image), heat)
    assert shown.size == (48, 48) and shown.mode == "RGB"
    x = rec.backbone.preprocessing.array(image)[None]
    c = rec.classes.index("left")
    curve = deletion_curve(lambda b: rec.predict_proba(rec.backbone.embed_tensor(b))[1][:, c], x, heat, 4)
    # Pillow's resize (the heat map's) and torchvision's (embed's) may differ by a grey level in a few pixels
    assert curve.shape == (5,) and curve[0] == pytest.approx(rec.predict_proba(rec.embed([image]))[1][0, c], abs=1e-3)


@pytest.mark.parametrize("learner", ["slda", "ncm", "fuzzy_artmap"])
def test_the_heat_map_is_captums_grad_cam_of_the_linearised_logit(learner):
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from edgelearn.backbones.backbone import last_feature_map

    rec = Recognizer.create("tiny", learner=learner, weights="random", input_size=48)
    images = [Image.fromarray(_stripes(side=side, seed=i)) for side in ("left", "right") for i in range(4)]
    rec.learn(images, ["left"] * 4 + ["right"] * 4)
    bb = rec.backbone
    image = next(im for im in images  # an image with some evidence for "left" (a map of zeros proves nothing)
                 if HeatMapper(bb).heat(im, lambda f: rec.learner.logit_gradient(f, "left")).max() > 0)
    heat = HeatMapper(bb).heat(image, lambda f: rec.learner.logit_gradient(f, "left"))

    x = torch.from_numpy(bb.preprocessing.array(image)[None]).requires_grad_(True)
    g = torch.from_numpy(rec.learner.logit_gradient(bb.embed_tensor(x.detach().numpy()), "left").astype(np.float32))
    gradcam = captum.LayerGradCam(lambda inp: (bb.embed_tensor(inp) * g).sum(dim=1), last_feature_map(bb.model, 48))
    with torch.enable_grad():
        cam = gradcam.attribute(x, relu_attributions=True)
    cam = captum.LayerAttribution.interpolate(cam.detach(), (48, 48), interpolate_mode="bilinear")[0, 0].numpy()
    assert cam.max() > 0
    assert np.abs(heat - cam / cam.max()).max() < 1e-4


def _stripes(side, seed, size=48):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 110, size=(size, size, 3)).astype(np.uint8)
    cols = slice(0, size // 2) if side == "left" else slice(size // 2, size)
    pixels[::4, cols] = 255
    return pixels
