"""Fine-tuning a torchvision classifier on a folder data set (transfer learning, paper 002 section 2.3).

Strategies: ``frozen`` (only a new head learns, on frozen features), ``partial`` (the head and the
last ``trainable_blocks`` blocks of the feature extractor), ``full`` (everything). Classes are
sampled in balance; 10 % of each class is held out for validation; every epoch writes a checkpoint
(``OUT.ckpt``: model, optimiser, history) and the best epoch by validation loss becomes ``OUT``
(a state dict in torchvision's layout) with a JSON sidecar, so the result loads as a backbone
(``--weights OUT``). Each epoch's randomness derives from (seed, epoch), so an interrupted run that
is resumed ends exactly where an uninterrupted one would.
"""

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2 as T

from edgelearn.backbones import build_classifier
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.errors import DatasetError, ModelFileError
from edgelearn.files import atomic_write_bytes

STRATEGIES = ("frozen", "partial", "full")
DEFAULT_LR = {"frozen": 1e-3, "partial": 3e-4, "full": 1e-4}


class Images(Dataset):
    def __init__(self, paths, targets, transform):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(load_image(self.paths[i])), self.targets[i]


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


def finetune(dataset: str | os.PathLike, output: str | os.PathLike, *, backbone: str = "mobilenet_v2",
             weights=None, strategy: str = "frozen", epochs: int = 5, lr: float | None = None,
             batch_size: int = 32, input_size: int | None = None, trainable_blocks: int = 3,
             val_fraction: float = 0.1, seed: int = 0, resume: bool = False, progress: bool = False,
             log=print) -> dict:
    """Fine-tune and save; returns the history (per epoch: train/val loss and accuracy) and the best epoch."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1")
    output = Path(output)
    ds = FolderDataset.splits(dataset)[0]
    if len(ds.classes) < 2:
        raise DatasetError(f"{dataset}: fine-tuning needs at least two classes")
    train_idx, val_idx = split_validation(ds, val_fraction, seed)
    model, prep, source, padding = build_classifier(backbone, weights=weights, input_size=input_size, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the new head's initial weights are part of the run's identity
        head = replace_head(model, len(ds.classes))
    learning = trainable_modules(model, head, strategy, trainable_blocks)
    model.requires_grad_(False)
    for module in learning:
        module.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr or DEFAULT_LR[strategy], weight_decay=1e-4)
    config = {"backbone": backbone, "strategy": strategy, "classes": ds.classes, "input_size": prep.input_size,
              "weights": source.ident, "seed": seed, "trainable_blocks": trainable_blocks}
    history, best, start = [], {"val_loss": float("inf"), "epoch": None}, 0
    checkpoint = output.with_suffix(".ckpt")
    if resume and checkpoint.is_file():
        start, history, best = _resume(checkpoint, config, model, optimizer)
        log(f"resuming after epoch {start} of {epochs}")

    target = {c: i for i, c in enumerate(ds.classes)}
    y = [target[label] for label in ds.labels]
    train_tf = T.Compose([T.ToImage(), T.RandomResizedCrop(prep.input_size, scale=(0.6, 1.0), antialias=True),
                          T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                          T.Normalize(prep.mean, prep.std)])
    train_set = Images([ds.paths[i] for i in train_idx], [y[i] for i in train_idx], train_tf)
    val_set = Images([ds.paths[i] for i in val_idx], [y[i] for i in val_idx], prep.transform())
    counts = np.bincount(train_set.targets, minlength=len(ds.classes))
    sample_weights = torch.tensor([1.0 / counts[t] for t in train_set.targets], dtype=torch.double)

    for epoch in range(start, epochs):
        torch.manual_seed(seed * 100_003 + epoch)  # augmentations and sampling depend on (seed, epoch) only
        sampler = WeightedRandomSampler(sample_weights, len(train_set), replacement=True,
                                        generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        model.eval()  # frozen parts keep their batch-norm statistics
        for module in learning:
            module.train()
        train_loss, train_acc = _run(model, DataLoader(train_set, batch_size, sampler=sampler), optimizer,
                                     progress, f"epoch {epoch + 1}/{epochs}")
        model.eval()
        with torch.no_grad():
            val_loss, val_acc = _run(model, DataLoader(val_set, batch_size), None, False, "")
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc})
        log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val accuracy {val_acc:.1%}")
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch + 1}
            _save_model(output, model, config, source, padding, prep, history[-1])
        _save_checkpoint(checkpoint, model, optimizer, config, history, best)
    _plot(history, output.with_suffix(".png"))
    return {"model": str(output), "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "history": history, "classes": ds.classes, "strategy": strategy,
            "trainable_parameters": sum(p.numel() for p in params)}


def _run(model, loader, optimizer, progress: bool, description: str) -> tuple[float, float]:
    total = correct = 0
    loss_sum = 0.0
    for x, t in track(loader, description=description, disable=not progress, transient=True):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, t)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss_sum += loss.item() * len(t)
        correct += int((logits.argmax(1) == t).sum())
        total += len(t)
    return loss_sum / max(total, 1), correct / max(total, 1)


def _save_model(output: Path, model, config, source, padding, prep, metrics) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    sidecar = {"file": output.name, "sha256": hashlib.sha256(data).hexdigest(),
               "architecture": f"torchvision.models.{config['backbone']}", "num_classes": len(config["classes"]),
               "categories": config["classes"], "padding": padding, "input_size": prep.input_size,
               "resize_size": prep.resize_size, "normalize_mean": list(prep.mean), "normalize_std": list(prep.std),
               "fine_tuned": {"from": source.ident, "strategy": config["strategy"], **metrics}}
    atomic_write_bytes(output, data)
    atomic_write_bytes(output.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())


def _save_checkpoint(path: Path, model, optimizer, config, history, best) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": config,
                "history": history, "best": best}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path: Path, config: dict, model, optimizer) -> tuple[int, list, dict]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ModelFileError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if state.get("config") != config:
        differ = [k for k in config if state.get("config", {}).get(k) != config[k]]
        raise ModelFileError(f"{path} belongs to another run (differs in {', '.join(differ)}); "
                             f"delete it or run without --resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return len(state["history"]), state["history"], state["best"]


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    a.set_title("loss")
    b.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    b.plot(epochs, [h["val_accuracy"] for h in history], "s-", label="validation")
    b.set_title("accuracy")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
