"""edgelearn: image recognition on edge devices that keeps learning after deployment.

A frozen pretrained backbone (slow memory) turns images into features; a small incremental
learner (fast memory) learns classes from a few examples, keeps no images, and merges with
other sites' learners.
"""

from edgelearn.backbones import build_backbone, list_backbones
from edgelearn.errors import EdgelearnError
from edgelearn.learners import FuzzyArtmap, NearestClassMean, StreamingLDA, make_learner
from edgelearn.recognizer import Prediction, Recognizer

__version__ = "0.1.0"
__all__ = ["EdgelearnError", "FuzzyArtmap", "NearestClassMean", "Prediction", "Recognizer", "StreamingLDA",
           "build_backbone", "list_backbones", "make_learner"]
