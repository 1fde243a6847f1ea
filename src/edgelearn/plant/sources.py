"""Frames from a fixed camera: a USB index, a video file, an RTSP/HTTP (MJPEG) stream, or a folder that a
vision system drops image files into.

A reader thread fills a small queue. A live camera never waits for inference: when the queue is full the
oldest frame goes (and is counted in ``dropped``), so a decision is always on a recent frame. A file or a
folder is not live: its reader waits instead, and nothing is lost. A stream that drops is reopened with
exponential backoff, without restarting anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
from PIL import Image

from edgelearn.data.images import IMAGE_SUFFIXES, MAX_PIXELS, load_image
from edgelearn.errors import EdgelearnError, ImageError, ParameterError, TooLargeError

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # seconds between reconnection attempts
STREAM_TIMEOUT_MS = 5000  # FFmpeg's open and read timeouts: a dead camera is noticed, not waited on forever
FOLDER_POLL = 0.2  # seconds between looks into a watched folder


@dataclass(frozen=True)
class Frame:
    frame_id: int  # counts from 1 in the order frames were read
    timestamp: float  # capture time, Unix seconds
    image: Image.Image  # 8-bit RGB


class FrameSource:
    """A reader thread and a bounded queue of :class:`Frame`; :meth:`read` takes the oldest one."""

    live = True  # drop the oldest frame when full (a camera); False: the reader waits (a file, a folder)

    def __init__(self, name: str, *, queue_size: int = 2, max_pixels: int = MAX_PIXELS):
        self.name = name
        self.max_pixels = max_pixels
        self.dropped = 0
        self.ended = False  # the reader is done (a file read to its end, or an error); the queue may hold more
        self.error: EdgelearnError | None = None
        self._frames: deque[Frame] = deque(maxlen=queue_size)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._next_id = 1
        self._thread = threading.Thread(target=self._run, name=f"source {name}", daemon=True)

    def start(self) -> FrameSource:
        self._thread.start()
        return self

    def read(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame; None after ``timeout`` seconds without one, or once the source ended.
        A reader's error (a frame over the pixel budget, an unreadable file) is raised here."""
        with self._changed:
            self._changed.wait_for(lambda: self._frames or self.ended, timeout)
            if self._frames:
                frame = self._frames.popleft()
                self._changed.notify_all()
                return frame
            if self.error is not None:
                raise self.error
            return None

    def close(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STREAM_TIMEOUT_MS / 1000 + 1)

    def _put(self, image: Image.Image, timestamp: float | None = None) -> None:
        """Queue one frame: the oldest goes when a live source is full; others wait for room."""
        w, h = image.size
        if w * h > self.max_pixels:
            raise TooLargeError(f"{self.name}: frames of {w}x{h} pixels are more than the limit of "
                                f"{self.max_pixels:,}; lower the camera's resolution")
        frame = Frame(self._next_id, time.time() if timestamp is None else timestamp, image)
        self._next_id += 1
        with self._changed:
            if not self.live:
                self._changed.wait_for(lambda: len(self._frames) < self._frames.maxlen or self._stop.is_set())
            elif len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(frame)
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self._read_frames()
        except EdgelearnError as exc:
            log.error("%s", exc)
            self.error = exc
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def _read_frames(self) -> None:
        raise NotImplementedError


