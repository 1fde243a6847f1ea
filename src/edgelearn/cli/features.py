"""Features of a folder data set for the recognition commands: cached by content, and with --skip-bad without
the images that cannot be read, which are listed after the results."""

import numpy as np

from edgelearn.cli.output import err, log
from edgelearn.data import FeatureCache, FolderDataset
from edgelearn.errors import DatasetError
from edgelearn.recognizer import Recognizer


def embed_readable(rec: Recognizer, ds: FolderDataset, no_cache: bool,
                   unreadable: list[str] | None = None) -> tuple[FolderDataset, np.ndarray]:
    """``ds`` and its features. The first image that cannot be read stops the command; with ``unreadable``
    (a list, --skip-bad) each such image is left out of both and said there."""
    cache = None if no_cache else FeatureCache(rec.backbone.fingerprint_id)
    bad = None if unreadable is None else {}
    X = rec.embed_files(ds.paths, cache=cache, progress=err.is_terminal, unreadable=bad)
    if not bad:
        return ds, X
    unreadable += bad.values()
    keep = [i for i in range(len(ds)) if i not in bad]
    if not keep:
        raise DatasetError(f"none of the {len(ds)} images under {ds.root} can be read")
    return ds.subset(keep), X[keep]


def say_unreadable(unreadable: list[str] | None) -> None:
    """--skip-bad's account, after the results: one line per image left out, then how many."""
    for line in unreadable or []:
        log(f"left out {line}")
    if unreadable:
        log(f"{len(unreadable)} image(s) could not be read and were left out")
