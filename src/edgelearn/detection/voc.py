"""Pascal VOC detection data from folders: images and one XML file of boxes per image.

Layouts: ``ROOT/images`` + ``ROOT/annotations`` (NEU-DET, Kaggle) or VOC's own ``ROOT/JPEGImages``
+ ``ROOT/Annotations``. Boxes become 0-based ``(x1, y1, x2, y2)`` pixels (VOC counts from 1, its
maxima are inclusive), clipped to the image. Every problem names the file it was found in.
"""

import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from edgelearn.data.images import IMAGE_SUFFIXES, load_image
from edgelearn.errors import DatasetError

LAYOUTS = (("images", "annotations"), ("JPEGImages", "Annotations"))


@dataclass(frozen=True)
class Annotation:
    """One image's objects: ``boxes`` as (x1, y1, x2, y2) pixels, ``names`` their classes."""
    image: Path
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    names: list[str]


def parse_annotation(xml_path: str | os.PathLike, images: Path | None = None) -> Annotation:
    """Read one VOC XML file; a malformed file raises :class:`DatasetError` naming it."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
        width, height = (int(float(root.findtext(f"size/{k}"))) for k in ("width", "height"))
        boxes, names = [], []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            if not name:
                raise ValueError("an object has no <name>")
            box = (max(x1 - 1, 0.0), max(y1 - 1, 0.0), min(x2, width), min(y2, height))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"empty box {x1:g},{y1:g},{x2:g},{y2:g} for {name!r}")
            boxes.append(box)
            names.append(name)
    except ET.ParseError as exc:
        raise DatasetError(f"{xml_path}: not valid XML ({exc})") from exc
    except (TypeError, ValueError) as exc:  # a missing tag gives None -> TypeError
        raise DatasetError(f"{xml_path}: not a Pascal VOC annotation ({exc or 'a size or box is missing'})") from exc
    if width <= 0 or height <= 0:
        raise DatasetError(f"{xml_path}: image size {width}x{height} is not positive")
    return Annotation(_image_for(xml_path, root.findtext("filename"), images), width, height, boxes, names)


def _image_for(xml_path: Path, filename: str | None, images: Path | None) -> Path:
    folder = images or xml_path.parent
    candidates = [folder / filename] if filename else []
    candidates += [folder / (xml_path.stem + suffix) for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{xml_path}: its image {filename or xml_path.stem} is not in {folder}")


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
        images, annotations = _layout(self.root)
        xmls = sorted(annotations.glob("*.xml"))
        if not xmls:
            raise DatasetError(f"{annotations}: no .xml annotation files")
        self.annotations = [parse_annotation(x, images) for x in xmls]
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


def _layout(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    for images, annotations in LAYOUTS:
        if (root / annotations).is_dir():
            return (root / images if (root / images).is_dir() else root / annotations), root / annotations
    raise DatasetError(f"{root}: not a VOC folder (expected {LAYOUTS[0][0]}/ and {LAYOUTS[0][1]}/, "
                       f"or {LAYOUTS[1][0]}/ and {LAYOUTS[1][1]}/)")


def collate(batch):
    """Images (or feature tuples) and targets as lists: boxes differ in number per image."""
    return tuple(zip(*batch, strict=True))
