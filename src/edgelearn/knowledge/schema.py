"""The package manifest's schema: every key known, every value of its type, checked before anything is built.

A package comes from elsewhere (another site, an upload, an old store version), so nothing in it is
trusted: unknown keys are refused, not ignored, and the learner's state is checked by the learner
class itself (:meth:`edgelearn.learners.Learner.check_state`: hyper-parameters, array names, dtypes,
shapes, finiteness), and every name it brings by the label rule.
"""

import math
from collections import Counter

import numpy as np

from edgelearn.errors import LabelError, ModelFileError
from edgelearn.labels import check_label
from edgelearn.learners import LEARNERS

MAX_CLASSES = 100_000
MAX_FEATURES = 65_536
MAX_SOURCES = 10_000
MAX_FAMILIARITY = 500  # held-out familiarity values a package carries (its unknown threshold's evidence)


def _text(value) -> bool:
    return isinstance(value, str)


def _optional_text(value) -> bool:
    return value is None or isinstance(value, str)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _counts(value) -> bool:
    return _text_dict(value) and all(_count(v) for v in value.values())


def _sources(value) -> bool:
    return isinstance(value, list) and len(value) <= MAX_SOURCES and all(_text_dict(s) for s in value)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _calibration(value) -> bool:
    if not _text_dict(value) or set(value) - {"temperature", "n", "familiarity"}:
        return False
    t, familiarity = value.get("temperature", 1.0), value.get("familiarity", [])
    return _number(t) and t > 0 and _count(value.get("n", 0)) and isinstance(familiarity, list) \
        and len(familiarity) <= MAX_FAMILIARITY and all(_number(f) for f in familiarity)


def _integrity(value) -> bool:
    return _text_dict(value) and set(value) == {"sha256"} and _text(value["sha256"])


def _signature(value) -> bool:
    return _text_dict(value) and set(value) == {"algorithm", "site", "key_id", "value"} \
        and all(_text(v) for v in value.values())


def _backbone(value) -> bool:
    return _text_dict(value) and _text(value.get("name")) and _text(value.get("weights"))


# key -> (check, what it should be, required)
FIELDS = {
    "format": (_text, "a text", True),
    "version": (_count, "a whole number", True),
    "integrity": (_integrity, "{sha256: text}", True),
    "learner": (_text_dict, "an object", True),
    "backbone": (_backbone, "a backbone fingerprint with a name and weights", True),
    "signature": (_signature, "{algorithm, site, key_id, value}", False),
    "created_at": (_optional_text, "a text", False),
    "site": (_optional_text, "a text", False),
    "weights_path": (_optional_text, "a text", False),
    "examples_seen": (_counts, "label -> count (whole numbers >= 0)", False),
    "sources": (_sources, f"a list of at most {MAX_SOURCES} objects", False),
    "calibration": (_calibration, "{temperature: a positive number, n: a whole number, "
                                  f"familiarity: at most {MAX_FAMILIARITY} numbers}}", False),
}
LEARNER_FIELDS = {"kind", "params", "classes", "n_features"}


def check_manifest(manifest: dict, path) -> None:
    """Refuse a manifest with unknown keys or values of the wrong type (:class:`ModelFileError`)."""
    unknown = sorted(set(manifest) - set(FIELDS))
    if unknown:
        raise ModelFileError(f"{path}: unknown manifest field(s) {unknown}")
    for key, (check, what, required) in FIELDS.items():
        if key not in manifest and required:
            raise ModelFileError(f"{path}: the manifest has no {key!r}")
        if key in manifest and not check(manifest[key]):
            raise ModelFileError(f"{path}: manifest field {key!r} should be {what}")


def check_learner(learner: dict, arrays: dict[str, np.ndarray], path) -> None:
    """Refuse a learner state that does not fit its kind: known kind and keys, a class list of unique
    texts within the limits, a plausible feature width, then the learner class's own checks."""
    unknown = sorted(set(learner) - LEARNER_FIELDS)
    if unknown:
        raise ModelFileError(f"{path}: unknown learner field(s) {unknown}")
    kind = learner.get("kind")
    if kind not in LEARNERS:
        raise ModelFileError(f"{path}: unknown learner kind {kind!r}; known: {', '.join(LEARNERS)}")
    if ("classes" in learner) != ("n_features" in learner):
        raise ModelFileError(f"{path}: the learner needs both a class list and a feature width, or neither")
    classes, d = learner.get("classes", []), learner.get("n_features", 1)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{path}: the class list should be a list of texts")
    if len(classes) > MAX_CLASSES or not _count(d) or not 0 < d <= MAX_FEATURES:
        raise ModelFileError(f"{path}: implausible sizes ({len(classes)} classes, {d} features; "
                             f"limits {MAX_CLASSES} and {MAX_FEATURES})")
    if len(set(classes)) != len(classes):
        twice = sorted(c for c, n in Counter(classes).items() if n > 1)[:3]
        raise ModelFileError(f"{path}: the class list names {twice} more than once")
    try:
        LEARNERS[kind].check_state({**learner, "arrays": arrays})
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def check_labels(manifest: dict, path) -> None:
    """Every name a package brings (classes, examples seen, the learner's unknown label, sites) must pass
    the label rule as it stands: a package cannot bring in a name the station would refuse."""
    learner = manifest["learner"]
    names = [*learner.get("classes", []), *manifest.get("examples_seen", {})]
    names += [s for s in [manifest.get("site"), *(s.get("site") for s in manifest.get("sources", []))]
              if isinstance(s, str)]  # site names end up in the store and in messages
    if learner["params"].get("unknown_label") is not None:
        names.append(learner["params"]["unknown_label"])
    for name in names:
        try:
            if check_label(name) != name:
                raise LabelError(f"invalid label {name!r}: spaces or slashes at its ends")
        except LabelError as exc:
            raise LabelError(f"{path}: {exc}") from None
