"""What one request may cost: pixels per image, pixels and images per teaching request, and how many
images the station decodes at once. Over a limit is a 413 and no slot free soon is a 429, at once:
never a slow death by memory or CPU."""

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edgelearn.errors import BusyError, TooLargeError

IMAGE_PIXELS = 12_000_000  # a 12-Mpixel camera frame; the network sees a few hundred pixels a side anyway
REQUEST_PIXELS = 200_000_000
REQUEST_IMAGES = 2_000
DECODE_SLOTS = 3
PREDICT_WAIT_S = 1.5  # a prediction is worth little late: answer 429 rather than queue
LEARN_WAIT_S = 10.0  # teaching is rarer and authenticated: it may wait for a slot a little longer


@dataclass(frozen=True)
class Limits:
    image_pixels: int = IMAGE_PIXELS
    request_pixels: int = REQUEST_PIXELS
    request_images: int = REQUEST_IMAGES
    decode_slots: int = DECODE_SLOTS


class Budget:
    """The images and pixels one teaching request has left, spent from each image's header before it
    is decoded."""

    def __init__(self, max_pixels: int = REQUEST_PIXELS, max_images: int = REQUEST_IMAGES):
        self.max_pixels, self.max_images = max_pixels, max_images
        self.pixels = self.images = 0

    def spend(self, name: str, pixels: int) -> None:
        self.pixels += pixels
        self.images += 1
        if self.images > self.max_images:
            raise TooLargeError(f"{name}: more than {self.max_images:,} images in one request; "
                                "send them in several requests")
        if self.pixels > self.max_pixels:
            raise TooLargeError(f"{name}: the images of this request hold more than {self.max_pixels / 1e6:g} "
                                "million pixels in all; send them in several requests")


class DecodeSlots:
    """At most ``n`` images decode at once, shared by predictions and teaching."""

    def __init__(self, n: int = DECODE_SLOTS):
        self._slots = threading.BoundedSemaphore(n)

    @contextmanager
    def __call__(self, wait: float = PREDICT_WAIT_S):
        if not self._slots.acquire(timeout=wait):
            raise BusyError("the station is busy decoding other images; try again in a moment")
        try:
            yield
        finally:
            self._slots.release()

    def each(self, items: Iterable, wait: float = LEARN_WAIT_S) -> Iterator:
        """``items``, each one produced (decoded) while holding a slot."""
        items = iter(items)
        while True:
            with self(wait):
                item = next(items, _END)
            if item is _END:
                return
            yield item


_END = object()
