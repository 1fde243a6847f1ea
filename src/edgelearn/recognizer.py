"""The Recognizer: backbone (slow memory) + learner (fast memory) + label registry.

What users hold, save, load and share. Labels are concept paths (``car/interior/steering_wheel``);
predictions can be rolled up to any level of that hierarchy. No training image is ever stored.
"""

import copy
import datetime as dt
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from rich.progress import track

from edgelearn.backbones import WEIGHTS_ENV, build_backbone
from edgelearn.backbones.bundle import is_bundle
from edgelearn.data.cache import FeatureCache, content_hash
from edgelearn.data.images import load_image, to_rgb
from edgelearn.errors import DatasetError, ImageError, IncompatibleError
from edgelearn.explain.calibration import OnlineTemperature, fit_temperature
from edgelearn.files import atomic_write_bytes
from edgelearn.knowledge import ImportPolicy, SiteKey, package_bytes, parse_package, read_package
from edgelearn.knowledge.merge import merge_familiarity
from edgelearn.knowledge.schema import MAX_FAMILIARITY
from edgelearn.labels import check_label
from edgelearn.learners import HeldOut, Learner, learner_from_state, make_learner
from edgelearn.learners.base import softmax

if TYPE_CHECKING:  # a bundle's backbone needs no torch: import the PyTorch one only where it is built
    from edgelearn.backbones import Backbone

ImageLike = Image.Image | str | os.PathLike | bytes
CALIBRATION_NEEDED = 20  # held-out rows before the temperature is fitted
FAMILIARITY_NEEDED = 20  # held-out familiarity values before anything is called unknown (as for certainty)
FAMILIARITY_QUANTILE = 0.05  # the threshold: 5 % of held-out examples of known classes fall below it


@dataclass
class Prediction:
    """One decision: the label, its probability, the next-best classes and how familiar the input is.
    ``unknown`` (then ``label=None`` and ``alternatives`` start with the closest class): the input is less
    familiar than the recognizer's threshold (or less certain than a given ``unknown_below``)."""

    label: str | None
    confidence: float
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    familiarity: float = 0.0
    unknown: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alternatives"] = [{"label": label, "confidence": c} for label, c in self.alternatives]
        return d


def concept_prefix(label: str, level: int | None) -> str:
    """``car/interior/wheel`` at level 1 -> ``car``; ``None`` keeps the full path."""
    return label if level is None else "/".join(label.split("/")[:level])


def rollup(classes: Sequence[str], proba: np.ndarray, level: int | None) -> tuple[list[str], np.ndarray]:
    """Sum class probabilities up to ``level`` of the concept hierarchy."""
    if level is None:
        return list(classes), proba
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    groups = [concept_prefix(c, level) for c in classes]
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    onehot = np.zeros((len(classes), len(names)))
    onehot[np.arange(len(classes)), [index[g] for g in groups]] = 1.0
    return names, proba @ onehot


class Evidence:
    """Held-out evidence of what a recognizer learned (rows scored as if not learned, see
    :meth:`Learner.learn_and_score`): the rows that calibrated its temperature (``n``) and the most recent
    familiarity values, whose 5th percentile is the threshold below which an input is unknown."""

    def __init__(self, n: int = 0, familiarity=()):
        self.n = int(n)
        self.familiarity = np.asarray(familiarity, np.float64)[-MAX_FAMILIARITY:]
        self.online = OnlineTemperature(min_examples=CALIBRATION_NEEDED)

    @property
    def threshold(self) -> float | None:
        if len(self.familiarity) < FAMILIARITY_NEEDED:
            return None
        return float(np.quantile(self.familiarity, FAMILIARITY_QUANTILE))

    @property
    def calibrated(self) -> bool:
        return self.n >= CALIBRATION_NEEDED

    def observe(self, held: HeldOut) -> float | None:
        """Add held-out rows; returns the temperature once enough rows with a choice (two classes or more)
        were seen, else None."""
        self.add_familiarity(held.familiarity)
        choice = np.isfinite(held.logits).sum(axis=1) >= 2  # one class: probability 1, says nothing
        if not choice.any():
            return self.online.temperature
        self.n += int(choice.sum())
        return self.online.observe(held.logits[choice], held.targets[choice])

    def add_familiarity(self, values) -> None:
        self.familiarity = np.r_[self.familiarity, np.asarray(values, np.float64)][-MAX_FAMILIARITY:]

    def merge(self, other: "Evidence") -> None:
        self.familiarity = np.asarray(merge_familiarity(self.familiarity, other.familiarity))

    def copy(self) -> "Evidence":
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        return {"n": self.n, "needed": CALIBRATION_NEEDED, "calibrated": self.calibrated}


