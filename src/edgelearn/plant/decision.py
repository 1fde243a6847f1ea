"""One decision on one frame, as every output (MQTT, OPC UA, webhook, the page) sends it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Decision:
    """What the station decided on frame ``frame_id`` of ``source``.

    ``label`` is None when the image is unlike anything taught (``unknown``); ``top_k`` then starts with the
    closest class. ``timestamp`` is when the frame was captured (Unix seconds), ``decided_at`` when the
    decision was made: their difference is the latency a PLC sees before the message is sent.
    """

    station: str
    source: str
    frame_id: int
    timestamp: float
    label: str | None
    confidence: float
    unknown: bool
    top_k: list[dict]  # [{"label": ..., "confidence": ...}, ...]
    model_version: int | None = None
    decided_at: float = field(default_factory=time.time)

    @classmethod
    def from_prediction(cls, prediction: dict, *, station: str, source: str, frame_id: int, timestamp: float,
                        model_version: int | None = None) -> Decision:
        """From a station's answer or a ``Prediction.to_dict()``: label, confidence, unknown, alternatives."""
        return cls(station=station, source=source, frame_id=frame_id, timestamp=timestamp,
                   label=prediction.get("label"), confidence=float(prediction.get("confidence", 0.0)),
                   unknown=bool(prediction.get("unknown")),
                   top_k=[{"label": a["label"], "confidence": float(a["confidence"])}
                          for a in prediction.get("alternatives", [])],
                   model_version=model_version)

    def to_dict(self) -> dict:
        return asdict(self)


class Sink(Protocol):
    """Where decisions go. ``publish`` must return quickly (queue or buffer, never wait for a network);
    ``close`` flushes what it can and releases connections."""

    def publish(self, decision: Decision) -> None: ...

    def close(self) -> None: ...
