"""Patches of an image (Kim, Noh and Park's inspection protocol).

Training sees one patch per image and epoch (for a defective image one that contains the defect,
when its box is known); testing covers the whole image with a grid of overlapping patches, so a
defect is seen wherever it lies. Images smaller than a patch are first enlarged to the patch size.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from edgelearn.data.images import load_image
from edgelearn.errors import ParameterError

Box = tuple[int, int, int, int]  # left, top, right, bottom (pixels, right/bottom exclusive)


@dataclass(frozen=True)
class PatchGrid:
    """Square patches of ``size`` pixels; ``grid`` x ``grid`` of them, evenly spaced, cover an image.

    Examples
    --------
    >>> PatchGrid(128, 3).boxes(200, 200)[:3]
    [(0, 0, 128, 128), (36, 0, 164, 128), (72, 0, 200, 128)]
    """

    size: int
    grid: int = 3

    def __post_init__(self):
        if self.size < 1 or self.grid < 1:
            raise ParameterError(f"patch size and grid must be at least 1, got {self.size} and {self.grid}")

    def fit(self, image: Image.Image) -> Image.Image:
        """The image, enlarged (aspect kept) if a side is shorter than a patch."""
        short = min(image.size)
        if short >= self.size:
            return image
        scale = self.size / short
        return image.resize((max(self.size, math.ceil(image.width * scale)),
                             max(self.size, math.ceil(image.height * scale))), Image.Resampling.BILINEAR)

    def boxes(self, width: int, height: int) -> list[Box]:
        """The test patches of a ``width`` x ``height`` image, row by row; they cover every pixel."""
        if min(width, height) < self.size:
            raise ParameterError(f"a {width}x{height} image is smaller than a {self.size}-pixel patch; fit() it first")
        if self.grid > 1 and max(width, height) > self.grid * self.size:
            raise ParameterError(f"{self.grid}x{self.grid} patches of {self.size} px leave gaps in a "
                             f"{width}x{height} image; use a larger patch or grid")
        xs = self._starts(width)
        ys = self._starts(height)
        return [(x, y, x + self.size, y + self.size) for y in ys for x in xs]

    def _starts(self, length: int) -> list[int]:
        if self.grid == 1:
            return [(length - self.size) // 2]
        return [round(v) for v in np.linspace(0, length - self.size, self.grid)]

    def crops(self, image: Image.Image) -> list[Image.Image]:
        image = self.fit(image)
        return [image.crop(box) for box in self.boxes(*image.size)]

    def random_box(self, width: int, height: int, generator: torch.Generator | None = None,
                   containing: Box | None = None) -> Box:
        """A random patch position; with ``containing``, one that holds that box (or, for a box
        larger than a patch, its centre)."""
        x = self._random_start(width, containing and (containing[0], containing[2]), generator)
        y = self._random_start(height, containing and (containing[1], containing[3]), generator)
        return x, y, x + self.size, y + self.size

    def _random_start(self, length: int, span: tuple[int, int] | None, generator) -> int:
        low, high = 0, length - self.size
        if span is not None:
            a, b = span
            if b - a > self.size:
                a = b = (a + b) // 2
            low, high = max(low, b - self.size), min(high, a)
            low, high = min(low, high), max(low, high)
        return int(torch.randint(low, high + 1, (), generator=generator))


def augment(patch: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
    """One of the eight flips/right-angle rotations, at random (the paper's rotated and flipped patches)."""
    k = int(torch.randint(0, 8, (), generator=generator))
    if k >= 4:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return patch.rotate(90 * (k % 4)) if k % 4 else patch


class RandomPatches(Dataset):
    """One random patch per image per draw (training); ``boxes[i]`` (optional) holds image i's defect, or
    a list of its defects (each draw holds one of them, at random)."""

    def __init__(self, paths: Sequence, targets: Sequence[int], grid: PatchGrid, transform,
                 boxes: Sequence[Box | list[Box] | None] | None = None, augmented: bool = False):
        self.paths, self.targets, self.grid, self.transform = list(paths), list(targets), grid, transform
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        self.augmented = augmented

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        image = load_image(self.paths[i])
        fitted = self.grid.fit(image)
        box = self.boxes[i]
        if isinstance(box, list):
            box = box[int(torch.randint(len(box), ()))] if box else None
        if box is not None and fitted.size != image.size:
            sx, sy = fitted.width / image.width, fitted.height / image.height
            box = (int(box[0] * sx), int(box[1] * sy), math.ceil(box[2] * sx), math.ceil(box[3] * sy))
        patch = fitted.crop(self.grid.random_box(*fitted.size, containing=box))
        if self.augmented:
            patch = augment(patch)
        return self.transform(patch), self.targets[i]


class GridPatches(Dataset):
    """Every test patch of every image, each with its image's label (patch-level validation)."""

    def __init__(self, paths: Sequence, targets: Sequence[int], grid: PatchGrid, transform):
        self.paths, self.targets, self.grid, self.transform = list(paths), list(targets), grid, transform
        self.per_image = grid.grid ** 2

    def __len__(self) -> int:
        return len(self.paths) * self.per_image

    def __getitem__(self, k):
        i, j = divmod(k, self.per_image)
        return self.transform(self.grid.crops(load_image(self.paths[i]))[j]), self.targets[i]
