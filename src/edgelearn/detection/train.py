"""Training a detector's neck and head on cached trunk maps, with the project's one loop (``fit``).

The trunk is frozen (Mottakin's transfer learning), so each image's trunk maps are computed once
per *view* and kept: view 1 is the image, view 2 its mirror, further views are random SSD
augmentations. Each epoch then trains on one random view per image, hundreds of images a second on a
CPU instead of a few. Three uses share :func:`train_detector`:

* a new detector on a VOC folder;
* an online session (Mottakin's thesis, section 3.4, scenario 1): ``start_from`` an earlier detector, new
  data of the classes it knows;
* new classes (scenario 2): ``start_from`` a detector and data with classes it does not know: its
  head grows (:meth:`Detector.extended`); with ``distill`` the old detector's class scores (MSE,
  eq. 3.2) and boxes (smooth L1, eq. 3.3) are kept while the new ones are learned; ``exemplars``
  adds a few random images per old class from the old data (a bounded exemplar set).
"""

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track
from torch.utils.data import DataLoader, Dataset, Subset

from edgelearn.detection.augment import mirror, resize, ssd_augmentation
from edgelearn.detection.models import Detector, build_detector, load_detector
from edgelearn.detection.thresholds import per_class
from edgelearn.detection.voc import VOCDataset, collate
from edgelearn.errors import DatasetError, EdgelearnError
from edgelearn.training.finetune import split_validation
from edgelearn.training.loop import fit

MAX_CACHE_BYTES = 8 * 2**30
LR_NEW, LR_CONTINUE = 1e-3, 3e-4
CONFIDENT = 0.5  # boxes are distilled where the old detector is at least this sure of an old class


@dataclass
class TrunkMaps(Dataset):
    """The trunk's maps of every image in every view (float16), and the targets in the input frame."""
    c4: torch.Tensor  # views x images x 576 x S/16 x S/16
    c5: torch.Tensor  # views x images x 1280 x S/32 x S/32
    targets: list[list[dict]]  # views x images; labels 1..K index ``classes``
    images: list[str]  # the pictures' paths: the key by which maps are looked up again
    classes: list[str]
    random_view: bool = True

    def __len__(self) -> int:
        return self.c4.shape[1]

    def __getitem__(self, i: int):
        v = int(torch.randint(len(self.targets), ())) if self.random_view else 0
        return (self.c4[v, i], self.c5[v, i]), self.targets[v][i]

    def first_view(self) -> "TrunkMaps":
        return TrunkMaps(self.c4[:1], self.c5[:1], self.targets[:1], self.images, self.classes, random_view=False)

    def select(self, images: list[str], classes: list[str]) -> "TrunkMaps":
        """The maps of ``images`` (in that order) with labels renumbered for ``classes``; boxes of other
        classes are dropped. Lets several trainings on parts of one data set share one pass of the trunk."""
        where = {p: i for i, p in enumerate(self.images)}
        missing = [p for p in images if p not in where]
        if missing:
            raise EdgelearnError(f"no cached trunk maps for {len(missing)} pictures, e.g. {missing[0]}")
        index = torch.tensor([where[p] for p in images], dtype=torch.long)
        renumber = torch.tensor([0] + [classes.index(c) + 1 if c in classes else -1 for c in self.classes])
        targets = [[_renumbered(view[i], renumber) for i in index.tolist()] for view in self.targets]
        return TrunkMaps(self.c4[:, index], self.c5[:, index], targets, list(images), list(classes))


def _renumbered(target: dict, renumber: torch.Tensor) -> dict:
    labels = renumber[target["labels"]]
    keep = labels > 0
    return {"boxes": target["boxes"][keep], "labels": labels[keep]}


def trunk_maps(detector: Detector, dataset: VOCDataset, indices: list[int] | None = None, *, views: int = 1,
               seed: int = 0, batch_size: int = 16, progress: bool = False) -> TrunkMaps:
    """Run the frozen trunk once per view over ``dataset`` (or its ``indices``)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    need = views * len(indices) * 2 * (576 * (detector.size / 16) ** 2 + 1280 * (detector.size / 32) ** 2)
    if need > MAX_CACHE_BYTES:
        raise EdgelearnError(f"caching {views} views of {len(indices)} images needs {need / 2**30:.1f} GiB; "
                             f"use fewer views or a smaller input size")
    transforms = [resize(detector.size), mirror(detector.size)]
    transforms += [ssd_augmentation(detector.size)] * max(views - 2, 0)
    c4s, c5s, targets = [], [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for v in range(views):
            dataset.transforms = transforms[v]
            loader = DataLoader(Subset(dataset, indices), batch_size, collate_fn=collate)
            maps, view_targets = [], []
            for images, batch_targets in track(loader, f"trunk maps, view {v + 1}/{views}", disable=not progress,
                                               transient=True):
                with torch.no_grad():
                    maps.append([m.half() for m in detector.trunk(torch.stack(images))])
                view_targets += [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]}
                                 for t in batch_targets]
            c4s.append(torch.cat([m[0] for m in maps]))
            c5s.append(torch.cat([m[1] for m in maps]))
            targets.append(view_targets)
    dataset.transforms = None
    return TrunkMaps(torch.stack(c4s), torch.stack(c5s), targets, picture_keys(dataset, indices), list(dataset.classes))


def picture_keys(dataset: VOCDataset, indices=None) -> list[str]:
    """The pictures' real paths (links followed): what cached maps are found by."""
    return [str(dataset.annotations[i].image.resolve()) for i in (range(len(dataset)) if indices is None else indices)]


