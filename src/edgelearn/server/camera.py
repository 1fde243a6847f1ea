"""The station's fixed camera (``edgelearn serve --camera``): a :class:`~edgelearn.plant.watch.Watcher` on a
thread of its own that decides through the station, so uncertain frames land in its labelling queue."""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING

from edgelearn.errors import ConflictError, NotFoundError
from edgelearn.plant import Decision, Sink

if TYPE_CHECKING:  # the plant's sources load OpenCV: only a station with a camera needs it
    from edgelearn.plant.sources import Frame, FrameSource
    from edgelearn.server.station import Station

STOP_WAIT = 10  # seconds the watcher may take to finish its decision at shutdown


class Camera:
    """``source`` (a :class:`FrameSource` or a spec for ``open_source``) read by a watcher that the app starts
    with its station (:meth:`start`) and stops at shutdown (:meth:`close`, which also closes ``sinks``)."""

    def __init__(self, source: FrameSource | str, sinks: list[Sink], *, station: str, every: int = 1,
                 max_fps: float | None = None, on_change: float | None = None):
        from edgelearn.plant.watch import Watcher

        self.station: Station | None = None
        self.watcher = Watcher(source, self._decide, sinks, station=station, every=every, max_fps=max_fps,
                               on_change=on_change, model_version=self._model_version)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.watcher.run, args=(self._stop,), name="camera", daemon=True)

    def start(self, station: Station) -> None:
        self.station = station
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT)
        else:
            self.watcher.source.close()  # never started: its reader thread still runs
        for sink in reversed(self.watcher.sinks):
            sink.close()

    @property
    def source(self) -> str:
        return self.watcher.source.name  # a stream's password never is part of it

    @property
    def frame(self) -> Frame | None:
        return self.watcher.latest.frame

    def trigger(self) -> Decision:
        """Decide on the latest frame now; ConflictError before the first frame."""
        try:
            return self.watcher.trigger()
        except NotFoundError as exc:
            raise ConflictError(str(exc)) from None

    def frame_jpeg(self) -> tuple[int, bytes]:
        """The latest frame's id and JPEG bytes; NotFoundError before the first frame."""
        frame = self.frame
        if frame is None:
            raise NotFoundError(f"no frame from {self.source} yet: is the camera connected?")
        data = io.BytesIO()
        frame.image.save(data, format="JPEG", quality=90)
        return frame.frame_id, data.getvalue()

    def _decide(self, image) -> dict:
        return self.station.predict(image, representatives=0, enqueue=True)

    def _model_version(self) -> int | None:
        return self.station.store.active_version if self.station else None
