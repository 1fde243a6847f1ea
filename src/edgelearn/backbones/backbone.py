"""Module A: a frozen pretrained CNN that turns images into feature vectors."""

import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from edgelearn.backbones.padding import use_tf_same_padding
from edgelearn.backbones.preprocessing import Preprocessing
from edgelearn.backbones.registry import make_model, seeded, strip_head
from edgelearn.backbones.weights import Weights, load_into, resolve_weights
from edgelearn.errors import EdgelearnError
from edgelearn.runtime import Precision, Runtime


class Backbone:
    """A frozen feature extractor with its preprocessing and a fingerprint of both.

    Build one with :func:`build_backbone`. ``embed`` maps RGB images to ``(n, feature_dim)``
    float32 features; it never trains.
    """

    def __init__(self, name: str, model: nn.Module, preprocessing: Preprocessing,
                 weights: Weights, padding: str):
        self.name = name
        # channels-last runs MobileNet-style depthwise convs ~1.5x faster on x86 CPUs (measured)
        self.model = fuse_batch_norms(model.eval().requires_grad_(False)).to(memory_format=torch.channels_last)
        self.preprocessing = preprocessing
        self.weights = weights
        self.padding = padding
        self.runtime, self.precision = Runtime.TORCH, "fp32"
        self.onnx_path: Path | None = None  # the model ONNX Runtime runs, after use_onnx()
        self._runner = None  # ONNX Runtime session for inference, when use_onnx() was called
        self._transform = preprocessing.transform()
        with torch.inference_mode():
            probe = torch.zeros(1, 3, preprocessing.input_size, preprocessing.input_size)
            self.feature_dim = int(self.model(probe).flatten(1).shape[1])

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> a normalised ``(3, input_size, input_size)`` tensor."""
        return self._transform(image)

    def embed_tensor(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Preprocessed ``(n, 3, s, s)`` batch -> ``(n, feature_dim)`` features (a numpy batch gives a numpy
        array, as a bundle's backbone does). With autograd on the PyTorch model runs; otherwise the ONNX
        Runtime session, if :meth:`use_onnx` set one."""
        if isinstance(batch, np.ndarray):
            with torch.inference_mode():
                return self.embed_tensor(torch.from_numpy(batch)).numpy()
        if self._runner is not None and not torch.is_grad_enabled():
            return self._runner(batch)
        return self.model(batch.to(memory_format=torch.channels_last)).flatten(1)

    def features_and_map(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed ``(n, 3, s, s)`` array -> the features and the last spatial feature map they are the
        average of, ``(n, C, h, w)``, in one forward pass (class-activation heat maps)."""
        with torch.inference_mode():
            if self._runner is not None:
                features, feature_map = self._runner.run(torch.from_numpy(batch))[:2]
            else:
                features, feature_map = self.feature_map_model(torch.from_numpy(batch))
        return features.numpy(), feature_map.numpy()

    @functools.cached_property
    def feature_map_model(self) -> nn.Module:
        """The model with its last spatial feature map as a second output, on PyTorch (the ONNX graph gets the
        same output from :func:`~edgelearn.runtime.onnx.add_feature_map_output`)."""
        return WithFeatureMap(self.model, last_feature_map(self.model, self.preprocessing.input_size)).eval()

    def use_onnx(self, precision: str = "fp32", calibration: Iterable[Image.Image] | None = None) -> "Backbone":
        """Run inference on ONNX Runtime at ``precision`` (``fp32``, ``fp16``, ``int8-dynamic``, ``int8``;
        ``int8`` calibrates activation ranges on ``calibration`` images). The model is exported once per
        fingerprint (and calibration set) into the cache folder and reused. fp32 features equal
        PyTorch's to ~1e-5; other precisions change the features, so they enter the fingerprint."""
        from edgelearn.data.cache import default_cache_dir
        from edgelearn.runtime.onnx import OnnxRunner, add_feature_map_output, export_onnx
        from edgelearn.runtime.quantize import quantize

        precision = Precision.parse(precision)
        folder = default_cache_dir() / "onnx"
        base = folder / f"{self.name}-{self.fingerprint_id}-maps.onnx"  # "-maps": features and feature map
        batches, tag = None, precision
        if precision is Precision.INT8:
            batches = self._calibration_batches(calibration or [])
            digest = hashlib.sha256(b"".join(b.tobytes() for b in batches)).hexdigest()[:12]
            tag = f"int8-cal{digest}"
        path = base if precision is Precision.FP32 else folder / f"{self.name}-{self.fingerprint_id}-{tag}.onnx"

        def make() -> None:
            if not base.is_file():
                add_feature_map_output(export_onnx(self.model, self.preprocessing.input_size, base))
            if path != base:
                quantize(base, path, precision, batches)

        if not path.is_file():
            make()
        try:
            runner = OnnxRunner(path)
        except EdgelearnError:  # a damaged cached file: make it again, once
            base.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            make()
            runner = OnnxRunner(path)
        self._runner, self.runtime, self.precision, self.onnx_path = runner, Runtime.ONNX, str(tag), path
        return self

    def _calibration_batches(self, images: Iterable[Image.Image], batch_size: int = 32) -> list[np.ndarray]:
        tensors = [self.transform(image) for image in images]
        return [torch.stack(tensors[i:i + batch_size]).numpy() for i in range(0, len(tensors), batch_size)]

    def embed(self, images: Iterable[Image.Image], *, batch_size: int = 32) -> np.ndarray:
        """RGB PIL images -> ``(n, feature_dim)`` float32 array, in batches."""
        out, batch = [], []
        with torch.inference_mode():
            for image in images:
                batch.append(self.transform(image))
                if len(batch) == batch_size:
                    out.append(self.embed_tensor(torch.stack(batch)).numpy())
                    batch = []
            if batch:
                out.append(self.embed_tensor(torch.stack(batch)).numpy())
        if not out:
            return np.zeros((0, self.feature_dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    @property
    def fingerprint(self) -> dict:
        """What must be equal for two feature vectors to be comparable (JSON-normalised). A reduced
        precision (and its calibration set) is part of it; fp32 on either runtime is not."""
        variant = {"precision": self.precision} if self.precision != "fp32" else {}
        return json.loads(json.dumps({
            "name": self.name,
            "weights": self.weights.ident,
            "padding": self.padding,
            "feature_dim": self.feature_dim,
            **asdict(self.preprocessing),
            **variant,
        }))

    @property
    def fingerprint_id(self) -> str:
        """A short stable hash of :attr:`fingerprint` (for cache keys and file names)."""
        blob = json.dumps(self.fingerprint, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, weights={self.weights.ident[:24]!r}, input_size="
                f"{self.preprocessing.input_size}, feature_dim={self.feature_dim}, runtime={str(self.runtime)!r}, "
                f"precision={self.precision!r})")


class WithFeatureMap(nn.Module):
    """``model`` returning ``(features, feature map)``: the features are the map's spatial average in every
    torchvision classifier, so a heat map needs no gradient (see :mod:`edgelearn.explain.heatmap`)."""

    def __init__(self, model: nn.Module, layer: nn.Module):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps: list[torch.Tensor] = []
        caller = threading.get_ident()  # the model is shared: another thread's forward pass is not ours
        hook = self.layer.register_forward_hook(
            lambda module, args, output: maps.append(output) if threading.get_ident() == caller else None)
        try:
            features = self.model(image).flatten(1)
        finally:
            hook.remove()
        return features, maps[-1]


def last_feature_map(model: nn.Module, input_size: int) -> nn.Module:
    """The last module whose output is a spatial feature map (4-d, more than 1x1): what heat maps show."""
    found: list[nn.Module] = []
    caller = threading.get_ident()  # a shared model may be running for other threads meanwhile
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(m) if threading.get_ident() == caller
                                     and torch.is_tensor(o) and o.dim() == 4 and o.shape[-1] > 1 else None)
             for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ValueError("the backbone has no spatial feature map to explain")
    return found[-1]


def fuse_batch_norms(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm2d that directly follows a Conv2d (in a Sequential) into the
    conv's weights, in place (the conv keeps its hooks), and drop the BatchNorm: the same function,
    one pass fewer over every feature map."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                    bn.eps, bn.weight, bn.bias)
                conv.weight, conv.bias = weight.requires_grad_(False), bias.requires_grad_(False)
                seq[i + 1] = nn.Identity()
    return model


def build_classifier(name: str, *, weights: str | os.PathLike | None = None, input_size: int | None = None,
                     seed: int = 0) -> tuple[nn.Module, Preprocessing, Weights, str]:
    """The whole classifier, head included and trainable (what fine-tuning starts from), with its
    preprocessing, weights source and padding mode. :func:`build_backbone` freezes it and drops the head."""
    source = resolve_weights(name, weights, seed=seed)
    model = seeded(lambda: make_model(name), seed)
    load_into(model, source, name)
    preprocessing = source.preprocessing(input_size)
    if source.padding == "tf_same":
        use_tf_same_padding(model, mean=preprocessing.mean, std=preprocessing.std)
    return model, preprocessing, source, source.padding


def build_backbone(name: str = "mobilenet_v2", *, weights: str | os.PathLike | None = None,
                   input_size: int | None = None, seed: int = 0, runtime: str = "torch", precision: str = "fp32",
                   calibration: Iterable[Image.Image] | None = None) -> Backbone:
    """Build a frozen feature extractor.

    Parameters
    ----------
    name : a torchvision classification model name (``mobilenet_v2``, ``resnet18``, …) or a
        registered backbone (``tiny``: a small random CNN for tests).
    weights : a local state-dict file, ``"download"`` (torchvision's own, needs the network),
        ``"random"`` (seeded random init, for tests), or ``None``: ``$EDGELEARN_WEIGHTS`` if set, else
        the shared ImageNet MobileNetV2 file when present, else ``"download"`` (see
        :func:`~edgelearn.backbones.weights.default_weights`). A sidecar ``<file>.json`` sets padding
        and preprocessing.
    input_size : the square crop fed to the network (224 standard; the DICLA paper used 96).
    seed : seed of the random init (recorded in the fingerprint).
    runtime : ``"torch"`` or ``"onnx"`` (ONNX Runtime for inference; the same features, faster on CPUs).
    precision, calibration : ONNX Runtime only: see :meth:`Backbone.use_onnx`.

    Examples
    --------
    >>> bb = build_backbone("tiny", weights="random", input_size=32)
    >>> from PIL import Image
    >>> bb.embed([Image.new("RGB", (40, 30))]).shape
    (1, 32)
    """
    model, preprocessing, source, padding = build_classifier(name, weights=weights, input_size=input_size, seed=seed)
    backbone = Backbone(name, strip_head(model), preprocessing, source, padding)
    runtime = Runtime.parse(runtime)
    if runtime is Runtime.TORCH and precision != Precision.FP32:
        raise ValueError(f"precision {precision!r} needs runtime='onnx'")
    return backbone.use_onnx(precision, calibration) if runtime is Runtime.ONNX else backbone
