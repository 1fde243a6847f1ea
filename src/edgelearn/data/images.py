"""Decoding images safely: every failure names the file and says what is wrong.

Handles grayscale, palette, RGBA (composited on white), CMYK, 16-bit and float images and EXIF
orientation; refuses corrupt or truncated files, non-images, formats we do not document (EPS, PSD, ...:
their decoders never run) and decompression bombs, from the header, before decoding a pixel.
"""

import io
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgelearn.errors import ImageError, TooLargeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# image files we refuse rather than pass over: a data set holding them fails on them (or lists them, --skip-bad)
REFUSED_SUFFIXES = (".gif",)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")  # the only decoders we run: never EPS (Ghostscript) & co.
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
MAX_PIXELS = 40_000_000  # ~ a 7000x5700 photo; far above any camera frame we classify
MAX_BYTES = 100 * 2**20
_READABLE = "not an image file we can read (JPEG, PNG, BMP, TIFF, WebP)"

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image


def load_image(source: str | os.PathLike | bytes, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS, eight_bit_only: bool = False, fit: int | None = None) -> Image.Image:
    """Decode a file path or raw bytes into an 8-bit RGB PIL image, or raise :class:`ImageError`.

    Size, format and mode are checked from the header before any pixel is decoded (see
    :func:`open_image`). ``fit``: decode big images at a reduced size whose short side stays at least
    twice ``fit`` (JPEG: the decoder's own 1/2, 1/4 or 1/8 scale; others: a box reduction), enough
    for a network that resizes to ``fit`` and far cheaper than the full image.

    Examples
    --------
    >>> load_image(b"not an image", name="upload.jpg")
    Traceback (most recent call last):
    ...
    edgelearn.errors.ImageError: upload.jpg: not an image file we can read (JPEG, PNG, BMP, TIFF, WebP)
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    image = open_image(_read_bytes(source, label), name=label, max_pixels=max_pixels, eight_bit_only=eight_bit_only)
    if fit and image.format == "JPEG":
        image.draft(None, _at_least(image.size, 2 * fit))
    with _decoding_errors(label):
        image.load()
    image = to_rgb(ImageOps.exif_transpose(image))
    factor = min(image.size) // (2 * fit) if fit else 1
    return image.reduce(factor) if factor > 1 else image


def open_image(source: bytes | BinaryIO, *, name: str, max_pixels: int = MAX_PIXELS,
               eight_bit_only: bool = False) -> Image.Image:
    """Read an image's header only: one of the documented formats, at most ``max_pixels`` pixels and,
    with ``eight_bit_only``, 8 bits per channel; raise :class:`ImageError` (:class:`TooLargeError` for
    size) otherwise. Nothing is decoded yet."""
    with _decoding_errors(name):
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS)
    w, h = image.size
    if w * h > max_pixels:
        raise TooLargeError(f"{name}: {w}x{h} pixels is more than the limit of {max_pixels:,}")
    if eight_bit_only and image.mode not in EIGHT_BIT_MODES:
        raise ImageError(f"{name}: 16-bit or floating-point pixels (mode {image.mode}) are not accepted here; "
                         "save it as an 8-bit JPEG or PNG")
    return image


@contextmanager
def _decoding_errors(label: str):
    """Pillow's exceptions -> one :class:`ImageError` line naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"{label}: too many pixels (decompression bomb?)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: {_READABLE}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from exc


def _at_least(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so that its short side is ``short_side``."""
    scale = min(1.0, short_side / min(size))
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _read_bytes(source: str | os.PathLike | bytes, label: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        if path.stat().st_size > MAX_BYTES:
            raise TooLargeError(f"{label}: file is larger than {MAX_BYTES // 2**20} MiB")
        try:
            data = path.read_bytes()
        except OSError as exc:  # no permission, a disk error: the file's problem, said in one line
            raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageError(f"{label}: empty file")
    return data


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; 16-bit/float are rescaled by their range, alpha is put on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "P", "PA") and ("A" in image.mode or "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")
