"""THE way an image becomes a network's input: every path (features, heat maps, fine-tuning,
patches, distillation, detection) builds its transform here, so all of them agree.

torchvision's eval recipe: resize the short side, centre-crop, scale to [0, 1], normalise. Patches
are already cut to size and are only resized to the input if that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch only where a transform is built: the device install has none
    from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize_size``, centre-crop ``input_size``, normalise (torchvision eval)."""

    input_size: int = 224
    resize_size: int = 256  # torchvision's 256/224 ratio, kept at other input sizes
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_sidecar(cls, meta: dict) -> Preprocessing:
        """The preprocessing a classifier's sidecar records (no ``resize_size``: the input is not cropped)."""
        return cls(meta["input_size"], meta.get("resize_size", meta["input_size"]), tuple(meta["normalize_mean"]),
                   tuple(meta["normalize_std"]))

    def transform(self) -> T.Compose:
        """A whole image -> a normalised ``(3, input_size, input_size)`` tensor (what module A sees)."""
        from torchvision.transforms import v2 as T
        return T.Compose([T.ToImage(), T.Resize(self.resize_size, antialias=True), T.CenterCrop(self.input_size),
                          *self.normalise().transforms])

    def patch_transform(self) -> T.Compose:
        """A patch -> a normalised tensor at the input size (resized only if that differs)."""
        from torchvision.transforms import v2 as T
        return T.Compose([*self.pixels().transforms, *self.normalise().transforms])

    def train_transform(self) -> T.Compose:
        """A whole image -> a normalised tensor of a random crop (60-100 % of it), maybe mirrored: for fine-tuning."""
        from torchvision.transforms import v2 as T
        return T.Compose([T.ToImage(), T.RandomResizedCrop(self.input_size, scale=(0.6, 1.0), antialias=True),
                          T.RandomHorizontalFlip(), *self.normalise().transforms])

    def pixels(self) -> T.Compose:
        """A patch -> ``uint8`` pixels at the input size (held in memory; :meth:`normalise` them later)."""
        from torchvision.transforms import v2 as T
        return T.Compose([T.ToImage(), T.Resize((self.input_size, self.input_size), antialias=True)])

    def normalise(self) -> T.Compose:
        """``uint8`` pixels -> the normalised float tensor."""
        import torch
        from torchvision.transforms import v2 as T
        return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])

    def crop(self, image: Image.Image) -> Image.Image:
        """The part of ``image`` the network sees (resize + centre crop), as a picture (heat maps draw on it)."""
        w, h = image.size
        scale = self.resize_size / min(w, h)
        image = image.resize((max(round(w * scale), self.input_size), max(round(h * scale), self.input_size)),
                             Image.BILINEAR)
        left, top = (image.width - self.input_size) // 2, (image.height - self.input_size) // 2
        return image.crop((left, top, left + self.input_size, top + self.input_size))

    def array(self, image: Image.Image) -> np.ndarray:
        """:meth:`transform` with Pillow and numpy only (the device install has no torch): an RGB image -> the
        normalised ``(3, input_size, input_size)`` float32 array. Sizes, crop offsets and the float arithmetic
        follow torchvision's; Pillow's antialiased bilinear resize may differ from it by 1 in a few pixels."""
        w, h = image.size
        long = int(self.resize_size * max(w, h) / min(w, h))  # torchvision truncates the long side
        image = image.resize((self.resize_size, long) if w <= h else (long, self.resize_size), Image.BILINEAR)
        size = self.input_size
        top, left = int(round((image.height - size) / 2)), int(round((image.width - size) / 2))
        pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
        scaled = pixels * np.float32(1 / 255)
        return ((scaled - np.float32(self.mean)) / np.float32(self.std)).transpose(2, 0, 1)


def unit_square(size: int) -> T.Compose:
    """A picture -> a ``(3, size, size)`` tensor in [0, 1], aspect not kept: a detector's input (its
    trunk normalises inside the network, so the ONNX export takes plain pixels)."""
    import torch
    from torchvision.transforms import v2 as T
    return T.Compose([T.ToImage(), T.Resize((size, size), antialias=True), T.ToDtype(torch.float32, scale=True)])
