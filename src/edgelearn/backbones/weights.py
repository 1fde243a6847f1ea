"""Where backbone weights come from: a local file (+ JSON sidecar), torchvision's download, or random.

A local weights file may have a sidecar ``<file>.json`` (see ``shared/models``) recording its
architecture, padding mode, preprocessing and sha256; we honour all of it. Any local file is
identified everywhere by its sha256, so two sites agree on features only if they hold the same bytes.

:func:`default_weights` is the one default every command and the station use, so a package learned
by one is accepted by the other.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgelearn.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from edgelearn.errors import WeightsError
from edgelearn.files import default_data_dir

if TYPE_CHECKING:  # torch only where weights are loaded: a bundle (the device install) needs none
    from torch import nn

WEIGHTS_ENV = "EDGELEARN_WEIGHTS"
RANDOM = "random"
DOWNLOAD = "download"
# ImageNet MobileNetV2 next to the checkout (see shared/models): the default where it is present
SHARED_WEIGHTS = Path("../shared/models/mobilenet_v2_imagenet.pt")
SHARED_ARCHITECTURE = "mobilenet_v2"


@dataclass(frozen=True)
class Weights:
    """Resolved weights: what to load, how to identify it in fingerprints, and how to feed the network."""

    kind: str  # "file" | "download" | "random" | "bundle" (ident: the exporting backbone's)
    ident: str  # sha256 of the file, torchvision weights name, or "random:seed=N"
    file: Path | None = None
    meta: dict = field(default_factory=dict)  # sidecar content (architecture, padding, preprocessing)
    native_size: int = 224  # the input size the weights were trained at

    @property
    def sha256(self) -> str | None:
        return self.ident if self.kind == "file" else None

    @property
    def padding(self) -> str:
        return self.meta.get("padding", "symmetric")

    def preprocessing(self, input_size: int | None = None) -> Preprocessing:
        """The weights' preprocessing at ``input_size`` (default: theirs), the resize keeping their ratio."""
        size = int(input_size or self.native_size)
        resize = round(size * self.meta.get("resize_size", 256) / self.meta.get("input_size", 224))
        return Preprocessing(size, resize, tuple(self.meta.get("normalize_mean", IMAGENET_MEAN)),
                             tuple(self.meta.get("normalize_std", IMAGENET_STD)))


def default_weights(weights: str | os.PathLike | None = None, name: str = SHARED_ARCHITECTURE,
                    data_dir: str | os.PathLike | None = None) -> str:
    """The weights to use for backbone ``name``: ``weights`` if given, else ``$EDGELEARN_WEIGHTS``, else a bundle
    ``<name>.edgebundle`` in the data folder (``data_dir``, default :func:`~edgelearn.files.default_data_dir`:
    how a device without PyTorch finds module A), else the shared ImageNet MobileNetV2 file when present (for
    ``mobilenet_v2``), else torchvision's download."""
    if weights is not None:
        return str(weights)
    if os.environ.get(WEIGHTS_ENV):
        return os.environ[WEIGHTS_ENV]
    bundle = Path(data_dir or default_data_dir()) / f"{name}.edgebundle"
    if bundle.is_file():
        return str(bundle.resolve())
    if name == SHARED_ARCHITECTURE and SHARED_WEIGHTS.is_file():
        return str(SHARED_WEIGHTS.resolve())  # absolute: training and federation hand it to other processes
    return DOWNLOAD


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(name: str, weights: str | os.PathLike | None, *, seed: int = 0) -> Weights:
    """Turn the user's ``weights`` choice into :class:`Weights` (``None``: :func:`default_weights`)."""
    weights = default_weights(weights, name)
    native = 32 if name == "tiny" else 224
    if weights == RANDOM:
        return Weights("random", f"random:seed={seed}", native_size=native)
    if weights == DOWNLOAD:
        return Weights("download", f"torchvision:{name}:DEFAULT", native_size=native)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (give an existing state-dict file, "
                           f"'{RANDOM}' or '{DOWNLOAD}')")
    meta = _read_sidecar(path)
    arch = meta.get("architecture", "")
    if arch and arch.rsplit(".", 1)[-1] != name:
        raise WeightsError(f"weights file {path} is for {arch}, not for backbone {name!r}")
    digest = sha256_file(path)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise WeightsError(f"weights file {path} has sha256 {digest[:12]}…, its sidecar says "
                           f"{meta['sha256'][:12]}…: the file is damaged or not the one described")
    return Weights("file", digest, path, meta, int(meta.get("input_size", native)))


def _read_sidecar(path: Path) -> dict:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights sidecar {sidecar} is not valid JSON: {exc}") from exc


def load_into(model: nn.Module, source: Weights, name: str) -> None:
    """Fill ``model`` (a torchvision classifier, head still on) with the weights of ``source``."""
    import torch

    if source.kind == "random":
        return  # the builder already initialised it from the seed
    if source.kind == "file":
        try:
            state = torch.load(source.file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise WeightsError(f"cannot read weights file {source.file}: {exc}") from exc
    else:
        state = _download(name)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    fit_head(model, state)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise WeightsError(f"weights do not fit backbone {name!r}: {str(exc).splitlines()[0]}") from exc


def fit_head(model: nn.Module, state: dict) -> None:
    """Make the last Linear fit the file: a fine-tuned file has its own number of classes, and a
    feature extractor's file has no head at all."""
    from torch import nn

    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = module_name
    if last is None:
        return
    weight = state.get(f"{last}.weight")
    if weight is not None and tuple(weight.shape) == tuple(model.get_submodule(last).weight.shape):
        return
    parent, _, child = last.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    head = nn.Identity() if weight is None else nn.Linear(weight.shape[1], weight.shape[0],
                                                          bias=f"{last}.bias" in state)
    setattr(holder, child, head)


def _download(name: str) -> dict:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        return enum.get_state_dict(progress=False)
    except Exception as exc:
        raise WeightsError(
            f"could not download torchvision weights for {name!r} ({type(exc).__name__}); "
            f"give a local state-dict file with --weights PATH or ${WEIGHTS_ENV}"
        ) from exc
