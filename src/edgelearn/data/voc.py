"""Pascal VOC annotation files: one XML file of boxes per image (what detection trains on, and where
the inspection protocol's defect patches come from).

Layouts: ``ROOT/images`` + ``ROOT/annotations`` (NEU-DET, Kaggle) or VOC's own ``ROOT/JPEGImages``
+ ``ROOT/Annotations``. Boxes become 0-based ``(x1, y1, x2, y2)`` pixels (VOC counts from 1, its
maxima are inclusive), clipped to the image. Every problem names the file it was found in.
"""

import math
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from edgelearn.data.folders import FolderDataset
from edgelearn.data.images import IMAGE_SUFFIXES
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


def _layout(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    for images, annotations in LAYOUTS:
        if (root / annotations).is_dir():
            return (root / images if (root / images).is_dir() else root / annotations), root / annotations
    raise DatasetError(f"{root}: not a VOC folder (expected {LAYOUTS[0][0]}/ and {LAYOUTS[0][1]}/, "
                       f"or {LAYOUTS[1][0]}/ and {LAYOUTS[1][1]}/)")


DEFECT_FREE = "ok"  # the class of a picture without boxes (the inspection protocol's defect-free one)


def is_voc_folder(root: Path) -> bool:
    return any((root / annotations).is_dir() for _, annotations in LAYOUTS)


def read_voc_folder(root: str | os.PathLike) -> list[Annotation]:
    """Every annotation of a VOC folder, sorted by file name."""
    images, annotations = _layout(Path(root))
    xmls = sorted(annotations.glob("*.xml"))
    if not xmls:
        raise DatasetError(f"{annotations}: no .xml annotation files")
    return [parse_annotation(x, images) for x in xmls]


def defects(annotation: Annotation) -> tuple[str, list[tuple[int, int, int, int]]]:
    """A picture's main defect (the class its boxes cover most) and that class's boxes in whole pixels;
    ``ok`` and no boxes for a picture without any."""
    if not annotation.boxes:
        return DEFECT_FREE, []
    area = defaultdict(float)
    for (x1, y1, x2, y2), name in zip(annotation.boxes, annotation.names, strict=True):
        area[name] += (x2 - x1) * (y2 - y1)
    main = max(sorted(area), key=area.get)
    return main, [(math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]), math.ceil(b[3]))
                  for b, name in zip(annotation.boxes, annotation.names, strict=True) if name == main]


def labelled_splits(root: str | os.PathLike) -> tuple[FolderDataset, FolderDataset | None, dict[Path, list]]:
    """:meth:`FolderDataset.splits` that also reads VOC folders (the root, or its train/ and test/): each
    picture labelled by its main defect, and the boxes of that defect per training picture (none for
    class folders)."""
    root = Path(root).expanduser()
    train_root = root / "train" if (root / "train").is_dir() else root
    if not is_voc_folder(train_root):
        return *FolderDataset.splits(root), {}
    train, boxes = _labelled(train_root)
    test = _labelled(root / "test")[0] if train_root != root and (root / "test").is_dir() else None
    return train, test, boxes


def _labelled(root: Path) -> tuple[FolderDataset, dict[Path, list]]:
    found = {a.image: defects(a) for a in read_voc_folder(root)}
    return (FolderDataset(root, tuple(found), tuple(label for label, _ in found.values())),
            {path: boxes for path, (_, boxes) in found.items()})
