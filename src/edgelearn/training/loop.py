"""The one training loop: epochs with class-balanced sampling, validation, the best epoch by
validation loss, a checkpoint per epoch and an exact resume.

Fine-tuning a backbone and distilling a student both run through :func:`fit`; they differ only in
the data sets, the loss and what "save the best" writes. Each epoch's randomness derives from
``(seed, epoch)``, so an interrupted run that is resumed ends exactly where an uninterrupted one would.
"""

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from edgelearn.errors import ModelFileError
from edgelearn.files import atomic_write_bytes, atomic_write_figure

#: ``loss(model, batch) -> (loss, logits, targets)``; accuracy is counted on ``logits`` vs ``targets``.
Loss = Callable[[nn.Module, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def cross_entropy(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, target = batch[0], batch[1]
    logits = model(x)
    return nn.functional.cross_entropy(logits, target), logits, target


def balanced_weights(targets: Sequence[int], n_classes: int) -> torch.Tensor:
    """Sampling weights that draw every class equally often."""
    counts = np.bincount(np.asarray(targets), minlength=n_classes)
    return torch.tensor([1.0 / counts[t] for t in targets], dtype=torch.double)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Dataset, val_set: Dataset, *,
        targets: Sequence[int], n_classes: int, epochs: int, batch_size: int, seed: int, checkpoint: Path,
        config: dict, save_best: Callable[[dict], None], loss: Loss = cross_entropy,
        learning: Sequence[nn.Module] | None = None, cosine: bool = True, resume: bool = False,
        progress: bool = False, log=print) -> tuple[list[dict], dict]:
    """Train for ``epochs``; returns ``(history, best)``.

    ``targets`` are the training labels (for balanced sampling); ``learning`` the modules that train
    (the rest stays in eval mode: frozen batch norms keep their statistics; default: the whole model).
    ``cosine`` anneals the learning rate from the optimiser's to zero over the epochs (set per epoch,
    so a resumed run uses the same rates).
    ``save_best(metrics)`` is called whenever the validation loss improves. ``checkpoint`` holds
    model, optimiser and history after every epoch; ``resume`` continues from it if ``config`` matches.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1")
    learning = [model] if learning is None else learning
    history, best, start = [], {"val_loss": float("inf"), "epoch": None}, 0
    if resume and checkpoint.is_file():
        start, history, best = _resume(checkpoint, config, model, optimizer)
        log(f"resuming after epoch {start} of {epochs}")
    weights = balanced_weights(targets, n_classes)
    base_lr = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
    for epoch in range(start, epochs):
        for group, lr in zip(optimizer.param_groups, base_lr, strict=True):
            group["lr"] = lr * (0.5 * (1 + math.cos(math.pi * epoch / epochs)) if cosine else 1.0)
        torch.manual_seed(seed * 100_003 + epoch)  # augmentations and sampling depend on (seed, epoch) only
        sampler = WeightedRandomSampler(weights, len(train_set), replacement=True,
                                        generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        model.eval()
        for module in learning:
            module.train()
        train_loss, train_acc = _run(model, DataLoader(train_set, batch_size, sampler=sampler), loss, optimizer,
                                     progress, f"epoch {epoch + 1}/{epochs}")
        model.eval()
        with torch.no_grad():
            val_loss, val_acc = _run(model, DataLoader(val_set, batch_size), loss, None, False, "")
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc})
        log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val accuracy {val_acc:.1%}")
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch + 1}
            save_best(history[-1])
        _save_checkpoint(checkpoint, model, optimizer, config, history, best)
    plot_history(history, checkpoint.with_suffix(".png"))
    return history, best


def _run(model, loader, loss_fn: Loss, optimizer, progress: bool, description: str) -> tuple[float, float]:
    total = correct = 0
    loss_sum = 0.0
    for batch in track(loader, description=description, disable=not progress, transient=True):
        loss, logits, target = loss_fn(model, batch)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss_sum += loss.item() * len(target)
        correct += int((logits.argmax(1) == target).sum())
        total += len(target)
    return loss_sum / max(total, 1), correct / max(total, 1)


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


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, training and validation, as a PNG."""
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
    atomic_write_figure(path, fig)