class CaptureSource(FrameSource):
    """OpenCV's VideoCapture (FFmpeg for files and URLs): a USB index, a stream URL, or a video file."""

    def __init__(self, target: int | str, name: str, *, loop: bool = False, **kwargs):
        super().__init__(name, **kwargs)
        self.target = target
        self.file = isinstance(target, str) and "://" not in target
        self.loop = loop
        self.live = not self.file or loop  # a looping file stands in for a camera: its frame rate, drops and all

    def _open(self) -> cv2.VideoCapture:
        if isinstance(self.target, int):
            return cv2.VideoCapture(self.target)
        return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                              cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])

    def _read_frames(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            got_any = self._read_until_it_ends(self._open())
            if self.file:
                if not got_any:
                    raise ImageError(f"{self.name}: not a video file we can read")
                if not self.loop:
                    return
                continue
            backoff = BACKOFF_FIRST if got_any else min(2 * backoff, BACKOFF_MAX)
            log.warning("%s: no frames, reconnecting in %.1f s", self.name, backoff)
            self._stop.wait(backoff)

    def _read_until_it_ends(self, capture: cv2.VideoCapture) -> bool:
        """Queue frames until the capture fails or ends; whether any frame came."""
        got_any = False
        period = 1 / (capture.get(cv2.CAP_PROP_FPS) or 25) if self.file and self.loop else 0
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, bgr = capture.read()
                if not ok:
                    return got_any
                got_any = True
                self._put(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
                due += period
                self._stop.wait(max(0.0, due - time.monotonic()))  # a looping file plays at its recorded rate
        finally:
            capture.release()
        return got_any


class FolderSource(FrameSource):
    """Image files that appear in a folder after it is opened, each once, oldest first. A file is read once
    its size has stayed the same between two looks (still being written otherwise); names starting with
    '.' and other suffixes are ignored, so a writer may also write ``.part`` files and rename them."""

    live = False

    def __init__(self, folder: Path, **kwargs):
        super().__init__(str(folder), **kwargs)
        self.folder = folder
        self._seen = set(self._images())  # files already there are not new
        self._sizes: dict[str, int] = {}
        self._failed: dict[str, int] = {}  # name -> size it could not be read at

    def _images(self) -> dict[str, os.stat_result]:
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise ImageError(f"{self.folder}: the folder cannot be read ({exc.strerror or exc})") from exc
        images = {}
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            with contextlib.suppress(OSError):  # removed or renamed since the listing: gone, not an error
                if entry.is_file():
                    images[entry.name] = entry.stat()
        return images

    def _read_frames(self) -> None:
        while not self._stop.wait(FOLDER_POLL):
            for name, stat in self._complete_new_files():
                try:
                    image = load_image(self.folder / name, max_pixels=self.max_pixels)
                except ImageError as exc:  # a writer that paused, or a bad file: the line goes on
                    log.error("skipped until it changes: %s", exc)
                    self._seen.discard(name)
                    self._failed[name] = stat.st_size
                    continue
                self._put(image, stat.st_mtime)

    def _complete_new_files(self) -> list[tuple[str, os.stat_result]]:
        """New files whose size did not change since the last look (and did since a failed read), in the
        order they were written."""
        images = self._images()
        self._seen &= images.keys()  # a name deleted and written again is new again
        self._failed = {n: size for n, size in self._failed.items() if n in images}
        sizes, self._sizes = self._sizes, {n: s.st_size for n, s in images.items() if n not in self._seen}
        done = [(n, s) for n, s in images.items() if n not in self._seen and sizes.get(n) == s.st_size > 0
                and self._failed.get(n) != s.st_size]
        self._seen.update(n for n, _ in done)
        return sorted(done, key=lambda item: (item[1].st_mtime_ns, item[0]))


def open_source(spec: str, *, loop: bool = False, queue_size: int = 2, max_pixels: int = MAX_PIXELS
                ) -> FrameSource:
    """Start reading ``spec``: a USB camera index ("0"), an rtsp:// or http(s):// URL, a video file, or a
    folder watched for new image files. ``loop``: play a video file as a camera would (at its recorded frame
    rate, dropping frames the model cannot keep up with) and start it again at its end."""
    options = {"queue_size": queue_size, "max_pixels": max_pixels}
    if spec.isdigit():
        return CaptureSource(int(spec), f"camera {spec}", **options).start()
    if "://" in spec:
        return CaptureSource(spec, without_password(spec), **options).start()
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, **options).start()
    if path.is_file():
        return CaptureSource(spec, spec, loop=loop, **options).start()
    raise ParameterError(f"{spec}: no such file or folder (a source is a camera index such as 0, an rtsp:// or "
                         "http:// URL, a video file or a folder)")


def without_password(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user@host/x``: a source's name goes into every decision."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
