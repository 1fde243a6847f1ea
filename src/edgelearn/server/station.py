"""A station: one recognizer, its SQLite store and its explanations, safe to use from many threads.

Learning is serialised (one writer: store commit, then learner update, then a frozen snapshot of
the new knowledge is published); predictions run concurrently on the latest snapshot, without a
lock, so they never wait for learning (an SLDA update re-solves a 1280 x 1280 system).
The learner is never saved by itself: on start it is rebuilt as ``active version + events``.
"""

import base64
import hashlib
import io
import itertools
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgelearn.backbones import build_backbone, default_weights
from edgelearn.data.images import to_rgb
from edgelearn.errors import ConflictError, EdgelearnError, ImageError, NearDuplicateError, SignatureError
from edgelearn.explain import HeatMapper, expected_calibration_error, get_similarity, nearest, overlay, png_bytes
from edgelearn.files import default_data_dir
from edgelearn.knowledge import ImportPolicy, TrustStore, merge_packages, parse_package, provenance
from edgelearn.labels import check_label, label_key
from edgelearn.recognizer import Recognizer
from edgelearn.resources import one_blas_thread, return_freed_memory
from edgelearn.server.batching import Batcher
from edgelearn.store import Store

THUMBNAIL_SIDE = 160
CLASS_THUMBNAILS = 4  # per class card
FEW_EXAMPLES = 5  # a class with fewer gets a hint to teach more
REPLAYS = ("checkpoint", "undo")  # versions that are exactly their parent + its events (undo looks through them)


@dataclass
class StationConfig:
    """How a station is set up; the recognizer's part is fixed by the store's first start."""

    data_dir: Path = field(default_factory=default_data_dir)
    backbone: str = "mobilenet_v2"
    weights: str | None = None
    input_size: int | None = None
    learner: str = "slda"
    runtime: str = "onnx"  # the backbone on ONNX Runtime (same features as "torch", about twice as fast)
    keep_images: bool = False  # opt-in: thumbnails for representatives and images of feedback events
    thumbnails_per_class: int = 12
    representatives: str = "feature"  # or any image similarity: phash, hist, ssim, ...
    unknown_below: float = 0  # override: "unknown" below this calibrated top probability (0: by familiarity)
    queue_below: float = 0.5  # predictions less confident than this wait in the labelling queue
    checkpoint_every: int = 500  # events; bounds the replay on start
    trust: Path | None = None  # folder of trusted sites' public keys: imports must be signed by one
    allow_unsigned: bool = False  # opt-in: accept unsigned imports (a present signature is still checked)
    keep_versions: int = 50  # versions that keep their package (plus tagged ones, the active one and its parent)
    keep_events: int = 10_000  # feedback log: the newest events (plus those the active version replays)
    keep_resolved: int = 1_000  # labelled, dismissed or expired queue items (and their images)
    precision: str | None = None  # module A's: a bundle's own (None) or checked against it; see build_backbone

    @property
    def store_path(self) -> Path:
        return Path(self.data_dir) / "station.sqlite"


