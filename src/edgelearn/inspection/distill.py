"""Compress a fine-tuned teacher into a shallow student (Kim, Noh and Park, section 3.4).

The student regresses the teacher's logits (eq. 1: ``1/2N sum ||f_T(x) - f_S(x)||^2``), optionally
mixed with the hard labels (``alpha`` = their weight). The transfer set is ``patches_per_image``
random patches per training image, each flipped/rotated at random unless ``augmented`` is off (the
paper distils on augmented data); they are cut and scored by the teacher once and kept in memory
(uint8, at the student's input size), so a student epoch costs only the student. Without a teacher
the same student learns from the labels alone: the paper's control. Training runs through the one
loop (:func:`edgelearn.training.loop.fit`): balanced classes, best by validation loss, exact resume.
"""

import hashlib
import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from edgelearn.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.data.patches import PatchGrid, augment
from edgelearn.errors import DatasetError
from edgelearn.files import atomic_write_bytes
from edgelearn.inspection.inspector import STUDENT, Inspector
from edgelearn.inspection.student import PAPER_FILTERS, Student, StudentConfig, count_parameters
from edgelearn.training.finetune import split_validation
from edgelearn.training.loop import cross_entropy, fit


class Patches(Dataset):
    """Patches held in memory as uint8 at the student's input size (``(x, label[, teacher logits])``):
    cut, augmented and scored by the teacher once, so a student epoch costs only the student."""

    def __init__(self, pixels: torch.Tensor, targets: list[int], logits: torch.Tensor | None, prep: Preprocessing):
        self.pixels, self.targets, self.logits = pixels, targets, logits
        self.scale = prep.normalise()

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, k):
        x = self.scale(self.pixels[k])
        return (x, self.targets[k]) if self.logits is None else (x, self.targets[k], self.logits[k])


@torch.inference_mode()
def cut_patches(paths, targets, grid: PatchGrid, specs, prep: Preprocessing, mentor: Inspector | None = None,
                augmented: bool = False, batch_size: int = 64) -> Patches:
    """``specs[k] = (image index, box, augmentation draw)``, grouped by image (each is read once)."""
    to_pixels = prep.pixels()
    pixels, logits, pending, current = [], [], [], (None, None)
    for i, box, draw in specs:
        if current[0] != i:
            current = (i, grid.fit(load_image(paths[i])))
        patch = current[1].crop(box)
        if augmented:
            patch = augment(patch, torch.Generator().manual_seed(draw))
        pixels.append(to_pixels(patch))
        if mentor is not None:
            pending.append(mentor.transform(patch))
            if len(pending) == batch_size:
                logits.append(_answer(mentor, pending))
                pending = []
    if pending:
        logits.append(_answer(mentor, pending))
    return Patches(torch.stack(pixels), [targets[i] for i, _, _ in specs],
                   torch.cat(logits).float() if mentor is not None else None, prep)


def _answer(mentor: Inspector, patches: list[torch.Tensor]) -> torch.Tensor:
    return mentor.net(torch.stack(patches).contiguous(memory_format=torch.channels_last))


def logit_regression(alpha: float):
    """Eq. 1 of Kim, Noh and Park on centred logits, plus ``alpha`` x cross-entropy on the labels.

    Centring (subtracting each patch's mean logit, which the softmax ignores) spends the student's
    capacity on the differences between classes rather than on an offset they share."""

    def loss(model: nn.Module, batch):
        x, target, teacher = batch
        logits = model(x)
        gap = (logits - logits.mean(1, keepdim=True)) - (teacher - teacher.mean(1, keepdim=True))
        value = 0.5 * gap.pow(2).sum(1).mean()
        if alpha:
            value = (1 - alpha) * value + alpha * nn.functional.cross_entropy(logits, target)
        return value, logits, target

    return loss


