"""Turning uploads (images, zip archives of concept folders, short videos) into labelled images,
within size limits, with a clear message for anything we refuse.

Everything that can be checked without decoding pixels (labels, zip sizes, image headers against the
request's :class:`~edgelearn.server.limits.Budget`) is checked when :func:`labelled_images` is called;
the images themselves are decoded one at a time as the caller iterates, so memory stays flat.
"""

import io
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

from PIL import Image

from edgelearn.data.frames import VIDEO_SUFFIXES, dedupe, read_frames
from edgelearn.data.images import IMAGE_SUFFIXES, load_image, open_image
from edgelearn.errors import ImageError, LabelError, ParameterError, TooLargeError
from edgelearn.labels import check_label
from edgelearn.server.limits import Budget

MAX_ZIP_MEMBERS = 5_000
MAX_ZIP_UNPACKED = 1 * 2**30
MAX_MEMBER_BYTES = 20 * 2**20  # one image inside a zip
MAX_VIDEO_FRAMES = 300

Pairs = Iterator[tuple[Image.Image, str]]


def kind_of(filename: str, data: bytes) -> str:
    """``image``, ``zip`` or ``video``, by content where it can tell, else by name."""
    suffix = PurePosixPath(filename or "").suffix.lower()
    if data[:4] == b"PK\x03\x04" or suffix == ".zip":
        return "zip"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "image"


def labelled_images(filename: str, data: bytes, label: str | None, *, every: int = 10, max_pixels: int,
                    budget: Budget | None = None, fit: int | None = None) -> Pairs:
    """One upload -> ``(image, label)`` pairs, decoded lazily (8-bit images only; ``fit``: see
    :func:`~edgelearn.data.images.load_image`). Zips take labels from their folders unless ``label`` is
    given; images and videos need ``label``."""
    budget = budget or Budget()
    label = check_label(label) if label else None
    kind = kind_of(filename, data)
    if kind == "zip":
        return _from_zip(filename, data, label, max_pixels, budget, fit)
    if not label:
        raise ParameterError(f"{filename}: give a label (a class name or concept path) for this upload")
    if kind == "video":
        return ((frame, label) for frame in _from_video(filename, data, every, max_pixels, budget, fit))
    budget.spend(filename, _pixels(open_image(data, name=filename, max_pixels=max_pixels, eight_bit_only=True)))
    return iter([(load_image(data, name=filename, max_pixels=max_pixels, eight_bit_only=True, fit=fit), label)])


def _pixels(image: Image.Image) -> int:
    return image.size[0] * image.size[1]


def _from_zip(filename: str, data: bytes, label: str | None, max_pixels: int, budget: Budget,
              fit: int | None) -> Pairs:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ImageError(f"{filename}: not a readable zip archive ({exc})") from exc
    members = [m for m in archive.infolist() if not m.is_dir()
               and PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES
               and not PurePosixPath(m.filename).name.startswith(".")]
    if not members:
        raise ImageError(f"{filename}: the archive holds no images ({', '.join(IMAGE_SUFFIXES)})")
    # zipfile never unpacks more than a member's declared size (and checks its CRC), so the declared
    # sizes bound what reading costs, whatever the compression ratio
    if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_ZIP_UNPACKED:
        raise TooLargeError(f"{filename}: too large (limits: {MAX_ZIP_MEMBERS} images, "
                            f"{MAX_ZIP_UNPACKED // 2**20} MiB unpacked)")
    labels = [_member_label(filename, m, label) for m in members]
    for m in members:  # headers only: a request over budget is refused before any pixel is decoded
        name = f"{filename}:{m.filename}"
        if m.file_size > MAX_MEMBER_BYTES:
            raise TooLargeError(f"{name}: larger than {MAX_MEMBER_BYTES // 2**20} MiB")
        with _unpacking(name, m), archive.open(m) as member:
            budget.spend(name, _pixels(open_image(member, name=name, max_pixels=max_pixels, eight_bit_only=True)))
    return _decode_members(filename, archive, members, labels, max_pixels, fit)


def _decode_members(filename, archive, members, labels, max_pixels, fit) -> Pairs:
    for m, concept in zip(members, labels, strict=True):
        name = f"{filename}:{m.filename}"
        with _unpacking(name, m):
            data = archive.read(m)
        yield load_image(data, name=name, max_pixels=max_pixels, eight_bit_only=True, fit=fit), concept


@contextmanager
def _unpacking(name: str, member: zipfile.ZipInfo):
    """zipfile's errors (damaged, encrypted, unknown compression) -> one :class:`ImageError` line."""
    if member.flag_bits & 0x1:
        raise ImageError(f"{name}: encrypted; send the images without a password")
    try:
        yield
    except (zipfile.BadZipFile, NotImplementedError, EOFError) as exc:
        raise ImageError(f"{name}: cannot be unpacked ({exc})") from None


def _member_label(filename: str, member: zipfile.ZipInfo, label: str | None) -> str:
    """The given label, else the member's folder, which must pass the label rule."""
    if label:
        return label
    folder = member.filename.rpartition("/")[0]  # as written: the rule sees '.', '..' and empty levels
    if not folder:
        raise ParameterError(f"{filename}: {member.filename} is not in a concept folder and no label was given")
    try:
        return check_label(folder)
    except LabelError as exc:
        raise LabelError(f"{filename}: {member.filename}: {exc}") from None


def _from_video(filename: str, data: bytes, every: int, max_pixels: int, budget: Budget,
                fit: int | None) -> Iterator[Image.Image]:
    suffix = PurePosixPath(filename).suffix.lower()
    kept = 0
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:  # OpenCV reads videos from files only
        f.write(data)
        f.flush()
        try:
            frames = read_frames(f.name, every, max_frames=MAX_VIDEO_FRAMES, max_pixels=max_pixels)
            for frame in dedupe(_charged(frames, filename, budget)):
                kept += 1
                factor = min(frame.size) // (2 * fit) if fit else 1
                yield frame.reduce(factor) if factor > 1 else frame
        except ImageError as exc:
            raise type(exc)(str(exc).replace(f.name, filename)) from None
    if not kept:
        raise ImageError(f"{filename}: no frames could be read")


def _charged(frames: Iterator[Image.Image], filename: str, budget: Budget) -> Iterator[Image.Image]:
    """Every decoded frame counts against the budget, duplicates too: decoding is the cost."""
    for n, frame in enumerate(frames, 1):
        budget.spend(f"{filename}: frame {n}", _pixels(frame))
        yield frame