class Recognizer:
    """Frozen backbone + incremental learner.

    Examples
    --------
    >>> from PIL import Image
    >>> rec = Recognizer.create("tiny", learner="ncm", weights="random")
    >>> red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    >>> _ = rec.learn([red, blue], ["parts/red", "parts/blue"])
    >>> rec.predict([red])[0].label
    'parts/red'
    """

    def __init__(self, backbone: "Backbone | None", learner: Learner, *, examples_seen: dict | None = None,
                 fingerprint: dict | None = None, weights_path: str | None = None, sources: list | None = None,
                 temperature: float = 1.0, evidence: Evidence | None = None, unknown_below: float | None = None):
        self.backbone = backbone
        self.learner = learner
        self.evidence = evidence or Evidence()
        self.unknown_below = unknown_below  # a user's override: unknown below this calibrated probability
        self.examples_seen = Counter(examples_seen or {})
        self.sources = list(sources or [])  # provenance of merged knowledge: site, time, examples
        self.temperature = float(temperature)  # calibration: proba = softmax(logits / temperature)
        # what the features came from; kept when loaded without the backbone (consolidate, info)
        self.fingerprint = backbone.fingerprint if backbone is not None else fingerprint
        path = backbone.weights.file if backbone is not None else weights_path
        self.weights_path = str(Path(path).resolve()) if path else None

    @classmethod
    def create(cls, backbone: str = "mobilenet_v2", *, learner: str = "slda", weights=None,
               input_size: int | None = None, seed: int = 0, runtime: str = "torch", precision: str | None = None,
               **learner_params) -> "Recognizer":
        """Build a backbone by name and an empty learner (``fuzzy_artmap``, ``slda`` or ``ncm``);
        ``runtime="onnx"`` runs the backbone on ONNX Runtime; ``precision``: see :func:`build_backbone`."""
        return cls(build_backbone(backbone, weights=weights, input_size=input_size, seed=seed, runtime=runtime,
                                  precision=precision),
                   make_learner(learner, **learner_params))

    # -- features -----------------------------------------------------------------------------------
    def embed(self, images: Iterable[ImageLike], *, batch_size: int = 32) -> np.ndarray:
        """Images (PIL, paths or encoded bytes) -> ``(n, feature_dim)`` features."""
        self._require_backbone()
        return self.backbone.embed((_as_image(im) for im in images), batch_size=batch_size)

    def embed_files(self, paths: Sequence[str | os.PathLike], *, cache: FeatureCache | None = None,
                    batch_size: int = 32, progress: bool = False,
                    unreadable: dict[int, str] | None = None) -> np.ndarray:
        """Embed image files, reusing ``cache`` for files whose bytes were embedded before.

        The first file that cannot be read raises its :class:`ImageError`; with ``unreadable`` (a dict) every
        such file is left out instead: its row stays zero and ``unreadable[index]`` says why."""
        self._require_backbone()
        out = np.zeros((len(paths), self.backbone.feature_dim), np.float32)
        hashes = [content_hash(p) for p in paths] if cache is not None else [""] * len(paths)
        found = cache.get(hashes) if cache is not None else {}
        todo = [i for i, h in enumerate(hashes) if not h or h not in found]
        for i, h in enumerate(hashes):
            if h and h in found:
                out[i] = found[h]
        for lo in track(range(0, len(todo), batch_size), description="embedding", disable=not progress,
                        transient=True):
            loaded = {i: _load_or_note(paths[i], i, unreadable) for i in todo[lo:lo + batch_size]}
            part = [i for i, image in loaded.items() if image is not None]
            if part:
                out[part] = self.backbone.embed([loaded[i] for i in part], batch_size=batch_size)
                if cache is not None:
                    cache.put([hashes[i] for i in part], out[part])
        return out

    # -- learning and prediction -------------------------------------------------------------------
    def learn(self, images: Iterable[ImageLike], labels: Sequence[str]) -> "Recognizer":
        """Learn labelled images (a new label creates a class). Images are not kept."""
        return self.learn_features(self.embed(images), labels)

    def learn_features(self, features: np.ndarray, labels: Sequence[str]) -> "Recognizer":
        """Learn labelled features; rows scored before they were learned calibrate the temperature (from
        the first batch on) and set the familiarity threshold."""
        labels = [check_label(label) for label in labels]
        temperature = self.evidence.observe(self.learner.learn_and_score(features, labels))
        if temperature is not None:
            self.temperature = temperature
        self.examples_seen.update(labels)
        return self

    def predict(self, images: Iterable[ImageLike], *, top_k: int = 5, level: int | None = None
                ) -> list[Prediction]:
        """One :class:`Prediction` per image, with up to ``top_k - 1`` alternatives."""
        return self.predict_features(self.embed(images), top_k=top_k, level=level)

    def predict_features(self, features: np.ndarray, *, top_k: int = 5, level: int | None = None
                         ) -> list[Prediction]:
        names, proba = self.predict_proba(features, level=level)
        familiarity = self.learner.familiarity(features)
        unknown = self.unknown(proba.max(axis=1), familiarity)
        out = []
        for row, familiar, no in zip(proba, familiarity, unknown, strict=True):
            order = np.argsort(-row, kind="stable")[:max(top_k, 1)]
            top = [(names[j], float(row[j])) for j in order]
            if no:  # every candidate is an alternative
                out.append(Prediction(None, top[0][1], top, float(familiar), True))
            else:
                out.append(Prediction(top[0][0], top[0][1], top[1:], float(familiar), False))
        return out

    def unknown(self, top_probability: np.ndarray, familiarity: np.ndarray) -> np.ndarray:
        """Which inputs are unknown: less familiar than the threshold set from held-out evidence, or, with
        an ``unknown_below`` override (or a learner's ``unknown_threshold``), less probable than it."""
        below = self.unknown_below if self.unknown_below is not None else self.learner.unknown_threshold
        if below is not None:
            return top_probability < below
        threshold = self.evidence.threshold
        return familiarity < threshold if threshold is not None else np.zeros(len(familiarity), bool)

    def familiarity(self, features: np.ndarray) -> np.ndarray:
        """How much each input is like what was learned (higher = more familiar)."""
        return self.learner.familiarity(features)

    def predict_proba(self, features: np.ndarray, *, level: int | None = None
                      ) -> tuple[list[str], np.ndarray]:
        """``(class names, (n, n_classes) calibrated probabilities)``, rolled up to ``level`` if given."""
        return rollup(self.classes, softmax(self.learner.predict_logits(features) / self.temperature), level)

    def calibrate(self, features: np.ndarray, labels: Sequence[str]) -> float:
        """Fit the confidence temperature on held-out labelled features (never the training data);
        examples of classes the learner does not know are skipped. Returns the temperature."""
        index = {c: i for i, c in enumerate(self.classes)}
        keep = [i for i, label in enumerate(labels) if label in index]
        if not keep:
            raise DatasetError("none of the calibration examples belongs to a known class")
        X = np.asarray(features)[keep]
        self.temperature = fit_temperature(self.learner.predict_logits(X), [index[labels[i]] for i in keep])
        self.evidence.online = OnlineTemperature(min_examples=CALIBRATION_NEEDED)  # fitted here, not online
        self.evidence.n = max(self.evidence.n, len(keep))
        self.evidence.add_familiarity(self.learner.familiarity(X))
        return self.temperature

    def consolidate(self, strategy: str | None = None, **kwargs) -> "Recognizer":
        if strategy is not None:
            kwargs["strategy"] = strategy
        self.learner.consolidate(**kwargs)
        return self

    def rename_class(self, name: str, to: str) -> "Recognizer":
        """Call class ``name`` ``to`` from now on (``to`` must be new: merge otherwise)."""
        self.learner.rename_class(name, check_label(to))
        self.examples_seen[to] = self.examples_seen.pop(name, 0)
        return self

    def merge_classes(self, name: str, into: str) -> "Recognizer":
        """Every example of ``name`` becomes one of ``into``; ``name`` is gone."""
        self.learner.merge_classes(name, into)
        self.examples_seen[into] += self.examples_seen.pop(name, 0)
        return self

    def forget_class(self, name: str) -> "Recognizer":
        self.learner.forget_class(name)
        self.examples_seen.pop(name, None)
        return self

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.learner, "classes_", []))

    def concepts(self) -> dict:
        """The concept hierarchy of the known labels as nested dicts."""
        tree: dict = {}
        for label in self.classes:
            node = tree
            for part in label.split("/"):
                node = node.setdefault(part, {})
        return tree

    # -- sharing -----------------------------------------------------------------------------------
    def merge(self, *others: "Recognizer") -> "Recognizer":
        """Absorb other sites' knowledge (same backbone and learner kind); classes match by label."""
        for other in others:
            if other.fingerprint != self.fingerprint:
                _check_fingerprint(other.fingerprint, self.fingerprint, "the other site's knowledge")
            self.learner.merge(other.learner)
            self.evidence.merge(other.evidence)
            self.examples_seen.update(other.examples_seen)
            self.sources.extend(other.sources or [{"site": None, "examples": sum(other.examples_seen.values())}])
        return self

    # -- persistence --------------------------------------------------------------------------------
    def manifest(self, site: str | None = None) -> dict:
        state = self.learner.state_dict()
        learner = {k: state[k] for k in ("kind", "params", "classes", "n_features") if k in state}
        return {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "site": site,
            "backbone": self.fingerprint,
            "weights_path": self.weights_path,
            "learner": learner,
            "examples_seen": dict(self.examples_seen),
            "sources": self.sources,
            "calibration": {"temperature": self.temperature, "n": self.evidence.n,
                            "familiarity": self.evidence.familiarity.tolist()},
        }

    def to_bytes(self, *, key: SiteKey | None = None, site: str | None = None) -> bytes:
        """The knowledge package :meth:`save` writes, as bytes."""
        arrays = self.learner.state_dict().get("arrays", {})
        return package_bytes(self.manifest(site or (key.site if key else None)), arrays, key)

    def save(self, path: str | os.PathLike, *, key: SiteKey | None = None, site: str | None = None) -> Path:
        """Write one knowledge package atomically (a crash leaves the previous file, never half a
        file); signed by ``key`` when given. Holds no images and no backbone weights."""
        atomic_write_bytes(path, self.to_bytes(key=key, site=site))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, weights=None, backbone: "Backbone | None" = None,
             with_backbone: bool = True, policy: ImportPolicy | None = None,
             allow_other_precision: bool = False, runtime: str = "torch",
             precision: str | None = None) -> "Recognizer":
        """Load a saved recognizer or a site's package; refuses it if the backbone differs from
        the one it learned on, if it was altered or malformed, or if ``policy`` (knowledge from
        elsewhere: ``ImportPolicy(trust)``) refuses its signature.

        ``weights`` overrides where the backbone weights are read from (else ``$EDGELEARN_WEIGHTS``,
        else the path recorded at save time). ``with_backbone=False`` loads the fast memory only.
        ``allow_other_precision`` accepts knowledge learned on another precision of the same backbone
        (fp32 knowledge on an int8 backbone: close features, not equal ones; the user's call).
        ``runtime`` runs the rebuilt fp32 backbone on PyTorch or ONNX Runtime (the same features);
        ``precision`` checks a bundle's (see :func:`build_backbone`).
        """
        manifest, arrays = read_package(path, policy=policy)
        return cls._from_package(manifest, arrays, path, weights, backbone, with_backbone, allow_other_precision,
                                 runtime, precision)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<package>", *, weights=None, backbone: "Backbone | None" = None,
                   with_backbone: bool = True, policy: ImportPolicy | None = None,
                   allow_other_precision: bool = False, runtime: str = "torch",
                   precision: str | None = None) -> "Recognizer":
        """:meth:`load` for a package held in memory (an upload, a stored version)."""
        manifest, arrays = parse_package(data, name, policy=policy)
        return cls._from_package(manifest, arrays, name, weights, backbone, with_backbone, allow_other_precision,
                                 runtime, precision)

    @classmethod
    def _from_package(cls, manifest, arrays, path, weights, backbone, with_backbone,
                      allow_other_precision=False, runtime="torch", precision=None) -> "Recognizer":
        learner = learner_from_state({**manifest["learner"], "arrays": arrays})
        if backbone is None and with_backbone:
            backbone = _rebuild_backbone(manifest, weights, runtime, precision)
        if backbone is not None:
            _check_fingerprint(manifest["backbone"], backbone.fingerprint, path,
                               ignore=("precision",) if allow_other_precision else ())
        sources = manifest.get("sources") or [{"site": manifest.get("site"), "created_at": manifest.get("created_at"),
                                               "examples": sum(manifest.get("examples_seen", {}).values())}]
        calibration = manifest.get("calibration", {})
        temperature = calibration.get("temperature", 1.0)
        # a package from before the evidence was counted: a temperature other than 1 was fitted
        n = calibration.get("n", CALIBRATION_NEEDED if temperature != 1.0 else 0)
        return cls(backbone, learner, examples_seen=manifest.get("examples_seen"),
                   fingerprint=manifest["backbone"], weights_path=manifest.get("weights_path"), sources=sources,
                   temperature=temperature, evidence=Evidence(n, calibration.get("familiarity", [])))

    def copy(self) -> "Recognizer":
        """An independent copy of the fast memory, to change off to the side (the backbone is shared:
        it never changes)."""
        return Recognizer(self.backbone, copy.deepcopy(self.learner), examples_seen=self.examples_seen,
                          fingerprint=self.fingerprint, weights_path=self.weights_path,
                          sources=copy.deepcopy(self.sources), temperature=self.temperature,
                          evidence=self.evidence.copy(), unknown_below=self.unknown_below)

    def frozen(self) -> "Recognizer":
        """A copy for predicting only that shares nothing learning changes (:meth:`Learner.snapshot`)."""
        return Recognizer(self.backbone, self.learner.snapshot(), fingerprint=self.fingerprint,
                          temperature=self.temperature, evidence=self.evidence.copy(),
                          unknown_below=self.unknown_below)

    def info(self) -> dict:
        return {
            "learner": self.learner.kind,
            "params": self.learner.get_params(),
            "classes": self.classes,
            "n_classes": len(self.classes),
            "representations": getattr(self.learner, "n_representations", len(self.classes)),
            "learner_bytes": self.learner.nbytes,
            "examples_seen": sum(self.examples_seen.values()),
            "temperature": self.temperature,
            "calibration": self.evidence.to_dict(),
            "familiarity_threshold": self.evidence.threshold,
            "unknown_below": self.unknown_below,
            "sources": self.sources,
            "backbone": self.fingerprint,
        }

    def _require_backbone(self) -> None:
        if self.backbone is None:
            raise ValueError("this recognizer was loaded without its backbone (with_backbone=False)")


