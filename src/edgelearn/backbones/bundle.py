"""Module A as one file that runs without PyTorch: a bundle, made once on a workstation.

A bundle (``.edgebundle``) is a zip holding the backbone's ONNX graph (``model.onnx``) and a JSON sidecar
(``bundle.json``): the backbone's fingerprint (exactly :attr:`Backbone.fingerprint`, so knowledge moves
freely between the PyTorch backbone and its bundle), its preprocessing, feature width, precision and the
graph's sha256, which is checked on every load. :class:`BundleBackbone` runs it on ONNX Runtime and
preprocesses with Pillow + numpy (:meth:`Preprocessing.array`): it needs neither torch nor torchvision.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from edgelearn.backbones.preprocessing import Preprocessing
from edgelearn.backbones.weights import Weights
from edgelearn.errors import ModelFileError, ParameterError, WeightsError
from edgelearn.files import atomic_write_bytes

if TYPE_CHECKING:
    from edgelearn.backbones.backbone import Backbone

BUNDLE_SUFFIX = ".edgebundle"
FORMAT = "edgelearn-bundle/1"
GRAPH, SIDECAR = "model.onnx", "bundle.json"
MAX_GRAPH_BYTES = 2 * 2**30  # ONNX's own limit for a graph in one file
MAX_SIDECAR_BYTES = 2**20


def is_bundle(weights: str | os.PathLike | None) -> bool:
    """Whether a ``weights`` choice names a bundle: ``NAME.edgebundle``, or an ONNX file with the same sidecar
    beside it unzipped (``NAME.onnx`` + ``NAME.onnx.json``)."""
    return weights is not None and (str(weights).endswith(BUNDLE_SUFFIX) or str(weights).endswith(".onnx"))


def export_bundle(backbone: Backbone, path: str | os.PathLike, precision: str = "fp32",
                  calibration: Iterable[Image.Image] | None = None) -> Path:
    """Write ``backbone`` (PyTorch, on the workstation) at ``precision`` as one bundle file, atomically.
    ``calibration``: representative images, for ``int8`` only (see :meth:`Backbone.use_onnx`)."""
    path = Path(path)
    if path.suffix != BUNDLE_SUFFIX:
        raise ParameterError(f"{path}: name the bundle NAME{BUNDLE_SUFFIX}")
    backbone.use_onnx(precision, calibration)  # exports (once per fingerprint) into the cache folder
    graph = backbone.onnx_path.read_bytes()
    sidecar = {"format": FORMAT, "fingerprint": backbone.fingerprint, "preprocessing": asdict(backbone.preprocessing),
               "feature_dim": backbone.feature_dim, "precision": backbone.precision,
               "graph_sha256": hashlib.sha256(graph).hexdigest()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(SIDECAR, json.dumps(sidecar, indent=1))
        archive.writestr(GRAPH, graph)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_bundle(path: str | os.PathLike) -> tuple[dict, bytes]:
    """A bundle's sidecar and graph bytes; refuses a missing, malformed, altered or damaged file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"bundle not found: {path} (make one with edgelearn export-backbone)")
    try:
        sidecar, graph = _read_onnx_and_sidecar(path) if path.suffix == ".onnx" else _read_zip(path)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable bundle ({exc}); export it again") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a bundle of format {FORMAT!r}; export it again with this version")
    if hashlib.sha256(graph).hexdigest() != sidecar.get("graph_sha256"):
        raise ModelFileError(f"{path}: the graph's sha256 differs from the one its sidecar records: the bundle "
                             f"was altered or damaged")
    return sidecar, graph


def _read_zip(path: Path) -> tuple[dict, bytes]:
    with zipfile.ZipFile(path) as archive:
        return json.loads(_member(archive, SIDECAR, MAX_SIDECAR_BYTES, path)), _member(archive, GRAPH, MAX_GRAPH_BYTES,
                                                                                       path)


def _read_onnx_and_sidecar(path: Path) -> tuple[dict, bytes]:
    """An ONNX file and its sidecar ``<file>.json`` (the bundle's ``bundle.json``, side by side)."""
    sidecar = Path(f"{path}.json")
    if not sidecar.is_file():
        raise WeightsError(f"{path}: an ONNX file runs as module A only with its sidecar {sidecar.name} (fingerprint, "
                           f"preprocessing, sha256); make both with edgelearn export-backbone")
    for file, limit in ((sidecar, MAX_SIDECAR_BYTES), (path, MAX_GRAPH_BYTES)):
        if file.stat().st_size > limit:
            raise ModelFileError(f"{file}: {file.stat().st_size} bytes, more than the {limit} allowed")
    return json.loads(sidecar.read_bytes()), path.read_bytes()


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ModelFileError(f"{path}: a bundle holds {GRAPH} and {SIDECAR}; {name} is missing") from None
    if info.file_size > limit:
        raise ModelFileError(f"{path}: {name} declares {info.file_size} bytes, more than the {limit} allowed")
    return archive.read(info)  # zip checks the member's CRC


