"""Inspect an image by patches (Kim, Noh and Park): the class is the majority over the grid's patches, and
an image is defective if any patch is.

A class counts as defect-free when its name (last path component) is ``ok``, ``good``, ``normal``,
``defect-free`` … or ends in ``_ok``/``-ok``. Without such a class (NEU: six defect types) every
image is defective and only its class matters.
"""

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from edgelearn.backbones import Preprocessing, build_classifier
from edgelearn.backbones.backbone import fuse_batch_norms
from edgelearn.backbones.weights import sha256_file
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.data.patches import PatchGrid
from edgelearn.errors import ModelFileError
from edgelearn.inspection.student import Student, StudentConfig, count_parameters
from edgelearn.runtime import EXPORT_SUFFIXES, load_runner

OK_NAMES = {"ok", "good", "normal", "defect-free", "defect_free", "defectfree", "non-defective", "no-defect",
            "no_defect"}
STUDENT = "edgelearn.inspection.Student"


def is_defect_free(label: str) -> bool:
    name = label.rsplit("/", 1)[-1].lower()
    return name in OK_NAMES or name.endswith(("_ok", "-ok", " ok"))


@dataclass
class Inspection:
    label: str  # the image's class
    defective: bool
    votes: dict[str, int] = field(default_factory=dict)  # patches per predicted class
    patches: list[str] = field(default_factory=list)  # each grid patch's class, row by row


@dataclass
class InspectionModel:
    """A trained patch classifier (fine-tuned teacher or distilled student) and how to feed it."""

    model: nn.Module | Callable[[torch.Tensor], torch.Tensor]  # a PyTorch model or an export's runner
    classes: list[str]
    preprocessing: Preprocessing
    grid: PatchGrid
    meta: dict
    path: Path | None = None

    @property
    def parameters(self) -> int:
        if "export" in self.meta:
            return self.meta["export"]["parameters"]
        return count_parameters(self.model)


