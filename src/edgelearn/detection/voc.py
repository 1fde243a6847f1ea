"""Pascal VOC detection data from folders: images and one XML file of boxes per image, as torchvision's
detectors take them (the files are read by :mod:`edgelearn.data.voc`, which says the layouts)."""

import os
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from edgelearn.data.images import load_image
from edgelearn.data.voc import LAYOUTS, Annotation, parse_annotation, read_voc_folder
from edgelearn.errors import DatasetError

__all__ = ["LAYOUTS", "Annotation", "VOCDataset", "collate", "parse_annotation"]

class VOCDataset(Dataset):
    """A VOC folder as ``(image, target)`` pairs for torchvision detectors.

    ``image`` is a ``tv_tensors.Image`` (uint8, 3 x H x W); ``target`` holds ``boxes``
    (``tv_tensors.BoundingBoxes``, XYXY pixels) and ``labels`` (1..K; 0 is the background).
    ``classes`` fixes the label order (a detector's classes); by default the sorted names found.
    Objects of classes outside ``classes`` are refused, unless ``ignore_other_classes`` drops them.
    """

    def __init__(self, root: str | os.PathLike, *, classes: list[str] | None = None, transforms=None,
                 ignore_other_classes: bool = False):
        self.root = Path(root)
        self.annotations = read_voc_folder(self.root)
        found = sorted({n for a in self.annotations for n in a.names})
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown and not ignore_other_classes:
            raise DatasetError(f"{self.root}: classes {', '.join(unknown)} are not among {', '.join(self.classes)}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.annotations)

    @property
    def labels(self) -> list[str]:
        """One class per image (its rarest, for class-balanced sampling); '' for an image without objects."""
        counts = Counter(n for a in self.annotations for n in a.names)
        return [min(a.names, key=lambda n: (counts[n], n)) if a.names else "" for a in self.annotations]

    def target(self, i: int) -> dict:
        a = self.annotations[i]
        keep = [k for k, n in enumerate(a.names) if n in self.classes]
        boxes = torch.tensor([a.boxes[k] for k in keep], dtype=torch.float32).reshape(-1, 4)
        return {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(a.height, a.width)),
                "labels": torch.tensor([self.classes.index(a.names[k]) + 1 for k in keep], dtype=torch.int64)}

    def __getitem__(self, i: int):
        a = self.annotations[i]
        picture = load_image(a.image)
        if picture.size != (a.width, a.height):
            raise DatasetError(f"{a.image}: {picture.size[0]}x{picture.size[1]} pixels, its annotation "
                               f"says {a.width}x{a.height}")
        image, target = tv_tensors.Image(F.pil_to_tensor(picture)), self.target(i)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def subset_classes(self, names: list[str]) -> list[int]:
        """Indices of the images that show at least one object of ``names``."""
        return [i for i, a in enumerate(self.annotations) if set(a.names) & set(names)]


def collate(batch):
    """Images (or feature tuples) and targets as lists: boxes differ in number per image."""
    return tuple(zip(*batch, strict=True))
