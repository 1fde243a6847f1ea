"""Detectors for a CPU on our ImageNet MobileNetV2 (Mottakin's two families): SSDlite and RetinaNet.

A :class:`Detector` is three parts. The **trunk** is the frozen pretrained MobileNetV2 (transfer
learning as in the paper): it turns a ``size`` x ``size`` image in [0, 1] into two feature maps, the
576-channel expansion of block 14 (stride 16, SSDlite's first source) and the 1280-channel last
layer (stride 32). Because it never changes, training may compute its maps once and cache them.
The **neck** (SSDlite's extra layers, or RetinaNet's feature pyramid) and the **head** (class scores
and box offsets per anchor) learn. torchvision's ``SSD`` / ``RetinaNet`` supply anchors, matching,
losses (RetinaNet's focal loss) and the decoding with non-maximum suppression.

Labels are 1..K; column 0 is the background (SSD's softmax needs it; RetinaNet's sigmoid never
sees a positive there). A detector file is self-contained (trunk included, no weights file needed).
"""

import os
from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation

from edgelearn.backbones import build_classifier, default_weights
from edgelearn.backbones.padding import use_tf_same_padding
from edgelearn.errors import EdgelearnError, IncompatibleError, ModelFileError
from edgelearn.files import atomic_write_bytes, container_bytes, read_container

ARCHITECTURES = ("ssdlite", "retinanet")
FORMAT, VERSION = "edgelearn-detector", 1
BACKBONE = "mobilenet_v2"


class Trunk(nn.Module):
    """The frozen MobileNetV2: image in [0, 1] -> (C4: 576 x S/16, C5: 1280 x S/32)."""

    def __init__(self, features: nn.Sequential, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        block14 = features[14].conv  # stride 2, no residual: its expansion output is C4
        self.body = nn.Sequential(*features[:14], block14[0])
        self.rest = nn.Sequential(*block14[1:], *features[15:])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Trunk":
        """Always in eval mode: frozen means its batch norms keep ImageNet's statistics too."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c4 = self.body((x - self.mean) / self.std)
        return c4, self.rest(c4)


def _extra(in_channels: int, out_channels: int) -> nn.Sequential:
    """SSDlite's extra layer: 1x1 squeeze, depthwise 3x3 stride 2, 1x1 expand."""
    mid, act = out_channels // 2, nn.ReLU6
    return nn.Sequential(Conv2dNormActivation(in_channels, mid, 1, activation_layer=act),
                         Conv2dNormActivation(mid, mid, 3, stride=2, groups=mid, activation_layer=act),
                         Conv2dNormActivation(mid, out_channels, 1, activation_layer=act))


class SSDLiteNeck(nn.Module):
    """C4, C5 and four extra layers down to 1x1 at 320 px: six maps for SSDlite's head."""

    def __init__(self):
        super().__init__()
        self.channels = [576, 1280, 512, 256, 256, 128]
        self.extras = nn.ModuleList(_extra(a, b) for a, b in zip(self.channels[1:-1], self.channels[2:], strict=True))

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        maps = [c4, c5]
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps


class PyramidNeck(nn.Module):
    """RetinaNet's feature pyramid on C4, C5, plus P6 and P7 (strides 16-128), ``width`` channels."""

    def __init__(self, width: int = 96):
        super().__init__()
        self.channels = [width] * 4
        self.fpn = FeaturePyramidNetwork([576, 1280], width, extra_blocks=LastLevelP6P7(width, width))

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        return list(self.fpn(OrderedDict([("c4", c4), ("c5", c5)])).values())


class _Backbone(nn.Module):
    """Trunk + neck as torchvision's detectors call a backbone (image -> named maps)."""

    def __init__(self, trunk: Trunk, neck: nn.Module):
        super().__init__()
        self.trunk, self.neck = trunk, neck
        self.out_channels = neck.channels[0]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return OrderedDict((str(i), m) for i, m in enumerate(self.neck(*self.trunk(x))))


def _torchvision_detector(arch: str, backbone: _Backbone, n_columns: int, size: int) -> nn.Module:
    no_norm = {"image_mean": [0.0] * 3, "image_std": [1.0] * 3}  # the trunk normalises
    if arch == "ssdlite":
        anchors = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
        head = SSDLiteHead(backbone.neck.channels, anchors.num_anchors_per_location(), n_columns,
                           partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
        return SSD(backbone, anchors, (size, size), n_columns, head=head, score_thresh=0.01, nms_thresh=0.45,
                   detections_per_img=100, topk_candidates=300, **no_norm)
    anchors = AnchorGenerator(tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256)),
                              ((0.5, 1.0, 2.0),) * 4)
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], n_columns,
                         norm_layer=partial(nn.GroupNorm, 16))
    return RetinaNet(backbone, n_columns, min_size=size, max_size=size, anchor_generator=anchors, head=head,
                     score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, topk_candidates=300, **no_norm)


