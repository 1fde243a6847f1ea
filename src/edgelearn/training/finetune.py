"""Fine-tuning a torchvision classifier on a folder data set (transfer learning, Mottakin, section 2.3).

Strategies: ``frozen`` (only a new head learns, on frozen features), ``partial`` (the head and the
last ``trainable_blocks`` blocks of the feature extractor), ``full`` (everything). 10 % of each
class is held out for validation; the loop (:func:`edgelearn.training.loop.fit`) samples classes in
balance, checkpoints every epoch (``OUT.ckpt``) and resumes exactly; the best epoch by validation
loss becomes ``OUT`` (a state dict in torchvision's layout) with a JSON sidecar, so the result
loads as a backbone (``--weights OUT``) or, with its head, as an inspection classifier.

With ``patch`` (Kim, Noh and Park's protocol) training sees one random patch per image and epoch, without
other augmentation, and validation scores every grid patch. The data set may also be a Pascal VOC folder (or
one with such train/ and test/): each picture is then labelled by its main defect, and its training patches
hold one of that defect's boxes.
"""

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgelearn.backbones import build_classifier
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.data.patches import GridPatches, RandomPatches
from edgelearn.data.voc import labelled_splits
from edgelearn.errors import DatasetError, ModelFileError
from edgelearn.files import atomic_write_bytes
from edgelearn.training.config import TrainConfig
from edgelearn.training.loop import fit, run_batches

DEFAULT_LR = {"frozen": 1e-3, "partial": 3e-4, "full": 1e-4}