def distill(dataset: str | os.PathLike, output: str | os.PathLike, *, teacher: str | os.PathLike | None = None,
            patch: PatchGrid | None = None, input_size: int | None = None, filters=PAPER_FILTERS, hidden: int = 256,
            alpha: float = 0.0, patches_per_image: int = 8, augmented: bool = True, epochs: int = 30, lr: float = 3e-3,
            batch_size: int = 64, val_fraction: float = 0.1, seed: int = 0, resume: bool = False,
            progress: bool = False, log=print) -> dict:
    """Train a student on ``dataset``'s training split and save it (state dict + JSON sidecar).

    With ``teacher`` (a classifier from ``edgelearn train``) the student mimics it on the teacher's
    patch geometry; without, it learns from the labels (``patch`` then sets the geometry, default
    128-pixel patches in a 3x3 grid). ``input_size``: the student's (default: the teacher's, or the
    patch size); a smaller one sees the same patches scaled down, and costs less.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the weight of the hard labels) must be in [0, 1], got {alpha}")
    if patches_per_image < 1:
        raise ValueError("patches_per_image must be at least 1")
    output = Path(output)
    ds = FolderDataset.splits(dataset)[0]
    if len(ds.classes) < 2:
        raise DatasetError(f"{dataset}: a student needs at least two classes")
    mentor = Inspector.load(teacher, grid=patch) if teacher is not None else None
    if mentor is not None:
        if mentor.model.classes != ds.classes:
            raise DatasetError(f"the teacher knows {mentor.model.classes}, the data set has {ds.classes}")
        grid = mentor.model.grid
        side = input_size or mentor.model.preprocessing.input_size
    else:
        grid = patch or PatchGrid(128, 3)
        side = input_size or grid.size
    prep = Preprocessing(side, side, IMAGENET_MEAN, IMAGENET_STD)
    config = StudentConfig(len(ds.classes), tuple(filters), hidden, side)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the student's initial weights are part of the run's identity
        student = Student(config)

    target = {c: i for i, c in enumerate(ds.classes)}
    train_idx, val_idx = split_validation(ds, val_fraction, seed)
    paths, y = list(ds.paths), [target[label] for label in ds.labels]
    specs = _specs(paths, train_idx, grid, patches_per_image, seed)
    val_specs = [(i, box, 0) for i in val_idx for box in grid.boxes(*grid.fit(load_image(paths[i])).size)]
    log(f"cutting {len(specs) + len(val_specs)} patches" + (" for the teacher to score" if mentor else ""))
    train_set = cut_patches(paths, y, grid, specs, prep, mentor, augmented, batch_size)
    val_set = cut_patches(paths, y, grid, val_specs, prep, mentor, False, batch_size)
    loss = cross_entropy if mentor is None else logit_regression(alpha)

    run = {"kind": "distill", "classes": ds.classes, "student": config.to_dict(), "patch": asdict(grid),
           "teacher": mentor and mentor.model.meta.get("sha256"), "alpha": alpha,
           "patches_per_image": patches_per_image, "augmented": augmented, "seed": seed, "lr": lr,
           "val_fraction": val_fraction}

    def save_best(metrics: dict) -> None:
        _save_student(output, student, run, prep, metrics)

    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    history, best = fit(student, optimizer, train_set, val_set, targets=train_set.targets,
                        n_classes=len(ds.classes), epochs=epochs, batch_size=batch_size, seed=seed,
                        checkpoint=output.with_suffix(".ckpt"), config=run, save_best=save_best, loss=loss,
                        resume=resume, progress=progress, log=log)
    return {"model": str(output), "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "history": history, "classes": ds.classes, "parameters": count_parameters(student),
            "teacher": str(teacher) if teacher is not None else None}


def _specs(paths, indices, grid: PatchGrid, per_image: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    specs = []
    for i in indices:
        size = grid.fit(load_image(paths[i])).size
        specs += [(i, grid.random_box(*size, generator), int(torch.randint(0, 2**31, (), generator=generator)))
                  for _ in range(per_image)]
    return specs


def _save_student(output: Path, student: Student, run: dict, prep: Preprocessing, metrics: dict) -> None:
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    data = buf.getvalue()
    sidecar = {"file": output.name, "sha256": hashlib.sha256(data).hexdigest(), "architecture": STUDENT,
               "student": run["student"], "categories": run["classes"], "num_classes": len(run["classes"]),
               "input_size": prep.input_size, "normalize_mean": list(prep.mean), "normalize_std": list(prep.std),
               "patch": run["patch"], "distilled": {k: run[k] for k in ("teacher", "alpha", "patches_per_image",
                                                                         "seed")} | metrics}
    atomic_write_bytes(output, data)
    atomic_write_bytes(output.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())