def _rebuild_backbone(manifest: dict, weights, runtime: str = "torch", precision: str | None = None) -> "Backbone":
    fp = manifest["backbone"]
    ident = fp["weights"]
    seed = 0
    saved = manifest.get("weights_path")
    if weights is None:
        if is_bundle(saved) and not os.environ.get(WEIGHTS_ENV) and Path(saved).is_file():
            weights = saved  # the bundle it learned with: rebuilt without PyTorch
        elif ident.startswith("random:"):
            weights, seed = "random", int(ident.split("=")[1])
        elif ident.startswith("torchvision:"):
            weights = "download"
        elif not os.environ.get(WEIGHTS_ENV) and manifest.get("weights_path") \
                and Path(manifest["weights_path"]).is_file():
            weights = manifest["weights_path"]
    return build_backbone(fp["name"], weights=weights, input_size=fp["input_size"], seed=seed, runtime=runtime,
                          precision=precision)


def _check_fingerprint(saved: dict, current: dict, path, ignore: Sequence[str] = ()) -> None:
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k) and k not in ignore]
    if differ:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in differ)
        raise IncompatibleError(f"{path} was learned on another backbone ({detail}); "
                                f"load it with the same backbone and weights")


def _as_image(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return load_image(image)


def _load_or_note(path: str | os.PathLike, index: int, unreadable: dict[int, str] | None) -> Image.Image | None:
    """The decoded image; or, when ``unreadable`` collects failures, None after noting why there."""
    try:
        return load_image(path)
    except ImageError as exc:
        if unreadable is None:
            raise
        unreadable[index] = str(exc)
        return None
