"""Frames from short videos: clips sorted into concept folders become a labelled image set.

The transparency paper's (Rieder et al., section 2) data acquisition: film each component from several
angles, sort the clips into folders named by concept, extract frames. Consecutive frames are nearly
identical, so a frame is kept only if its perceptual hash differs enough from every kept frame.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edgelearn.errors import DatasetError, ImageError, TooLargeError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MAX_FRAME_PIXELS = 40_000_000


def read_frames(path: str | os.PathLike, every: int = 10, max_frames: int | None = None,
                max_pixels: int = MAX_FRAME_PIXELS) -> Iterator[Image.Image]:
    """Every ``every``-th frame of a video as an RGB PIL image; a file OpenCV cannot decode, or whose
    frames are over ``max_pixels`` (checked from the header before decoding one), is an error."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ImageError(f"{path}: not a video we can read ({', '.join(VIDEO_SUFFIXES)})")
        _check_frame_size(path, capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT),
                          max_pixels)
        index = kept = 0
        while max_frames is None or kept < max_frames:
            ok = capture.grab()
            if not ok:
                break
            if index % every == 0:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    _check_frame_size(path, frame.shape[1], frame.shape[0], max_pixels)  # the header may lie
                    kept += 1
                    yield Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
        if index == 0:
            raise ImageError(f"{path}: no frame could be decoded (corrupt or empty video?)")
    finally:
        capture.release()


def _check_frame_size(path, width: float, height: float, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLargeError(f"{path}: frames of {int(width)}x{int(height)} pixels are more than the limit of "
                            f"{max_pixels:,}")


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """64 bits: which of the lowest 8x8 frequencies of a 32x32 grey copy lie above their median (ImageHash's
    phash, with OpenCV's DCT: the device install has no SciPy)."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS), np.float32)
    low = cv2.dct(grey)[:8, :8]
    return (low > np.median(low)).ravel()


def dedupe(frames, max_distance: int = 4) -> Iterator[Image.Image]:
    """Drop frames whose perceptual hash is within ``max_distance`` bits of a frame already kept."""
    kept: list[np.ndarray] = []
    for frame in frames:
        h = perceptual_hash(frame)
        if all(np.count_nonzero(h != k) > max_distance for k in kept):
            kept.append(h)
            yield frame


def extract_dataset(videos: str | os.PathLike, output: str | os.PathLike, *, every: int = 10,
                    max_distance: int | None = 4, quality: int = 92) -> dict[str, int]:
    """``videos/<concept path>/<clip>.mp4`` -> ``output/<concept path>/<clip>_<n>.jpg``.

    ``max_distance=None`` keeps every ``every``-th frame. Returns frames written per concept.
    """
    videos, output = Path(videos), Path(output)
    if not videos.is_dir():
        raise DatasetError(f"{videos}: no such folder")
    clips = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    clips = [c for c in clips if c.parent != videos]
    if not clips:
        raise DatasetError(f"{videos}: no videos in concept folders (expected <concept>/<clip>.mp4)")
    written: dict[str, int] = {}
    for clip in clips:
        concept = clip.parent.relative_to(videos).as_posix()
        target = output / concept
        target.mkdir(parents=True, exist_ok=True)
        frames = read_frames(clip, every)
        if max_distance is not None:
            frames = dedupe(frames, max_distance)
        for n, frame in enumerate(frames):
            frame.save(target / f"{clip.stem}_{n:05d}.jpg", quality=quality)
            written[concept] = written.get(concept, 0) + 1
    return written
