"""Data: safe image decoding, folder data sets with concept paths, incremental streams, feature cache."""

from edgelearn.data.cache import FeatureCache
from edgelearn.data.folders import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.data.streams import class_incremental_steps

__all__ = ["FeatureCache", "FolderDataset", "class_incremental_steps", "load_image"]
