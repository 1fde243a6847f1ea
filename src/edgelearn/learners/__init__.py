"""Module B: incremental learners over feature vectors (numpy only, no torch)."""

from edgelearn.learners.base import HeldOut, Learner
from edgelearn.learners.fuzzy_artmap import FuzzyArtmap
from edgelearn.learners.ncm import NearestClassMean
from edgelearn.learners.slda import StreamingLDA

LEARNERS: dict[str, type[Learner]] = {cls.kind: cls for cls in (FuzzyArtmap, StreamingLDA, NearestClassMean)}
ALIASES = {"fuzzy-artmap": "fuzzy_artmap", "fam": "fuzzy_artmap"}


def make_learner(kind: str, **params) -> Learner:
    """A new learner by name: ``fuzzy_artmap`` (or ``fuzzy-artmap``), ``slda`` or ``ncm``."""
    kind = ALIASES.get(kind, kind)
    if kind not in LEARNERS:
        raise ValueError(f"unknown learner {kind!r}; choose one of: {', '.join(LEARNERS)}")
    return LEARNERS[kind](**params)


def learner_from_state(state: dict) -> Learner:
    """Rebuild a learner from :meth:`Learner.state_dict` output."""
    kind = state.get("kind")
    if kind not in LEARNERS:
        raise ValueError(f"unknown learner kind {kind!r} in saved state")
    return LEARNERS[kind]().load_state_dict(state)


__all__ = ["LEARNERS", "FuzzyArtmap", "HeldOut", "Learner", "NearestClassMean", "StreamingLDA", "learner_from_state",
           "make_learner"]
