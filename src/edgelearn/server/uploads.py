"""Turning uploads (images, zip archives of concept folders, short videos) into labelled images,
within size limits, with a clear message for anything we refuse."""

import io
import tempfile
import zipfile
from pathlib import PurePosixPath

from PIL import Image

from edgelearn.data.frames import VIDEO_SUFFIXES, dedupe, read_frames
from edgelearn.data.images import IMAGE_SUFFIXES, load_image
from edgelearn.errors import ImageError

MAX_ZIP_MEMBERS = 5_000
MAX_ZIP_UNPACKED = 1 * 2**30
MAX_VIDEO_FRAMES = 300


def kind_of(filename: str, data: bytes) -> str:
    """``image``, ``zip`` or ``video``, by content where it can tell, else by name."""
    suffix = PurePosixPath(filename or "").suffix.lower()
    if data[:4] == b"PK\x03\x04" or suffix == ".zip":
        return "zip"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "image"


def labelled_images(filename: str, data: bytes, label: str | None, *, every: int = 10,
                    max_pixels: int) -> list[tuple[Image.Image, str]]:
    """One upload -> ``[(image, label), ...]``. Zips take labels from their folders unless ``label``
    is given; images and videos need ``label``."""
    kind = kind_of(filename, data)
    if kind == "zip":
        return _from_zip(filename, data, label, max_pixels)
    if not label:
        raise ValueError(f"{filename}: give a label (a class name or concept path) for this upload")
    if kind == "video":
        return [(frame, label) for frame in _from_video(filename, data, every)]
    return [(load_image(data, name=filename, max_pixels=max_pixels), label)]


def _from_zip(filename: str, data: bytes, label: str | None, max_pixels: int) -> list[tuple[Image.Image, str]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ImageError(f"{filename}: not a readable zip archive ({exc})") from exc
    members = [m for m in archive.infolist() if not m.is_dir()
               and PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES
               and not PurePosixPath(m.filename).name.startswith(".")]
    if not members:
        raise ImageError(f"{filename}: the archive holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_ZIP_UNPACKED:
        raise ImageError(f"{filename}: too large (limits: {MAX_ZIP_MEMBERS} images, "
                         f"{MAX_ZIP_UNPACKED // 2**20} MiB unpacked)")
    out = []
    for m in members:
        path = PurePosixPath(m.filename)
        concept = label or "/".join(path.parts[:-1])
        if not concept:
            raise ValueError(f"{filename}: {m.filename} is not in a concept folder and no label was given")
        out.append((load_image(archive.read(m), name=f"{filename}:{m.filename}", max_pixels=max_pixels), concept))
    return out


def _from_video(filename: str, data: bytes, every: int) -> list[Image.Image]:
    suffix = PurePosixPath(filename).suffix.lower()
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:  # OpenCV reads videos from files only
        f.write(data)
        f.flush()
        try:
            frames = list(dedupe(read_frames(f.name, every, max_frames=MAX_VIDEO_FRAMES)))
        except ImageError as exc:
            raise ImageError(str(exc).replace(f.name, filename)) from None
    if not frames:
        raise ImageError(f"{filename}: no frames could be read")
    return frames
