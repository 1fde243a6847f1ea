"""Folder data sets: labels from folder names, nested folders = a concept hierarchy.

Layout: ``root/<class>/<sub...>/*.jpg``; an image's label is the path of its folder relative to
the split root (``car/interior/steering_wheel``). A root with ``train/`` and ``test/`` holds splits.
"""

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelearn.data.images import IMAGE_SUFFIXES, REFUSED_SUFFIXES
from edgelearn.errors import DatasetError, LabelError
from edgelearn.labels import check_label

SPLITS = ("train", "test")


@dataclass(frozen=True)
class FolderDataset:
    """The image files of one split and their concept-path labels (sorted, deterministic).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for p in ["car/wheel/a.png", "car/seat/b.jpg", "bike/c.jpg"]:
    ...     (root / p).parent.mkdir(parents=True, exist_ok=True); _ = (root / p).write_bytes(b"")
    >>> ds = FolderDataset.scan(root)
    >>> ds.labels
    ('bike', 'car/seat', 'car/wheel')
    >>> ds.classes
    ['bike', 'car/seat', 'car/wheel']
    """

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]

    @classmethod
    def scan(cls, root: str | Path, split: str | None = None) -> "FolderDataset":
        """Read ``root`` (or ``root/split`` when given and present) into a data set."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data set folder not found: {root}")
        if split is not None:
            if not (root / split).is_dir():
                raise DatasetError(f"{root} has no {split}/ folder")
            root = root / split
        paths = sorted(_image_files(root))
        labels = [p.parent.relative_to(root).as_posix() for p in paths]
        if not paths:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
        if "." in labels:
            raise DatasetError(f"{root} has images directly inside it; put each class in its own folder")
        return cls(root, tuple(paths), tuple(_class_labels(root, labels)))

    @staticmethod
    def splits(root: str | Path) -> tuple["FolderDataset", "FolderDataset | None"]:
        """``(train, test)`` of a root with ``train/`` (``test`` None without ``test/``); ``(all, None)`` for a
        root of class folders. A root with ``test/`` alone has nothing to train on and is refused."""
        root = Path(root).expanduser()
        if (root / "train").is_dir():
            test = FolderDataset.scan(root, "test") if (root / "test").is_dir() else None
            return FolderDataset.scan(root, "train"), test
        if (root / "test").is_dir():
            raise DatasetError(f"{root} has a test/ folder but no train/ folder: put the images to learn from "
                               f"in {root / 'train'}")
        return FolderDataset.scan(root), None

    @staticmethod
    def test_split(root: str | Path) -> "FolderDataset":
        """The images to evaluate on: ``root/test`` when there is one (with or without ``train/``), else
        all of ``root`` (so ``test`` is never read as a class)."""
        root = Path(root).expanduser()
        return FolderDataset.scan(root, "test") if (root / "test").is_dir() else FolderDataset.scan(root)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, indices) -> "FolderDataset":
        return FolderDataset(self.root, tuple(self.paths[i] for i in indices),
                             tuple(self.labels[i] for i in indices))

    def __len__(self) -> int:
        return len(self.paths)

    def sample_per_class(self, k: int | None, seed: int = 0) -> "FolderDataset":
        """At most ``k`` images per class, drawn with ``seed`` (all when ``k`` is None)."""
        if k is None:
            return self
        rng = np.random.default_rng(seed)
        labels = np.array(self.labels)
        chosen = []
        for c in self.classes:
            members = np.flatnonzero(labels == c)
            chosen.extend(rng.choice(members, min(k, len(members)), replace=False))
        return self.subset(sorted(chosen))


def _class_labels(root: Path, labels: list[str]) -> list[str]:
    """Folder names -> labels by the project's one label rule; a folder that breaks it is named."""
    checked = {}
    for label in dict.fromkeys(labels):
        try:
            checked[label] = check_label(label)
        except LabelError as exc:
            raise DatasetError(f"class folder {root / label}: {exc} (rename the folder)") from None
    return [checked[label] for label in labels]


def _image_files(root: Path):
    """The image files under ``root``, through symlinked folders too (as torchvision's ImageFolder), each real
    folder once (a link back up cannot loop); hidden files and folders are left out. A refused format is
    included, so that it is refused by name instead of passed over."""
    seen = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES + REFUSED_SUFFIXES \
                    and path.is_file():
                yield path
