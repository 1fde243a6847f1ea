"""edgelearn: image recognition on edge devices that keeps learning after deployment.

A frozen pretrained backbone (slow memory) turns images into features; a small incremental
learner (fast memory) learns classes from a few examples, keeps no images, and merges with
other sites' learners.

Names are imported on first use (PEP 562), so ``import edgelearn.learners`` or
``edgelearn.knowledge`` needs numpy only, not PyTorch.
"""

from edgelearn.lazy import lazy_attributes

__version__ = "0.1.0"
_WHERE = {
    "EdgelearnError": "edgelearn.errors",
    "FuzzyArtmap": "edgelearn.learners",
    "NearestClassMean": "edgelearn.learners",
    "StreamingLDA": "edgelearn.learners",
    "make_learner": "edgelearn.learners",
    "Prediction": "edgelearn.recognizer",
    "Recognizer": "edgelearn.recognizer",
    "build_backbone": "edgelearn.backbones",
    "list_backbones": "edgelearn.backbones",
}
__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
