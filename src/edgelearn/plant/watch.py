"""The headless station's loop: frames in, the triggers choose, ``decide`` answers, every sink hears it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import NamedTuple

from PIL import Image

from edgelearn.errors import NotFoundError
from edgelearn.plant.decision import Decision, Sink
from edgelearn.plant.sources import Frame, FrameSource, open_source
from edgelearn.plant.triggers import Triggers

log = logging.getLogger(__name__)


class Latest(NamedTuple):
    frame: Frame | None  # the last frame read
    decision: Decision | None  # the last decision (on that frame or an earlier one)


class Watcher:
    """Reads ``source`` (a :class:`FrameSource` or a spec for :func:`open_source`), decides on the frames
    the triggers let through with ``decide(image) -> prediction dict``, and publishes each
    :class:`Decision` to every sink. A failing sink is logged and never stops the others."""

    def __init__(self, source: FrameSource | str, decide: Callable[[Image.Image], dict], sinks: list[Sink], *,
                 station: str, every: int = 1, max_fps: float | None = None, on_change: float | None = None,
                 model_version: Callable[[], int | None] = lambda: None):
        self.triggers = Triggers(every, max_fps, on_change)
        self.source = open_source(source) if isinstance(source, str) else source
        self.decide, self.sinks, self.station, self.model_version = decide, list(sinks), station, model_version
        self._latest = Latest(None, None)
        self._read = self._decided = 0
        self._deciding = threading.Lock()  # the run loop and external triggers take turns with the model

    @property
    def latest(self) -> Latest:
        return self._latest

    @property
    def stats(self) -> dict:
        return {"read": self._read, "decided": self._decided, "dropped": self.source.dropped}

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set or the source ends (a video file read to its end); closes the source."""
        try:
            while not stop.is_set():
                frame = self.source.read(timeout=0.2)
                if frame is None:
                    if self.source.ended:
                        return
                    continue
                self._read += 1
                self._latest = Latest(frame, self._latest.decision)
                if self.triggers.due(frame.image, frame.timestamp):
                    self._decide_and_publish(frame)
        finally:
            self.source.close()

    def trigger(self) -> Decision:
        """Decide on the latest frame now (what an MQTT message, an OPC UA call or an HTTP POST asks)."""
        frame = self._latest.frame
        if frame is None:
            raise NotFoundError(f"no frame from {self.source.name} yet: is the camera connected?")
        return self._decide_and_publish(frame)

    def _decide_and_publish(self, frame: Frame) -> Decision:
        with self._deciding:
            decision = Decision.from_prediction(self.decide(frame.image), station=self.station,
                                                source=self.source.name, frame_id=frame.frame_id,
                                                timestamp=frame.timestamp, model_version=self.model_version())
            self._decided += 1
            self._latest = Latest(self._latest.frame, decision)
        for sink in self.sinks:
            try:
                sink.publish(decision)
            except Exception:  # whatever one output does wrong, the others still get the decision
                log.exception("%s could not take decision %d", type(sink).__name__, frame.frame_id)
        return decision
