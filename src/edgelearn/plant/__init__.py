"""Into the plant: fixed cameras and file drops in, decisions out over MQTT, OPC UA and webhooks.

A :class:`~edgelearn.plant.decision.Decision` is what one frame produced; a :class:`Sink` sends it on.
``sources`` reads frames (USB, video file, RTSP/HTTP stream, watched folder), ``triggers`` chooses which
frames to decide on, and ``watch`` ties them to a recognizer or a station (``edgelearn watch``,
``edgelearn serve --camera``).
"""

from edgelearn.plant.decision import Decision, Sink

__all__ = ["Decision", "Sink"]