class Station:
    def __init__(self, config: StationConfig):
        self.config = config
        self.store = Store(config.store_path, keep_versions=config.keep_versions, keep_events=config.keep_events,
                           keep_resolved=config.keep_resolved)
        self._lock = threading.RLock()  # guards self.rec's learner and the order of store writes
        self._view: Recognizer  # what predictions read: a frozen snapshot of self.rec (see _publish)
        self._blas = one_blas_thread()  # ONNX Runtime gets the cores (see edgelearn.resources)
        try:
            self.rec = self._open()
        except BaseException:
            self._blas.restore_original_limits()
            raise
        self._heat: HeatMapper | None = None
        self._signatures: dict[int, object] = {}
        self._last_queued: np.ndarray | None = None
        self._batcher = Batcher(self._embed_batch)
        self._adopt(self.rec)

    def _adopt(self, rec: Recognizer) -> Recognizer:
        """The station's own settings apply to whatever knowledge it holds (loaded, rolled back, imported)."""
        self.rec = self._configured(rec)
        self._publish()
        return rec

    def _configured(self, rec: Recognizer) -> Recognizer:
        rec.unknown_below = self.config.unknown_below or None  # the recognizer's own rule unless overridden
        return rec

    def _publish(self) -> None:
        """Give predictions a frozen copy of the current knowledge: one reference swap, after the
        new weights are computed (under the write lock), so a prediction never waits for learning
        and one issued after a write returned sees it."""
        self._view = self.rec.frozen()  # SLDA solves here, off the prediction path

    # -- start ----------------------------------------------------------------------------------------
    def _open(self) -> Recognizer:
        c = self.config
        self.store.check_active_version()  # a damaged store is an error, never a new empty station
        version = self.store.active_version
        if version is None:
            weights = default_weights(c.weights, c.backbone, c.data_dir)
            rec = Recognizer.create(c.backbone, learner=c.learner, weights=weights, input_size=c.input_size,
                                    runtime=c.runtime, precision=c.precision)
            self.store.set("created_with", {"backbone": c.backbone, "learner": c.learner,
                                            "input_size": c.input_size})
            self._holds = {self.store.add_version(rec.to_bytes(), "initial", classes=0, examples=0): _summary_of(rec)}
            return rec
        saved = self.store.get("created_with", {})
        name = saved.get("backbone", c.backbone)
        backbone = build_backbone(name, weights=default_weights(c.weights, name, c.data_dir),
                                  input_size=saved.get("input_size"), runtime=c.runtime, precision=c.precision)
        try:
            rec = Recognizer.from_bytes(self.store.package(version), f"store version {version}", backbone=backbone)
        except EdgelearnError as exc:
            raise type(exc)(f"the station's active knowledge (version {version} in {self.store.path}) fails the "
                            f"checks: {exc}") from None
        self._holds = {version: _summary_of(rec)}  # what a version holds: the next one's changes are relative to it
        X, labels = self.store.replay(version)
        if labels:
            rec.learn_features(X, labels)
        return rec

    # -- predictions ----------------------------------------------------------------------------------
    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.rec.backbone.embed_tensor(batch)

    def predict(self, image: Image.Image, *, top_k: int = 5, heatmap: bool = False, representatives: int = 1,
                enqueue: bool = True) -> dict:
        features = self._batcher.submit(self.rec.backbone.preprocessing.array(image))
        rec = self._view  # no lock: a snapshot learning never changes
        if not rec.classes:
            return {"label": None, "confidence": 0.0, "alternatives": [], "known_classes": 0,
                    "representatives": [], "message": "nothing learned yet: teach a class first"}
        prediction = rec.predict_features(features, top_k=top_k)[0].to_dict()
        prediction["known_classes"] = len(rec.classes)
        shown = [prediction["label"]] if prediction["label"] else []
        shown += [a["label"] for a in prediction["alternatives"]]
        prediction["representatives"] = self._representatives(image, features[0], shown[:3], representatives)
        if heatmap:
            prediction["heatmap"] = self.heatmap(image, shown[0])
        if enqueue and prediction["confidence"] < self.config.queue_below:
            self._enqueue(image, features[0], prediction)
        return prediction

    def heatmap(self, image: Image.Image, label: str) -> str:
        """A PNG data URL: the heat map (Grad-CAM) of ``label`` over the crop the backbone sees."""

        learner = self._view.learner  # a snapshot: no lock

        def gradient(f0):
            return learner.logit_gradient(f0, label)

        if self._heat is None:
            self._heat = HeatMapper(self.rec.backbone)
        heat = self._heat.heat(image, gradient)
        data = png_bytes(overlay(self._heat.crop(image), heat))
        return "data:image/png;base64," + base64.b64encode(data).decode()

    def _representatives(self, image, features, labels, k: int) -> list[dict]:
        if k <= 0 or not labels:
            return []
        stored = self.store.thumbnails(labels)
        if not stored:
            return []
        method = self.config.representatives
        if method == "feature":
            similarity = get_similarity("feature", embed=lambda f: f)
            query, sigs = similarity.signature(features), [similarity.signature(t["features"]) for t in stored]
        else:
            similarity = get_similarity(method)
            query = similarity.signature(image)
            sigs = [self._signature(t["id"], similarity) for t in stored]
        out = []
        for label in labels:
            mine = [i for i, t in enumerate(stored) if t["label"] == label]
            for i, distance in nearest(query, [sigs[j] for j in mine], similarity, k):
                out.append({"label": label, "thumbnail": stored[mine[i]]["id"], "distance": distance})
        return out

    def _signature(self, thumbnail: int, similarity):
        if thumbnail not in self._signatures:
            image = Image.open(io.BytesIO(self.store.thumbnail(thumbnail)), formats=["JPEG"])
            self._signatures[thumbnail] = similarity.signature(image)
        return self._signatures[thumbnail]

    def _enqueue(self, image, features, prediction) -> None:
        unit = features / max(np.linalg.norm(features), 1e-12)
        if self._last_queued is not None and float(unit @ self._last_queued) > 0.98:
            return  # the same scene as the last queued frame (a camera sends many)
        self._last_queued = unit
        label = prediction["label"] or prediction["alternatives"][0]["label"]
        self.store.enqueue(label, prediction["confidence"], features,
                           thumbnail_bytes(image) if self.config.keep_images else None)

    # -- learning -------------------------------------------------------------------------------------
    def learn(self, images: list[Image.Image], labels: list[str], *, kind: str = "teach", user: str | None = None,
              predicted: list | None = None, confidence: list | None = None, new_class: bool = False) -> dict:
        """Learn labelled images; returns once the feedback is committed (it survives a crash)."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        features, labels, thumbnails = self._embed_pairs(zip(images, labels, strict=True))
        return self._learn_features(features, labels, kind=kind, user=user, predicted=predicted,
                                    confidence=confidence, images=thumbnails, new_class=new_class)

    def learn_stream(self, pairs: Iterable[tuple[Image.Image, str]], *, kind: str = "teach",
                     user: str | None = None, predicted: str | None = None, confidence: float | None = None,
                     new_class: bool = False) -> dict:
        """:meth:`learn` for ``(image, label)`` pairs decoded as they are consumed (an upload's images,
        zip members, video frames), with one ``predicted``/``confidence`` for all: memory stays flat."""
        features, labels, thumbnails = self._embed_pairs(pairs)
        if not labels:
            raise ImageError("nothing to learn: the upload holds no images")
        feedback = {"predicted": [predicted] * len(labels), "confidence": [confidence] * len(labels)} \
            if kind != "teach" else {}
        return self._learn_features(features, labels, kind=kind, user=user, images=thumbnails, new_class=new_class,
                                    **feedback)

    def _embed_pairs(self, pairs: Iterable[tuple[Image.Image, str]], chunk: int = 16):
        """Features, checked labels and (with keep_images) thumbnails, ``chunk`` images at a time: only
        that many decoded images are alive at once."""
        features, labels, thumbnails = [], [], []
        pairs = iter(pairs)
        while part := list(itertools.islice(pairs, chunk)):
            labels += [check_label(label) for _, label in part]
            # through the batcher: teaching shares forward passes with predictions, never runs beside them
            arrays = [self.rec.backbone.preprocessing.array(to_rgb(image)) for image, _ in part]
            features.append(self._batcher.submit_many(arrays))
            thumbnails += [thumbnail_bytes(image) for image, _ in part] if self.config.keep_images else []
        width = self.rec.backbone.feature_dim
        return (np.concatenate(features) if features else np.zeros((0, width), np.float32), labels,
                thumbnails or None)

    def _learn_features(self, features, labels, *, kind, user, predicted=None, confidence=None, images=None,
                        new_class=False) -> dict:
        with self._lock:
            if not new_class:
                self._refuse_near_duplicates(labels)
            ids = self.store.add_events(kind, labels, features, user=user, predicted=predicted,
                                        confidence=confidence, images=images)
            self.rec.learn_features(features, labels)  # calibrates on the examples as if not yet learned
            for label, vector, image in zip(labels, features, images or [None] * len(labels), strict=True):
                if image is not None:
                    self.store.add_thumbnail(label, image, vector, self.config.thumbnails_per_class)
            if self.store.events_on(self.store.active_version) >= self.config.checkpoint_every:
                self._new_version("checkpoint", user)
            self._publish()
        return_freed_memory()
        return {"events": ids, "classes": self.rec.classes}

    def label_queue(self, item: int, label: str | None, user: str | None = None, new_class: bool = False) -> dict:
        """A person labels (or, with ``None``, dismisses) a queued prediction. Resolving the item and its
        event are one transaction: of several people labelling one item at once, one teaches it, the
        others get :class:`ConflictError`."""
        label = check_label(label) if label is not None else None
        with self._lock, self.store.transaction():
            row = self.store.resolve(item, label, user)
            if label is None:
                return {}
            features = np.frombuffer(row["features"], np.float32)[None, :]
            return self._learn_features(features, [label], kind="label", user=user, predicted=[row["predicted"]],
                                        confidence=[row["confidence"]], images=[row["image"]] if row["image"] else None,
                                        new_class=new_class)

    # -- versions -------------------------------------------------------------------------------------
    def _new_version(self, reason: str, user: str | None, rec: Recognizer | None = None, *,
                     renamed: dict | None = None, **kwargs) -> int:
        """Commit ``rec`` (default: the station's) as the new active version, with what changed since the last."""
        rec = self.rec if rec is None else rec
        parent = self.store.active_version
        before = self._holds.get(parent) or _summary_of(self.rec)
        version = self.store.add_version(rec.to_bytes(), reason, classes=len(rec.classes),
                                         examples=sum(rec.examples_seen.values()), user=user,
                                         changes=_changes(before, rec, renamed), **kwargs)
        self._holds = {parent: before, version: _summary_of(rec)}  # a transaction around this may still roll back
        return version

    def consolidate(self, user: str | None = None) -> dict:
        with self._lock:
            self.rec.consolidate()
            self._publish()
            version = self._new_version("consolidate", user)
        return {"version": version, **self._summary()}

    def rollback(self, version: int, user: str | None = None) -> dict:
        package = self.store.package(version)
        with self._lock:  # built and committed before it is swapped in: a failure changes nothing
            rec = self._configured(Recognizer.from_bytes(package, f"version {version}", backbone=self.rec.backbone))
            new = self.store.add_version(package, f"rollback to version {version}", parent=version, user=user,
                                         classes=len(rec.classes), examples=sum(rec.examples_seen.values()),
                                         changes=_changes(_summary_of(self.rec), rec))  # what the worker sees undone
            self._holds = {new: _summary_of(rec)}
            self._adopt(rec)
        return {"version": new, **self._summary()}

    def export(self) -> bytes:
        with self._lock:
            return self.rec.to_bytes(site=self.store.get("site"))

    def import_package(self, data: bytes, name: str = "upload", user: str | None = None) -> dict:
        """Merge another site's knowledge package (checked: format, schema, integrity, backbone, and
        a trusted site's signature unless unsigned imports are allowed). The merge is built on a copy,
        committed as a version, and only then swapped in: a failure changes neither memory nor store."""
        policy = self._import_policy()
        site = provenance(parse_package(data, name, policy=policy)[0])[0].get("site") or "unknown"
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:  # an empty station adopts the package, whatever its learner kind
            if (earlier := self.store.merged_version(digest)) is not None:
                raise ConflictError(f"this package was already merged (version {earlier})")
            package = merge_packages(data, policy=policy, own=self.rec.to_bytes(), names=[name])
            merged = self._configured(Recognizer.from_bytes(package, name, backbone=self.rec.backbone))
            version = self._new_version(f"merge from {site}", user, merged, site=site, source_hash=digest)
            self._adopt(merged)
        self.store.record_site(site)
        return {"version": version, "site": site, **self._summary()}

    def _import_policy(self) -> ImportPolicy:
        c = self.config
        if c.trust is None and not c.allow_unsigned:
            raise SignatureError("this station accepts knowledge only from trusted sites and has no trust folder: "
                                 "put the sites' public keys (<site>.pub, made by `edgelearn keys new SITE`) in a "
                                 "folder and start it with `edgelearn serve --trust FOLDER` (or --allow-unsigned)")
        return ImportPolicy(TrustStore.load(c.trust) if c.trust else None, c.allow_unsigned)

    # -- the worker's class operations and undo: each one an event and a new version ----------------------
    def classes(self) -> list[dict]:
        """One card per class: its examples, a few thumbnail ids (with keep_images), and whether it has few."""
        thumbnails = self.store.thumbnail_ids(CLASS_THUMBNAILS)
        with self._lock:
            counts = {c: int(self.rec.examples_seen.get(c, 0)) for c in self.rec.classes}
        return [{"name": c, "examples": n, "thumbnails": thumbnails.get(c, []), "few": n < FEW_EXAMPLES}
                for c, n in counts.items()]

    def rename_class(self, name: str, to: str, user: str | None = None) -> dict:
        to = check_label(to)
        return self._change_classes("rename", name, to, f"rename {name!r} to {to!r}", user,
                                    lambda rec: rec.rename_class(name, to), renamed={name: to})

    def merge_classes(self, name: str, into: str, user: str | None = None) -> dict:
        return self._change_classes("merge", name, into, f"merge {name!r} into {into!r}", user,
                                    lambda rec: rec.merge_classes(name, into))

    def delete_class(self, name: str, user: str | None = None) -> dict:
        return self._change_classes("delete", name, None, f"delete {name!r}", user, lambda rec: rec.forget_class(name))

    def _change_classes(self, kind: str, name: str, target: str | None, reason: str, user: str | None, change,
                        renamed: dict | None = None) -> dict:
        """Change a copy (which checks everything), commit it as an event and a version, then swap it in:
        a refused or failed change leaves memory and store as they were."""
        with self._lock:
            rec = change(self.rec.copy())
            with self.store.transaction():
                self.store.add_operation(kind, name, {"to": target} if target else {}, user=user)
                version = self._new_version(reason, user, rec, renamed=renamed)
                self.store.relabel_thumbnails(name, target)
                self.store.keep_concepts(rec.classes)
            self._adopt(rec)
        return {"version": version, "classes": rec.classes}

    def undo(self, user: str | None = None) -> dict:
        """Take back the last teach, confirm, correct or label request: a compensating event, and a new version
        rebuilt by replaying the log without that request (exact). Refused past any other change of the knowledge
        (a rename, merge, delete, import, rollback, consolidation): roll back instead."""
        with self._lock:
            chain, last = self._undoable()
            base = chain[-1]
            rec = Recognizer.from_bytes(self.store.package(base), f"store version {base}", backbone=self.rec.backbone)
            replayed = [self.store.replay(v, skip_request=last["request"]) for v in reversed(chain)]
            X = [x for x, labels in replayed if labels]
            if X:
                rec.learn_features(np.concatenate(X), [label for _, labels in replayed for label in labels])
            if sum(rec.examples_seen.values()) != sum(self.rec.examples_seen.values()) - last["examples"]:
                raise ConflictError(f"the feedback log no longer holds everything learned since version {base}: "
                                    "undo is not possible; roll back to an earlier version instead")
            taken = self.store.request_features(last["request"])
            label = ", ".join(dict.fromkeys(label for label, _ in taken))
            undone = {"kind": last["kind"], "label": label, "examples": last["examples"], "user": last["user"]}
            with self.store.transaction():
                self.store.add_operation("undo", label, undone, user=user, request=last["request"])
                version = self._new_version(f"undo {last['kind']} {label!r}", user, rec)
                for name in dict.fromkeys(label for label, _ in taken):
                    self.store.relabel_thumbnails(name, None, [f for n, f in taken if n == name])
                self.store.keep_concepts(rec.classes)
                if last["kind"] == "label":
                    self.store.reopen([f for _, f in taken])
            self._adopt(rec)
        return {"undone": undone, "version": version, "classes": rec.classes}

    def _undoable(self) -> tuple[list[int], dict]:
        """The versions from the active one back to the one the last request was learned on (through versions
        that are only their parent + its events), and that request."""
        chain = [self.store.active_version]
        while (last := self.store.last_request(chain[-1])) is None:
            row = self.store.version(chain[-1])
            if row["parent"] is None:
                raise ConflictError("nothing to undo")
            if not row["reason"].startswith(REPLAYS):
                raise ConflictError(f"nothing to undo since version {row['id']} ({row['reason']}); roll back to an "
                                    "earlier version instead")
            chain.append(row["parent"])
        return chain, last

    def _refuse_near_duplicates(self, labels: list[str]) -> None:
        """A new class whose name differs from a known one's only in case or spacing is most likely a typo."""
        known = {label_key(c): c for c in self.rec.classes}
        for label in [label for label in dict.fromkeys(labels) if label not in self.rec.classes]:
            twin = known.setdefault(label_key(label), label)
            if twin != label:
                raise NearDuplicateError(twin)

    # -- reading --------------------------------------------------------------------------------------
    def _summary(self) -> dict:
        return {"classes": self.rec.classes, "examples": sum(self.rec.examples_seen.values())}

    def status(self) -> dict:
        confidence, correct = self.store.feedback_confidences()
        with self._lock:
            info = self.rec.info()
        return {
            **self._summary(),
            "learner": info["learner"], "learner_bytes": info["learner_bytes"],
            "representations": info["representations"], "temperature": info["temperature"],
            "calibration": info["calibration"], "familiarity_threshold": info["familiarity_threshold"],
            "backbone": self.rec.backbone.fingerprint,
            "active_version": self.store.active_version,
            "events": self.store.count("events"),
            "open_queue": self.store.open_queue_size(),
            "live_calibration": {"n": int(len(confidence)),
                                 "accuracy": float(correct.mean()) if len(correct) else None,
                                 "ece": expected_calibration_error(confidence, correct) if len(correct) else None},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
        }

    def close(self) -> None:
        self._batcher.close()
        self.store.close()
        self._blas.restore_original_limits()


def _summary_of(rec: Recognizer) -> tuple[list[str], int]:
    return list(rec.classes), sum(rec.examples_seen.values())


def _changes(before: tuple[list[str], int], rec: Recognizer, renamed: dict | None = None) -> dict:
    """What a version changed relative to ``before`` (classes, examples): for the versions list. A rename of a
    class that ``before`` did not hold yet (taught since) is part of "added"."""
    classes, examples = before
    renamed = {old: new for old, new in (renamed or {}).items() if old in classes}
    return {"added": [c for c in rec.classes if c not in classes and c not in renamed.values()],
            "removed": [c for c in classes if c not in rec.classes and c not in renamed],
            "renamed": renamed, "examples": sum(rec.examples_seen.values()) - examples}


def thumbnail_bytes(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
