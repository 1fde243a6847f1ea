"""The shapes of the API's JSON answers, for ``/docs`` and for checking what the station returns.

Every model keeps keys it does not name (``extra="allow"``): a key the station adds reaches clients
instead of being dropped. Routes whose model has optional keys use ``response_model_exclude_unset``,
so a key the station leaves out stays out (no ``null`` appears)."""

from typing import Any

from pydantic import BaseModel, ConfigDict


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- recognize ----------------------------------------------------------------------------------------
class Alternative(Answer):
    label: str
    confidence: float


class Representative(Answer):
    label: str
    thumbnail: int  # GET /api/thumbnails/{thumbnail}
    distance: float


class PredictAnswer(Answer):
    label: str | None  # null: unknown; then the alternatives start with the closest class
    confidence: float
    alternatives: list[Alternative]
    known_classes: int
    unknown: bool | None = None  # unlike anything taught (familiarity below the learned threshold)
    familiarity: float | None = None  # how much the image looks like what was taught (higher: more)
    representatives: list[Representative]
    heatmap: str | None = None  # a PNG data URL, when asked for
    message: str | None = None  # why there is no answer (nothing learned yet)


# -- learn and knowledge ------------------------------------------------------------------------------
class LearnAnswer(Answer):
    events: list[int]  # the feedback log's new entries
    classes: list[str]
    learned: int


class KnowledgeAnswer(Answer):
    version: int  # the new version
    classes: list[str]
    examples: int


class ImportAnswer(Answer):
    version: int
    site: str  # whose knowledge was merged
    classes: list[str]
    examples: int


class TagAnswer(Answer):
    version: int
    tag: str


class Version(Answer):
    id: int
    created_at: str
    reason: str
    parent: int | None
    user: str | None
    site: str | None
    classes: int
    examples: int
    bytes: int | None  # null once pruned
    tag: str | None
    pruned_at: str | None


class VersionsAnswer(Answer):
    active: int | None
    versions: list[Version]  # newest first


class Concept(Answer):
    path: str
    parent: str | None
    created_at: str


class ConceptsAnswer(Answer):
    concepts: list[Concept]


# -- queue --------------------------------------------------------------------------------------------
class QueueItem(Answer):
    id: int
    created_at: str
    predicted: str | None
    confidence: float | None
    status: str
    label: str | None
    feature_hash: str
    has_image: int  # 0 or 1


class QueueAnswer(Answer):
    items: list[QueueItem]  # least confident first


class LabelAnswer(Answer):
    """Empty when the item was dismissed."""

    events: list[int] | None = None
    classes: list[str] | None = None


# -- status -------------------------------------------------------------------------------------------
class LiveCalibration(Answer):
    n: int  # predictions people confirmed or corrected
    accuracy: float | None
    ece: float | None  # expected calibration error


class Calibration(Answer):
    n: int  # held-out examples seen
    needed: int  # before the certainty is calibrated
    calibrated: bool


class StatusAnswer(Answer):
    classes: list[str]
    examples: int
    learner: str
    learner_bytes: int
    representations: int
    temperature: float
    backbone: dict[str, Any]  # what must match for knowledge to be exchanged
    active_version: int | None
    events: int
    open_queue: int
    live_calibration: LiveCalibration
    calibration: Calibration | None = None
    familiarity_threshold: float | None = None  # below it an image is unknown (null: too few examples yet)
    config: dict[str, Any] | None = None  # only with a token


class Event(Answer):
    id: int
    created_at: str
    user: str | None
    kind: str
    label: str
    predicted: str | None
    confidence: float | None
    base_version: int
    feature_hash: str
    has_image: int  # 0 or 1


class EventsAnswer(Answer):
    events: list[Event]  # newest first


# -- classes ------------------------------------------------------------------------------------------
class ClassCard(Answer):
    name: str
    examples: int
    thumbnails: list[int]  # GET /api/thumbnails/{id}; empty unless the station keeps images
    few: bool  # fewer than 5 examples: teach more


class ClassesAnswer(Answer):
    classes: list[ClassCard]


class ClassChangeAnswer(Answer):
    version: int  # the new version
    classes: list[str]


class Undone(Answer):
    kind: str  # teach, confirm, correct or label
    label: str
    examples: int
    user: str | None


class UndoAnswer(ClassChangeAnswer):
    undone: Undone


class TokenAnswer(Answer):
    access: str  # write, read or none


# -- camera -------------------------------------------------------------------------------------------
class DecisionAnswer(Answer):
    """One decision on one frame, as MQTT, OPC UA and webhooks send it."""

    station: str
    source: str
    frame_id: int
    timestamp: float  # capture time, Unix seconds
    label: str | None  # null: unknown; top_k then starts with the closest class
    confidence: float
    unknown: bool
    top_k: list[Alternative]
    model_version: int | None
    decided_at: float


class CameraStats(Answer):
    read: int
    decided: int
    dropped: int  # frames the camera sent faster than they could be read


class CameraAnswer(Answer):
    source: str  # never with a stream's password
    stats: CameraStats
    frame_id: int | None  # the latest frame (GET /api/camera/frame); null before the first
    decision: DecisionAnswer | None  # the latest decision; null before the first