class Detector(nn.Module):
    """A detector of ``classes`` on ``size`` x ``size`` inputs; see the module's text.

    Build one with :func:`build_detector` (pretrained trunk) or :func:`load_detector` (a saved file).
    ``meta`` records the trunk's origin (weights sha256, padding, normalisation).
    """

    def __init__(self, arch: str, classes: list[str], size: int, trunk: Trunk, meta: dict):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise EdgelearnError(f"unknown detector {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if not classes or len(set(classes)) != len(classes):
            raise EdgelearnError(f"a detector needs distinct class names, got {classes}")
        self.arch, self.classes, self.size, self.meta = arch, list(classes), int(size), dict(meta)
        self.thresholds: dict[str, float] = {}  # per class, chosen on validation pictures (best F1)
        neck = SSDLiteNeck() if arch == "ssdlite" else PyramidNeck()
        self.det = _torchvision_detector(arch, _Backbone(trunk, neck), len(classes) + 1, self.size)
        with torch.no_grad():
            maps = neck.eval()(*trunk(torch.zeros(1, 3, self.size, self.size)))
        self.map_sizes = [tuple(m.shape[-2:]) for m in maps]
        self._anchors = self.det.anchor_generator(self._images(1), maps)[0]

    @property
    def trunk(self) -> Trunk:
        return self.det.backbone.trunk

    @property
    def learning(self) -> list[nn.Module]:
        """The modules that train (the trunk stays frozen, its batch norms in eval mode)."""
        return [self.det.backbone.neck, self.det.head]

    def _images(self, n: int) -> ImageList:
        return ImageList(torch.empty(n, 3, self.size, self.size), [(self.size, self.size)] * n)

    def head_outputs(self, c4: torch.Tensor, c5: torch.Tensor) -> dict[str, torch.Tensor]:
        """Trunk maps -> ``cls_logits`` (N, anchors, K+1) and ``bbox_regression`` (N, anchors, 4)."""
        return self.det.head(self.det.backbone.neck(c4, c5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, size, size) in [0, 1] -> raw (class scores, box offsets): what ONNX exports."""
        out = self.head_outputs(*self.trunk(x))
        return out["cls_logits"], out["bbox_regression"]

    def losses(self, c4: torch.Tensor, c5: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """torchvision's training losses (SSD: softmax with hard negatives; RetinaNet: focal) from trunk maps;
        ``targets`` in the ``size`` x ``size`` frame."""
        return self.losses_from(self.head_outputs(c4.float(), c5.float()), targets)

    def losses_from(self, out: dict[str, torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        anchors = [self._anchors] * len(targets)
        if self.arch == "retinanet":
            return self.det.compute_loss(targets, out, anchors)
        matched = [self.det.proposal_matcher(box_ops.box_iou(t["boxes"], self._anchors)) if len(t["boxes"])
                   else torch.full((len(self._anchors),), -1, dtype=torch.int64) for t in targets]
        return self.det.compute_loss(targets, out, anchors, matched)

    def decode(self, cls_logits: torch.Tensor, bbox_regression: torch.Tensor,
               sizes: list[tuple[int, int]] | None = None) -> list[dict[str, torch.Tensor]]:
        """Raw outputs -> per image ``boxes`` (XYXY), ``scores``, ``labels`` (1..K) after NMS, in the
        images' original ``(height, width)`` (default: the ``size`` x ``size`` frame)."""
        n = len(cls_logits)
        out, frame = {"cls_logits": cls_logits, "bbox_regression": bbox_regression}, [(self.size, self.size)] * n
        with torch.no_grad():
            if self.arch == "ssdlite":
                found = self.det.postprocess_detections(out, [self._anchors] * n, frame)
            else:
                per_level = [h * w * (len(self._anchors) // sum(h * w for h, w in self.map_sizes))
                             for h, w in self.map_sizes]
                split = {k: list(v.split(per_level, dim=1)) for k, v in out.items()}
                found = self.det.postprocess_detections(split, [list(self._anchors.split(per_level))] * n, frame)
        return self.det.transform.postprocess(found, frame, sizes or frame)

    def extended(self, new_classes: list[str]) -> "Detector":
        """A detector of ``classes + new_classes``: every old weight copied exactly, new class columns as
        a fresh head initialises them (Mottakin's thesis, section 3.4: the classification head grows by n)."""
        if not new_classes or set(new_classes) & set(self.classes):
            raise EdgelearnError(f"new classes must be given and differ from the detector's {self.classes}")
        bigger = Detector(self.arch, self.classes + list(new_classes), self.size, _trunk(self.meta)[0], self.meta)
        state = bigger.state_dict()
        old, new = len(self.classes) + 1, len(bigger.classes) + 1
        for key, value in self.state_dict().items():
            if state[key].shape == value.shape:
                state[key] = value.clone()
            else:  # a class-score layer: anchors x columns, the old columns first for every anchor
                rows = state[key].view(-1, new, *value.shape[1:]).clone()
                rows[:, :old] = value.view(-1, old, *value.shape[1:])
                state[key] = rows.view_as(state[key])
        bigger.load_state_dict(state)
        bigger.thresholds = dict(self.thresholds)
        return bigger

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (atomic): the manifest (architecture, classes, size, trunk origin) + weights."""
        manifest = {"format": FORMAT, "version": VERSION, "arch": self.arch, "classes": self.classes,
                    "size": self.size, "backbone": BACKBONE, **self.meta,
                    **({"thresholds": self.thresholds} if self.thresholds else {})}
        arrays = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        atomic_write_bytes(path, container_bytes(manifest, arrays))
        return Path(path)


def _trunk(meta: dict, weights=None, seed: int = 0) -> Trunk:
    model, pre, source, padding = build_classifier(BACKBONE, weights=weights or "random", seed=seed)
    if weights is None and meta.get("padding") == "tf_same":  # a saved detector: pad like its trunk was trained
        use_tf_same_padding(model, mean=meta["mean"], std=meta["std"])
    return Trunk(model.features, meta.get("mean", pre.mean), meta.get("std", pre.std)), pre, source, padding


def build_detector(classes: list[str], *, arch: str = "ssdlite", size: int = 320,
                   weights: str | os.PathLike | None = None, seed: int = 0) -> Detector:
    """A new detector: the pretrained MobileNetV2 trunk (``weights`` as for backbones: a file,
    ``"download"``, ``"random"`` or by default :func:`~edgelearn.backbones.default_weights`) and freshly
    initialised neck and head."""
    if size < 64:
        raise EdgelearnError(f"input size {size} is too small for a detector (at least 64)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trunk, pre, source, padding = _trunk({}, default_weights(weights, BACKBONE), seed)
        meta = {"weights": source.ident, "padding": padding, "mean": list(pre.mean), "std": list(pre.std)}
        return Detector(arch, classes, size, trunk, meta)


def load_detector(path: str | os.PathLike) -> Detector:
    """Read a file written by :meth:`Detector.save`; anything else is refused with a clear error."""
    manifest, arrays = read_container(path)
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an edgelearn detector (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise IncompatibleError(f"{path}: detector format version {manifest.get('version')}, "
                                f"this edgelearn reads version {VERSION}")
    meta = {k: manifest[k] for k in ("weights", "padding", "mean", "std") if k in manifest}
    try:
        detector = Detector(manifest["arch"], manifest["classes"], manifest["size"], _trunk(meta)[0], meta)
        detector.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        detector.thresholds = read_thresholds(manifest, path)
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ModelFileError(f"{path}: damaged detector file ({str(exc).splitlines()[0]})") from exc
    return detector.eval()


def read_thresholds(manifest: dict, source) -> dict[str, float]:
    """A manifest's per-class score thresholds (none in files from before they were chosen)."""
    thresholds = manifest.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(isinstance(v, int | float) and 0 <= v <= 1
                                                   for v in thresholds.values()):
        raise ModelFileError(f"{source}: damaged detector file (its score thresholds are not numbers in 0..1)")
    return {str(k): float(v) for k, v in thresholds.items()}