class BundleBackbone:
    """Module A from a bundle: ONNX Runtime + Pillow + numpy, no PyTorch. ``embed`` maps RGB images to
    ``(n, feature_dim)`` float32 features, like :class:`Backbone`, with the same :attr:`fingerprint`."""

    runtime = "onnx"
    onnx_path = None  # the graph lives inside the bundle

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        sidecar, graph = read_bundle(path)
        try:
            self._fingerprint = dict(sidecar["fingerprint"])
            self.name, self.padding = self._fingerprint["name"], self._fingerprint["padding"]
            self.preprocessing = Preprocessing(**{**sidecar["preprocessing"],
                                                  "mean": tuple(sidecar["preprocessing"]["mean"]),
                                                  "std": tuple(sidecar["preprocessing"]["std"])})
            self.feature_dim, self.precision = int(sidecar["feature_dim"]), str(sidecar["precision"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: the bundle's sidecar lacks or garbles {exc}; export it again") from None
        self.weights = Weights("bundle", self._fingerprint["weights"], Path(path).expanduser(), sidecar,
                               self.preprocessing.input_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's choice (the physical cores)
        # no busy-waiting between runs: on a small CPU the HTTP stack and the learner need those cycles
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no memory pool: teaching 16 images at once left 130 MB in it for good; without it the memory returns
        # and batch-1 frames/s are the same or better (58 vs 50 at 224 px, 2 threads, measured)
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own types for a bad graph
            raise ModelFileError(f"{path}: ONNX Runtime cannot run the bundle's graph ({exc})") from exc
        self._input = self.session.get_inputs()[0].name
        self._outputs = [output.name for output in self.session.get_outputs()]

    @property
    def fingerprint(self) -> dict:
        """What must be equal for two feature vectors to be comparable: the exporting backbone's own."""
        return dict(self._fingerprint)

    @property
    def fingerprint_id(self) -> str:
        blob = json.dumps(self.fingerprint, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def transform(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> a normalised ``(3, input_size, input_size)`` float32 array."""
        return self.preprocessing.array(image)

    def embed_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed ``(n, 3, s, s)`` array -> ``(n, feature_dim)`` features."""
        x = np.ascontiguousarray(batch, np.float32)
        return self.session.run(self._outputs[:1], {self._input: x})[0].reshape(len(x), -1)

    def features_and_map(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed ``(n, 3, s, s)`` array -> the features and the last spatial feature map they are the
        average of, ``(n, C, h, w)``, in one forward pass (class-activation heat maps)."""
        if len(self._outputs) < 2:
            raise ParameterError(f"{self.weights.file}: this bundle holds no feature map, so it cannot draw heat "
                                 f"maps; export it again with this version of edgelearn")
        features, feature_map = self.session.run(self._outputs[:2], {self._input: np.ascontiguousarray(batch,
                                                                                                        np.float32)})
        return features.reshape(len(batch), -1), feature_map

    def embed(self, images: Iterable[Image.Image], *, batch_size: int = 32) -> np.ndarray:
        """RGB PIL images -> ``(n, feature_dim)`` float32 array, in batches."""
        out, batch = [], []
        for image in images:
            batch.append(self.transform(image))
            if len(batch) == batch_size:
                out.append(self.embed_tensor(np.stack(batch)))
                batch = []
        if batch:
            out.append(self.embed_tensor(np.stack(batch)))
        if not out:
            return np.zeros((0, self.feature_dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (f"BundleBackbone({self.name!r}, bundle={str(self.weights.file)!r}, input_size="
                f"{self.preprocessing.input_size}, feature_dim={self.feature_dim}, precision={self.precision!r})")


def load_bundle_backbone(path: str | os.PathLike, name: str | None = None, input_size: int | None = None,
                         precision: str | None = None) -> BundleBackbone:
    """The bundle at ``path``, checked against what the caller asked for: a bundle is made for one backbone,
    input size and precision (``None``, the default, accepts the bundle's own)."""
    backbone = BundleBackbone(path)
    if name is not None and name != backbone.name:
        raise WeightsError(f"bundle {path} holds backbone {backbone.name!r}, not {name!r}: "
                           f"give --backbone {backbone.name}")
    if input_size is not None and int(input_size) != backbone.preprocessing.input_size:
        raise WeightsError(f"bundle {path} takes {backbone.preprocessing.input_size} px inputs, not {input_size}: "
                           f"export a bundle at --input-size {input_size}")
    if precision is not None and precision != backbone.precision.split("-cal")[0]:  # int8's tag: its calibration
        raise ParameterError(f"bundle {path} is {backbone.precision}, not {precision}: export a bundle at "
                             f"--precision {precision}")
    return backbone