def split_validation(ds: FolderDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per class, a seeded ``fraction`` (at least one image) for validation, the rest for training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in ds.classes:
        idx = rng.permutation([i for i, label in enumerate(ds.labels) if label == c])
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def replace_head(model: nn.Module, n_classes: int) -> nn.Linear:
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, child = last.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    head = nn.Linear(getattr(holder, child).in_features, n_classes)
    setattr(holder, child, head)
    return head


def trainable_modules(model: nn.Module, head: nn.Module, strategy: str, blocks: int) -> list[nn.Module]:
    """The modules that learn under ``strategy`` (the rest stay frozen, batch norms in eval mode)."""
    if strategy == "full":
        return [model]
    if strategy == "frozen":
        return [head]
    features = getattr(model, "features", None)
    stages = list(features.children()) if features is not None else \
        [m for m in model.children() if m is not head and any(p.numel() for p in m.parameters())]
    return [*stages[-blocks:], head]


@dataclass
class Job:
    """Everything one process needs to run the loop: built identically by every rank of a distributed run."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    learning: list[nn.Module]
    train_set: Dataset
    val_set: Dataset
    fit_args: dict  # the rest of fit()'s keyword arguments
    summary: dict = field(default_factory=dict)
    test_set: Dataset | None = None  # the data set's test/ images, scored after training


def prepare(config: TrainConfig) -> Job:
    """Build the model, data and optimiser of a fine-tuning run: every process of a run builds the same."""
    c = config
    patch, output = c.patch, c.output
    input_size = c.input_size or (patch.size if patch else None)
    ds, test, defects = labelled_splits(c.dataset)  # defects: a VOC folder's boxes per picture
    if len(ds.classes) < 2:
        raise DatasetError(f"{c.dataset}: fine-tuning needs at least two classes")
    train_idx, val_idx = split_validation(ds, c.val_fraction, c.seed)
    model, prep, source, padding = build_classifier(c.backbone, weights=c.weights, input_size=input_size, seed=c.seed)
    with torch.random.fork_rng():
        torch.manual_seed(c.seed)  # the new head's initial weights are part of the run's identity
        head = replace_head(model, len(ds.classes))
    if c.start_from is not None:
        continue_from(model, c.start_from, ds.classes)
    if c.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = c.dropout
    learning = trainable_modules(model, head, c.strategy, c.trainable_blocks)
    model.requires_grad_(False)
    for module in learning:
        module.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.lr or DEFAULT_LR[c.strategy], weight_decay=1e-4)
    # what a checkpoint must match to be resumed (and the sidecar's record of the run)
    identity = {"backbone": c.backbone, "strategy": c.strategy, "classes": ds.classes, "input_size": prep.input_size,
                "weights": source.ident, "seed": c.seed, "trainable_blocks": c.trainable_blocks,
                "batch_size": c.batch_size, "lr": optimizer.defaults["lr"], "patch": patch and asdict(patch),
                "start_from": c.start_from and str(c.start_from), "max_norm": c.max_norm, "dropout": c.dropout}
    target = {name: i for i, name in enumerate(ds.classes)}
    y = [target[label] for label in ds.labels]
    train_paths, train_y = [ds.paths[i] for i in train_idx], [y[i] for i in train_idx]
    val_paths, val_y = [ds.paths[i] for i in val_idx], [y[i] for i in val_idx]
    def scored(paths, targets):  # validation and test: the whole image, or with patches every grid patch
        if patch is None:
            return Images(paths, targets, prep.transform())
        return GridPatches(paths, targets, patch, prep.patch_transform())

    if patch is None:
        train_set = Images(train_paths, train_y, prep.train_transform())
    else:  # Kim, Noh and Park: one patch per image, without other augmentation
        train_set = RandomPatches(train_paths, train_y, patch, prep.patch_transform(),
                                  boxes=[defects.get(p) for p in train_paths])
    val_set = scored(val_paths, val_y)
    known = [] if test is None else [i for i, label in enumerate(test.labels) if label in target]
    test_set = scored([test.paths[i] for i in known], [target[test.labels[i]] for i in known]) if known else None

    def save_best(metrics: dict) -> None:
        _save_model(output, model, identity, source, padding, prep, metrics)

    fit_args = {"targets": train_y, "n_classes": len(ds.classes), "epochs": c.epochs, "batch_size": c.batch_size,
                "seed": c.seed, "checkpoint": output.with_suffix(".ckpt"), "config": identity, "save_best": save_best,
                "max_norm": c.max_norm}
    summary = {"model": str(output), "classes": ds.classes, "strategy": c.strategy,
               "trainable_parameters": sum(p.numel() for p in params)}
    if test is not None and len(known) < len(test):  # the model cannot name these: not scored, but said
        summary["test_classes_left_out"] = sorted(set(test.classes) - set(ds.classes))
    return Job(model, optimizer, learning, train_set, val_set, fit_args, summary, test_set)


def train_here(config: TrainConfig, *, progress: bool = False, log=print) -> tuple[Job, list[dict], dict]:
    """Fine-tune in this process (mode single); returns the job, the history and the best epoch."""
    job = prepare(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    history, best = fit(job.model, job.optimizer, job.train_set, job.val_set, learning=job.learning,
                        resume=config.resume, progress=progress, log=log, **job.fit_args)
    return job, history, best


def score_test(job: Job, output: Path) -> dict:
    """Loss and accuracy of the best epoch's model (``output``) on the data set's test/ images; none without."""
    if job.test_set is None or not output.is_file():
        return {}
    job.model.load_state_dict(torch.load(output, map_location="cpu", weights_only=True))
    job.model.eval()
    with torch.no_grad():
        loss_sum, correct, count = run_batches(job.model, DataLoader(job.test_set, job.fit_args["batch_size"]))
    return {"test_loss": loss_sum / count, "test_accuracy": correct / count}


def continue_from(model: nn.Module, path: Path, classes: list[str]) -> None:
    """Load an earlier run's weights (same architecture and classes) to continue training from them."""
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise ModelFileError(f"{path}: no such model (+ .json) to continue from")
    meta = json.loads(sidecar.read_text())
    if meta.get("categories") != classes:
        raise ModelFileError(f"{path} knows the classes {meta.get('categories')}, this data set {classes}")
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # a damaged file or another architecture
        raise ModelFileError(f"{path}: cannot continue from it ({exc})") from exc


class Images(Dataset):
    def __init__(self, paths, targets, transform):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(load_image(self.paths[i])), self.targets[i]


def _save_model(output: Path, model, config, source, padding, prep, metrics) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    sidecar = {"file": output.name, "sha256": hashlib.sha256(data).hexdigest(),
               "architecture": f"torchvision.models.{config['backbone']}", "num_classes": len(config["classes"]),
               "categories": config["classes"], "padding": padding, "input_size": prep.input_size,
               "resize_size": prep.resize_size, "normalize_mean": list(prep.mean), "normalize_std": list(prep.std),
               "fine_tuned": {"from": source.ident, "strategy": config["strategy"], "seed": config["seed"], **metrics}}
    if config["patch"]:
        sidecar["patch"] = config["patch"]
    atomic_write_bytes(output, data)
    atomic_write_bytes(output.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())
