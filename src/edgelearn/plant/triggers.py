"""Which frames to decide on: every N-th, at most F per second, and only when the picture changed (a part
arrived). Frames that pass all the given rules are decided; an external trigger (MQTT, OPC UA, HTTP)
decides on the latest frame whatever the rules say (:meth:`Watcher.trigger`)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgelearn.errors import ParameterError

THUMBNAIL = (32, 32)  # small enough to ignore sensor noise and cost nothing, large enough to see a part


def thumbnail(image: Image.Image) -> np.ndarray:
    """A small grey copy of ``image`` (0..255) to compare frames by."""
    return np.asarray(image.convert("L").resize(THUMBNAIL, Image.Resampling.BOX), dtype=np.float32)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, in grey levels (0: the same, 255: black against white)."""
    return float(np.abs(a - b).mean())


class Triggers:
    """``every``: decide on every N-th frame; ``max_fps``: at most this many decisions per second (by the
    frames' capture times); ``on_change``: only when the frame differs from the last decided one by more
    than this many grey levels on average (0..255; a few for a part on a plain belt)."""

    def __init__(self, every: int = 1, max_fps: float | None = None, on_change: float | None = None):
        if every < 1:
            raise ParameterError(f"every must be 1 or more (every N-th frame), not {every}")
        if max_fps is not None and max_fps <= 0:
            raise ParameterError(f"max_fps must be above 0 frames per second, not {max_fps}")
        if on_change is not None and not 0 <= on_change < 255:
            raise ParameterError(f"on_change is a grey-level difference from 0 to 255, not {on_change}")
        self.every, self.max_fps, self.on_change = every, max_fps, on_change
        self._seen = 0
        self._last_time: float | None = None
        self._reference: np.ndarray | None = None

    def due(self, image: Image.Image, timestamp: float) -> bool:
        """Whether to decide on this frame (and remember it as the last decided one if so)."""
        self._seen += 1
        if (self._seen - 1) % self.every:
            return False
        if self.max_fps and self._last_time is not None and timestamp - self._last_time < 1 / self.max_fps:
            return False
        if self.on_change is not None:
            small = thumbnail(image)
            if self._reference is not None and difference(small, self._reference) <= self.on_change:
                return False
            self._reference = small
        self._last_time = timestamp
        return True
