"""Decoding images safely: every failure names the file and says what is wrong.

Handles grayscale, palette, RGBA (composited on white), CMYK, 16-bit and float images and EXIF
orientation; refuses corrupt or truncated files, non-images and decompression bombs.
"""

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgelearn.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 40_000_000  # ~ a 7000x5700 photo; far above any camera frame we classify
MAX_BYTES = 100 * 2**20

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image


def load_image(source: str | os.PathLike | bytes, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a file path or raw bytes into an 8-bit RGB PIL image, or raise :class:`ImageError`.

    Examples
    --------
    >>> load_image(b"not an image", name="upload.jpg")
    Traceback (most recent call last):
    ...
    edgelearn.errors.ImageError: upload.jpg: not an image file we can read (JPEG, PNG, BMP, TIFF, WebP)
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = _read_bytes(source, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            if w * h > max_pixels:
                raise ImageError(f"{label}: {w}x{h} pixels is more than the limit of {max_pixels:,}")
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(f"{label}: not an image file we can read (JPEG, PNG, BMP, TIFF, WebP)") from exc
        raise ImageError(f"{label}: too many pixels (decompression bomb?)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from exc
    return to_rgb(ImageOps.exif_transpose(image))


def _read_bytes(source: str | os.PathLike | bytes, label: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"{label}: file is larger than {MAX_BYTES // 2**20} MiB")
        data = path.read_bytes()
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