def load_model(path: str | Path, *, grid: PatchGrid | None = None) -> InspectionModel:
    """Load a classifier written by ``edgelearn train``, ``edgelearn distill`` (state dict + JSON
    sidecar) or ``edgelearn compress`` (an export + sidecar). ``grid`` overrides the patch geometry
    recorded at training; a classifier trained on whole images sees the centre crop."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise ModelFileError(f"{path}: need the model file and its sidecar {sidecar.name} "
                             f"(written by `edgelearn train` or `edgelearn distill`)")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{sidecar} is not valid JSON: {exc}") from exc
    if "categories" not in meta:
        raise ModelFileError(f"{path} has no class names in its sidecar: it is a feature extractor, not a classifier")
    arch = meta.get("architecture", "")
    if path.suffix in EXPORT_SUFFIXES:
        model = load_runner(path)
        prep = Preprocessing.from_sidecar(meta)
    elif arch == STUDENT:
        model = _load_student(path, meta)
        prep = Preprocessing.from_sidecar(meta)
    elif arch.startswith("torchvision.models."):
        model, prep, _, _ = build_classifier(arch.rsplit(".", 1)[-1], weights=path)
    else:
        raise ModelFileError(f"{path}: unknown architecture {arch!r}")
    if grid is None:
        patch = meta.get("patch") or {"size": prep.input_size, "grid": 1}
        grid = PatchGrid(patch["size"], patch["grid"])
    if isinstance(model, nn.Module):
        model = model.eval().requires_grad_(False)
    return InspectionModel(model, list(meta["categories"]), prep, grid, meta, path)


def _load_student(path: Path, meta: dict) -> Student:
    if meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise ModelFileError(f"{path} does not match the sha256 in its sidecar: damaged or replaced")
    config = StudentConfig.from_dict(meta["student"])
    model = Student(config)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ModelFileError(f"cannot load student {path}: {str(exc).splitlines()[0]}") from exc
    return model


class Inspector:
    """Classify images by the patch protocol with an :class:`InspectionModel`."""

    def __init__(self, model: InspectionModel):
        self.model = model
        self.parameters = model.parameters  # as trained (fusing drops the batch norms' few)
        # inference only: folded batch norms and channels-last run faster and compute the same function
        self.net = fuse_batch_norms(model.model).to(memory_format=torch.channels_last) \
            if isinstance(model.model, nn.Module) else model.model
        self.transform = model.preprocessing.patch_transform()
        self.defect_free = {i for i, c in enumerate(model.classes) if is_defect_free(c)}

    @classmethod
    def load(cls, path: str | Path, *, grid: PatchGrid | None = None) -> "Inspector":
        return cls(load_model(path, grid=grid))

    @torch.inference_mode()
    def patch_logits(self, images: list[Image.Image]) -> torch.Tensor:
        """``(n_images, n_patches, n_classes)`` logits."""
        crops = [self.transform(c) for image in images for c in self.model.grid.crops(image)]
        x = torch.stack(crops).contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(len(images), -1, len(self.model.classes))

    def inspect(self, images: list[Image.Image]) -> list[Inspection]:
        predicted = self.patch_logits(images).argmax(-1)
        return [self._decide(row.tolist()) for row in predicted]

    def _decide(self, patch_classes: list[int]) -> Inspection:
        votes = Counter(patch_classes)
        defects = Counter({c: n for c, n in votes.items() if c not in self.defect_free})
        # the paper's rule: any defective patch makes the image defective (its class: the most voted defect)
        chosen = (defects or votes).most_common(1)[0][0]
        names = self.model.classes
        return Inspection(names[chosen], bool(defects), {names[c]: n for c, n in votes.most_common()},
                          [names[c] for c in patch_classes])

    def ms_per_image(self, repeats: int = 30) -> float:
        """Median milliseconds of one forward pass over one image's patches (batch = grid²)."""
        side = self.model.preprocessing.input_size
        x = torch.randn(self.model.grid.grid ** 2, 3, side, side).contiguous(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 3):
                start = time.perf_counter()
                self.net(x)
                if i >= 3:  # warm-up
                    times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def evaluate_inspection(inspector: Inspector, dataset: FolderDataset, *, batch_size: int = 16) -> dict:
    """Accuracy by the patch protocol, per-class TPR/TNR (one class against the rest, as Kim, Noh and Park's
    Table 3), defect detection rates when the data have a defect-free class, and the confusion matrix."""
    classes = inspector.model.classes
    unknown = sorted(set(dataset.labels) - set(classes))
    if unknown:
        raise ModelFileError(f"the model does not know the classes {', '.join(unknown[:5])} of {dataset.root}")
    truth, predicted, flagged = [], [], []
    for start in range(0, len(dataset), batch_size):
        chunk = slice(start, start + batch_size)
        results = inspector.inspect([load_image(p) for p in dataset.paths[chunk]])
        truth += dataset.labels[chunk]
        predicted += [r.label for r in results]
        flagged += [r.defective for r in results]
    truth, predicted, flagged = np.array(truth), np.array(predicted), np.array(flagged)
    per_class = {}
    for c in classes:
        positive, said = truth == c, predicted == c
        per_class[c] = {"n": int(positive.sum()),
                        "tpr": float(said[positive].mean()) if positive.any() else None,
                        "tnr": float((~said[~positive]).mean()) if (~positive).any() else None}
    report = {"images": len(truth), "accuracy": float((truth == predicted).mean()), "per_class": per_class,
              "confusion": {c: dict(Counter(predicted[truth == c].tolist())) for c in classes if (truth == c).any()},
              "parameters": inspector.parameters, "patches_per_image": inspector.model.grid.grid ** 2}
    defective = np.array([not is_defect_free(t) for t in truth])
    if inspector.defect_free:
        report["defect_detection"] = {
            "tpr": float(flagged[defective].mean()) if defective.any() else None,
            "tnr": float((~flagged[~defective]).mean()) if (~defective).any() else None}
    return report