def stacked(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's (C4, C5) pairs as two float batches."""
    return torch.stack([p[0] for p in pairs]).float(), torch.stack([p[1] for p in pairs]).float()


def detection_loss(model: Detector, batch):
    """The detector's own loss (classification + box regression): ``fit``'s loss, no accuracy."""
    pairs, targets = batch
    return sum(model.losses(*stacked(pairs), list(targets)).values()), None, targets


def distillation_loss(old: Detector):
    """Detection loss on the new data + eq. 3.2 (MSE of the old classes' scores, background included)
    + eq. 3.3 (smooth L1 of the boxes where the old detector is confident of an old class)."""
    old.eval()
    columns = len(old.classes) + 1

    def loss(model: Detector, batch):
        pairs, targets = batch
        c4, c5 = stacked(pairs)
        out = model.head_outputs(c4, c5)
        with torch.no_grad():
            teacher = old.head_outputs(c4, c5)
        value = sum(model.losses_from(out, list(targets)).values())
        return value + distillation_terms(out, teacher, columns, old.arch), None, targets

    return loss


def distillation_terms(student: dict, teacher: dict, columns: int, arch: str) -> torch.Tensor:
    """Eq. 3.2 + eq. 3.3 between a new detector's outputs and the old one's (zero if they agree)."""
    cls_loss = F.mse_loss(student["cls_logits"][..., :columns], teacher["cls_logits"])
    scores = teacher["cls_logits"]
    sure = (scores.softmax(-1)[..., 1:] if arch == "ssdlite" else scores.sigmoid()[..., 1:]).amax(-1) > CONFIDENT
    if not sure.any():
        return cls_loss
    box_loss = F.smooth_l1_loss(student["bbox_regression"][sure], teacher["bbox_regression"][sure],
                                reduction="none").sum(-1).mean()
    return cls_loss + box_loss


def exemplar_indices(dataset: VOCDataset, classes: list[str], per_class: int, seed: int) -> list[int]:
    """At most ``per_class`` random images per class (Mottakin's thesis: random exemplars, bounded set)."""
    rng = np.random.default_rng(seed)
    chosen = set()
    for name in classes:
        pool = [i for i in dataset.subset_classes([name]) if i not in chosen]
        chosen.update(rng.permutation(pool)[:per_class].tolist())
    return sorted(chosen)


def train_detector(dataset: str | os.PathLike | VOCDataset, output: str | os.PathLike, *, arch: str = "ssdlite",
                   size: int = 320, weights=None, start_from: str | os.PathLike | Detector | None = None,
                   distill: bool = False, exemplars: str | os.PathLike | VOCDataset | None = None,
                   per_class: int = 20, epochs: int = 30, batch_size: int = 16, lr: float | None = None, views: int = 2,
                   val_fraction: float = 0.1, seed: int = 0, maps: TrunkMaps | None = None,
                   resume: bool = False, progress: bool = False, log=print) -> dict:
    """Train a detector's neck and head; the best epoch by validation loss is saved to ``output``.

    ``dataset``: a VOC folder (or :class:`VOCDataset`). ``start_from``: an earlier detector (file or
    object) to continue from; classes of the data it does not know are added to its head. ``distill``
    keeps the old detector's outputs (Mottakin's eq. 3.1); ``exemplars``: the old data set, from which
    ``per_class`` random images of each old class join the training. ``views``: trunk maps cached per
    image (1 = the image, 2 = + its mirror, more = + SSD augmentations). ``lr`` (AdamW, cosine-annealed):
    by default 1e-3 for a new detector and 3e-4 when continuing from one, whose old classes small
    steps keep (measured in benchmarks/detection.py). ``maps``: trunk maps computed earlier
    (:func:`trunk_maps`) of a set of pictures that includes these (benchmarks share them between runs).
    Returns the run's summary: classes, history, best epoch, trainable parameters.
    """
    old = _start(start_from)
    data = dataset if isinstance(dataset, VOCDataset) else VOCDataset(dataset, ignore_other_classes=False)
    known = old.classes if old is not None else []
    new_classes = [c for c in data.classes if c not in known]
    if old is None:
        detector = build_detector(data.classes, arch=arch, size=size, weights=weights, seed=seed)
    else:
        detector = old.extended(new_classes) if new_classes else copy.deepcopy(old)  # old stays the teacher
    if distill and old is None:
        raise EdgelearnError("distillation needs a detector to start from (--from)")
    data = VOCDataset(data.root, classes=detector.classes) if data.classes != detector.classes else data
    parts, labels = [data], list(data.labels)
    if exemplars is not None:
        if old is None:
            raise EdgelearnError("exemplars keep old classes: they need a detector to start from (--from)")
        pool = exemplars if isinstance(exemplars, VOCDataset) else VOCDataset(exemplars, classes=old.classes,
                                                                                 ignore_other_classes=True)
        pool = VOCDataset(pool.root, classes=detector.classes, ignore_other_classes=True)
        chosen = exemplar_indices(pool, old.classes, per_class, seed)
        parts.append(Subset(pool, chosen))
        labels += [pool.labels[i] for i in chosen]
    maps = _maps_of(detector, parts, views, seed, progress, maps)
    train_idx, val_idx = split_validation(SimpleNamespace(classes=sorted(set(labels)), labels=labels),
                                          val_fraction, seed)
    if not train_idx or not val_idx:
        raise DatasetError(f"{data.root}: too few images to hold some out for validation")
    output = Path(output)
    names = sorted(set(labels))
    params = [p for m in detector.learning for p in m.parameters()]
    lr = lr or (LR_NEW if old is None else LR_CONTINUE)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    config = {"task": "detection", "arch": detector.arch, "classes": detector.classes, "size": detector.size,
              "weights": detector.meta.get("weights"), "start_from": _name(start_from), "distill": distill,
              "exemplars": len(parts) > 1 and per_class, "views": views, "lr": lr, "batch_size": batch_size,
              "seed": seed}
    loss = distillation_loss(old) if distill else detection_loss
    history, best = fit(detector, optimizer, Subset(maps, train_idx), Subset(maps.first_view(), val_idx),
                        targets=[names.index(labels[i]) for i in train_idx], n_classes=len(names), epochs=epochs,
                        batch_size=batch_size, seed=seed, checkpoint=output.with_suffix(".ckpt"), config=config,
                        save_best=lambda metrics: detector.save(output), loss=loss, learning=detector.learning,
                        resume=resume, progress=progress, log=log, collate_fn=collate)
    thresholds = choose_thresholds(output, Subset(maps.first_view(), val_idx))
    return {"model": str(output), "classes": detector.classes, "new_classes": new_classes if old else [],
            "images": len(labels), "trainable_parameters": sum(p.numel() for p in params),
            "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "history": history,
            "thresholds": thresholds}


def choose_thresholds(path: Path, validation: Dataset) -> dict[str, dict]:
    """Give the saved best detector each class's best-F1 score threshold on the validation pictures;
    returns them with their validation precision and recall."""
    detector = load_detector(path)
    chosen = per_class(detections(detector, validation), [target for _, target in validation], detector.classes)
    detector.thresholds = {name: c["threshold"] for name, c in chosen.items()}
    detector.save(path)
    return chosen


def detections(detector: Detector, maps: Dataset, batch_size: int = 32) -> list[dict]:
    """The detector's boxes for each picture of a data set of trunk maps, in the input frame."""
    detector.eval()
    found = []
    for pairs, _ in DataLoader(maps, batch_size, collate_fn=collate):
        with torch.no_grad():
            out = detector.head_outputs(*stacked(pairs))
        found += detector.decode(out["cls_logits"], out["bbox_regression"])
    return found


def _start(start_from) -> Detector | None:
    if start_from is None or isinstance(start_from, Detector):
        return start_from
    return load_detector(start_from)


def _name(start_from) -> str | None:
    if isinstance(start_from, Detector):
        return f"a detector of {', '.join(start_from.classes)}"
    return start_from and str(start_from)


def _maps_of(detector: Detector, parts: list, views: int, seed: int, progress: bool,
             cache: TrunkMaps | None) -> TrunkMaps:
    """The training pictures' maps: looked up in ``cache`` when given, else computed."""
    pieces = []
    for part in parts:
        dataset, indices = (part.dataset, part.indices) if isinstance(part, Subset) else (part, None)
        if cache is None:
            pieces.append(trunk_maps(detector, dataset, indices, views=views, seed=seed, progress=progress))
        else:
            pieces.append(cache.select(picture_keys(dataset, indices), detector.classes))
    return concat_maps(pieces)


def concat_maps(pieces: list[TrunkMaps]) -> TrunkMaps:
    """One :class:`TrunkMaps` of several, image after image."""
    if len(pieces) == 1:
        return pieces[0]
    return TrunkMaps(torch.cat([p.c4 for p in pieces], 1), torch.cat([p.c5 for p in pieces], 1),
                     [sum((p.targets[v] for p in pieces), []) for v in range(len(pieces[0].targets))],
                     sum((p.images for p in pieces), []), pieces[0].classes)
