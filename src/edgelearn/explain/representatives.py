"""Representative images: a few diverse examples per class, chosen by image similarity.

The comparison algorithms of the transparency paper (Rieder et al., section 3): OpenCV histogram
comparison (correlation, chi-square, intersection, Bhattacharyya), ImageHash hashes (average,
perceptual, difference, wavelet, colour), SSIM and MSE (scikit-image), plus the backbone's own
features (cosine). Each is a :class:`Similarity`: ``signature(image)`` once per image, then a cheap
``distance(a, b)`` between signatures. ImageHash and scikit-image belong to the workstation install
(``edgelearn[train]``); the device install compares by features or OpenCV's histograms.
"""

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from edgelearn.errors import ParameterError

COMPARE_SIZE = 64  # pixels (square) for SSIM and MSE: the layout, not the fine texture, matters here


@dataclass(frozen=True)
class Similarity:
    name: str
    signature: Callable[[Image.Image], object]
    distance: Callable[[object, object], float]  # 0 = identical, larger = less alike


def _workstation(module: str, method: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ParameterError(f"the {method!r} comparison needs the workstation install (pip install "
                             f"'edgelearn[train]'); on this device use 'feature' or 'hist'") from None


def _hash(name: str) -> Similarity:
    return Similarity(name, lambda image: getattr(_workstation("imagehash", name), name)(image),
                      lambda a, b: float(a - b))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 - _workstation("skimage.metrics", "ssim").structural_similarity(a, b, data_range=1.0)


def colour_histogram(image: Image.Image) -> np.ndarray:
    """An 8x8x8 HSV histogram that sums to 1 (what OpenCV's histogram comparison tutorial uses)."""
    hsv = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256])
    return (hist / max(hist.sum(), 1)).astype(np.float32)


def _hist(method: int, to_distance: Callable[[float], float], name: str) -> Similarity:
    return Similarity(name, colour_histogram, lambda a, b: to_distance(cv2.compareHist(a, b, method)))


def grey_thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((COMPARE_SIZE, COMPARE_SIZE), Image.BILINEAR), np.float64) / 255


def feature_similarity(embed: Callable[[Image.Image], np.ndarray]) -> Similarity:
    """Cosine distance between backbone features (``embed`` maps one image to its feature vector)."""
    def signature(image):
        v = np.asarray(embed(image), np.float64).ravel()
        return v / max(np.linalg.norm(v), 1e-12)
    return Similarity("feature", signature, lambda a, b: float(1.0 - a @ b))


SIMILARITIES: dict[str, Similarity] = {s.name: s for s in [
    *map(_hash, ["average_hash", "phash", "dhash", "whash", "colorhash"]),
    _hist(cv2.HISTCMP_CORREL, lambda v: 1.0 - v, "hist"),
    _hist(cv2.HISTCMP_CHISQR, float, "hist_chisqr"),
    _hist(cv2.HISTCMP_INTERSECT, lambda v: 1.0 - v, "hist_intersect"),
    _hist(cv2.HISTCMP_BHATTACHARYYA, float, "hist_bhattacharyya"),
    Similarity("ssim", grey_thumbnail, _ssim),
    Similarity("mse", grey_thumbnail, lambda a, b: float(np.mean((a - b) ** 2))),
]}
ALIASES = {"ahash": "average_hash", "average": "average_hash", "phash": "phash", "dhash": "dhash",
           "whash": "whash", "colorhash": "colorhash", "colourhash": "colorhash"}
METHODS = sorted({*SIMILARITIES, *ALIASES, "feature"})


def get_similarity(method: str, embed: Callable[[Image.Image], np.ndarray] | None = None) -> Similarity:
    """A :class:`Similarity` by name (``feature`` needs ``embed``)."""
    if method == "feature":
        if embed is None:
            raise ValueError("method 'feature' needs a backbone to embed the images")
        return feature_similarity(embed)
    name = ALIASES.get(method, method)
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity method {method!r}; choose one of {', '.join(METHODS)}")
    return SIMILARITIES[name]


def distance_matrix(signatures: Sequence, similarity: Similarity) -> np.ndarray:
    n = len(signatures)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            D[i, j] = D[j, i] = similarity.distance(signatures[i], signatures[j])
    return D


def pick_diverse(D: np.ndarray, k: int) -> list[int]:
    """``k`` representatives from a distance matrix: the medoid first (the most typical example),
    then repeatedly the example farthest from those chosen (greedy k-centre: covers the variety).

    >>> D = np.abs(np.subtract.outer([0., 0.1, 0.2, 5., 5.1, 10.], [0., 0.1, 0.2, 5., 5.1, 10.]))
    >>> pick_diverse(D, 3)
    [3, 0, 5]
    """
    n = len(D)
    if n == 0 or k <= 0:
        return []
    chosen = [int(D.sum(axis=1).argmin())]
    nearest = D[chosen[0]].astype(np.float64)
    nearest[chosen[0]] = -np.inf
    while len(chosen) < min(k, n):
        nxt = int(nearest.argmax())  # identical images (distance 0) are still taken, after all others
        chosen.append(nxt)
        nearest = np.minimum(nearest, D[nxt])
        nearest[chosen] = -np.inf
    return chosen


def nearest(query, signatures: Sequence, similarity: Similarity, k: int = 1) -> list[tuple[int, float]]:
    """The ``k`` signatures most alike ``query``: ``[(index, distance), ...]``, closest first."""
    d = [similarity.distance(query, s) for s in signatures]
    order = np.argsort(d, kind="stable")[:k]
    return [(int(i), float(d[i])) for i in order]
