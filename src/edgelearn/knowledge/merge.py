"""ONE merge of knowledge packages, for every caller: the CLI's ``merge``, the federation's server, a station's import.

Every package is checked first (format, schema, integrity and, as ``policy`` says, its signature), then the
learners are merged with their own ``merge``. The packages are merged in the order of their integrity hashes,
so the result does not depend on the order they came in.
"""

import datetime as dt
from collections import Counter
from collections.abc import Sequence

import numpy as np

from edgelearn.errors import IncompatibleError
from edgelearn.knowledge.keys import SiteKey
from edgelearn.knowledge.package import ImportPolicy, package_bytes, parse_package
from edgelearn.knowledge.schema import MAX_FAMILIARITY
from edgelearn.learners import Learner, learner_from_state

Package = tuple[str, dict, dict[str, np.ndarray]]  # name, manifest, arrays


def merge_packages(*packages: bytes, policy: ImportPolicy | None, own: bytes | None = None,
                   consolidate: bool = False, key: SiteKey | None = None, site: str | None = None,
                   names: Sequence[str] = ()) -> bytes:
    """Check and merge knowledge packages into one package, signed by ``key`` if given.

    ``policy`` (required, so that every caller says it): what is accepted from elsewhere (signatures);
    ``None`` for packages that are one's own.
    ``own``: this site's own knowledge (not checked against ``policy``); its hyper-parameters and
    calibration are kept, the others are merged into it. Without it, the hyper-parameters come from
    the package with the smallest hash, and the temperature is kept only where all packages agree.
    ``consolidate``: shrink the merged memory (Fuzzy ARTMAP: one representation per class).
    ``names``: the packages' names in messages (file names, sites); ``site``: the merged package's site.
    Refuses packages of different backbones or learner kinds (:class:`IncompatibleError`).

    Examples
    --------
    >>> from edgelearn.learners import make_learner
    >>> def site_package(label, x):
    ...     state = make_learner("ncm").partial_fit(np.full((2, 4), x, np.float32), [label] * 2).state_dict()
    ...     learner = {k: v for k, v in state.items() if k != "arrays"}
    ...     return package_bytes({"backbone": {"name": "tiny", "weights": "random:seed=0"}, "learner": learner},
    ...                          state["arrays"])
    >>> bolts, nuts = site_package("bolt", 0.1), site_package("nut", 0.9)
    >>> allow = ImportPolicy(allow_unsigned=True)
    >>> classes = [parse_package(merge_packages(*packages, policy=allow))[0]["learner"]["classes"]
    ...            for packages in ((bolts, nuts), (nuts, bolts))]
    >>> classes[0] == classes[1] and sorted(classes[0])
    ['bolt', 'nut']
    """
    if not packages and own is None:
        raise ValueError("merge_packages needs at least one package")
    names = list(names) + [f"package {i + 1}" for i in range(len(names), len(packages))]
    others = sorted((_parse(data, name, policy) for data, name in zip(packages, names, strict=True)),
                    key=lambda p: p[1]["integrity"]["sha256"])
    base = _parse(own, "this site's knowledge", None) if own is not None else others.pop(0)
    learned = [p for p in (base, *others) if p[1]["learner"].get("classes")]  # empty ones add nothing
    for other in others:
        _check_compatible(base, other)
    for other in learned[1:]:
        _check_same_kind(learned[0], other)
    learner = _learner(learned[0] if learned else base).merge(*(_learner(p) for p in learned[1:]))
    if consolidate:
        learner.consolidate()
    every = [base, *others]
    temperatures = {_temperature(p) for p in every}
    kept = own is not None or len(temperatures) == 1
    manifest = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "site": site or (key.site if key else None),
        "backbone": base[1]["backbone"],
        "weights_path": next((p[1]["weights_path"] for p in every if p[1].get("weights_path")), None),
        "examples_seen": dict(sum((Counter(p[1].get("examples_seen", {})) for p in every), Counter())),
        "sources": [s for p in learned or [base] for s in provenance(p[1])],
        # a calibration measured on one site's knowledge does not hold for the merged one
        "calibration": {"temperature": _temperature(base) if kept else 1.0,
                        "n": base[1].get("calibration", {}).get("n", 0) if kept else 0,
                        "familiarity": merge_familiarity(*(p[1].get("calibration", {}).get("familiarity", [])
                                                           for p in every))},
    }
    state = learner.state_dict()
    manifest["learner"] = {k: state[k] for k in ("kind", "params", "classes", "n_features") if k in state}
    return package_bytes(manifest, state.get("arrays", {}), key)


def merge_familiarity(*records) -> list[float]:
    """Sites' held-out familiarity as one bounded record: all of it, or evenly spaced order statistics of it."""
    values = np.sort(np.concatenate([np.asarray(r, np.float64).ravel() for r in records] or [np.zeros(0)]))
    if len(values) > MAX_FAMILIARITY:
        values = values[np.linspace(0, len(values) - 1, MAX_FAMILIARITY).round().astype(int)]
    return values.tolist()


def provenance(manifest: dict) -> list[dict]:
    """Where a package's knowledge came from: its sources, or the package's own site, time and examples."""
    return manifest.get("sources") or [{"site": manifest.get("site"), "created_at": manifest.get("created_at"),
                                        "examples": sum(manifest.get("examples_seen", {}).values())}]


def _parse(data: bytes, name: str, policy: ImportPolicy | None) -> Package:
    return (name, *parse_package(data, name, policy=policy))


def _learner(package: Package) -> Learner:
    _, manifest, arrays = package
    return learner_from_state({**manifest["learner"], "arrays": arrays})


def _temperature(package: Package) -> float:
    return float(package[1].get("calibration", {}).get("temperature", 1.0))


def _check_compatible(base: Package, other: Package) -> None:
    (name, manifest, _), (other_name, other_manifest, _) = base, other
    saved, current = other_manifest["backbone"], manifest["backbone"]
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differ:
        detail = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} in {name}" for k in differ)
        raise IncompatibleError(f"{other_name} was learned on another backbone ({detail}); "
                                "only knowledge of the same backbone and weights merges")


def _check_same_kind(first: Package, other: Package) -> None:
    kind, other_kind = first[1]["learner"]["kind"], other[1]["learner"]["kind"]
    if kind != other_kind:
        raise IncompatibleError(f"{other[0]} holds a {other_kind} learner, {first[0]} a {kind} one: "
                                "only knowledge of one learner kind merges")
