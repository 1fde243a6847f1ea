"""SSD's data augmentation (Liu et al. 2016, as in Mottakin's thesis) with ``torchvision.transforms.v2``:
photometric distortion, expand (zoom out on the mean colour), random IoU crop, mirror, resize.
Boxes follow every step; boxes cropped to nothing are dropped with their labels."""

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

MEAN_PIXEL = (124, 116, 104)  # ImageNet's mean colour: what the expanded canvas is filled with


def ssd_augmentation(size: int) -> T.Compose:
    """Training transform: an image and its target -> a ``size`` x ``size`` float image in [0, 1]."""
    return T.Compose([
        T.RandomPhotometricDistort(p=0.5),
        T.RandomZoomOut(fill={tv_tensors.Image: MEAN_PIXEL, "others": 0}, side_range=(1.0, 2.0), p=0.5),
        T.RandomIoUCrop(),
        T.RandomHorizontalFlip(p=0.5),
        *resize(size).transforms,
    ])


def mirror(size: int) -> T.Compose:
    """The image mirrored, resized: the cheapest extra view."""
    return T.Compose([T.RandomHorizontalFlip(p=1.0), *resize(size).transforms])


def resize(size: int) -> T.Compose:
    """Evaluation transform: stretch to ``size`` x ``size`` (SSD's fixed input), scale to [0, 1]."""
    return T.Compose([T.Resize((size, size), antialias=True), T.ClampBoundingBoxes(),
                      T.SanitizeBoundingBoxes(min_size=1.0), T.ToDtype(torch.float32, scale=True)])
