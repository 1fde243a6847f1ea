"""The one training loop: epochs with class-balanced sampling, validation, the best epoch by
validation loss, a checkpoint per epoch and an exact resume.

Fine-tuning a backbone and distilling a student both run through :func:`fit`; they differ only in
the data sets, the loss and what "save the best" writes. Each epoch's randomness derives from
``(seed, epoch)``, so an interrupted run that is resumed ends exactly where an uninterrupted one would.
"""

import io
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, WeightedRandomSampler

from edgelearn.errors import ModelFileError
from edgelearn.files import atomic_write_bytes, atomic_write_figure

#: ``loss(model, batch) -> (loss, logits, targets)``; accuracy is counted on ``logits`` vs ``targets``
#: (a task without one, detection, returns ``logits=None``: the history's accuracies are then None).
Loss = Callable[[nn.Module, Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
#: ``run_epoch(epoch, indices) -> (loss sum, correct, count)``: a training pass run elsewhere (stepping
#: ``fit``'s optimiser, whose learning rate ``fit`` sets per epoch).
EpochRunner = Callable[[int, list[int]], tuple[float, int, int]]


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
        learning: Sequence[nn.Module] | None = None, cosine: bool = True, max_norm: float | None = None,
        shard: tuple[int, int] = (0, 1), run_epoch: EpochRunner | None = None, collate_fn=None, resume: bool = False,
        progress: bool = False, log=print) -> tuple[list[dict], dict]:
    """Train for ``epochs``; returns ``(history, best)``.

    ``targets`` are the training labels (for balanced sampling); ``learning`` the modules that train
    (the rest stays in eval mode: frozen batch norms keep their statistics; default: the whole model).
    ``cosine`` anneals the learning rate from the optimiser's to zero over the epochs (set per epoch,
    so a resumed run uses the same rates). ``max_norm`` rescales every learning unit's incoming
    weights to at most that norm after each step (Mottakin's weight constraint for online sessions).
    ``save_best(metrics)`` is called whenever the validation loss improves. ``checkpoint`` holds
    model, optimiser and history after every epoch; ``resume`` continues from it if ``config`` matches.

    Distributed runs share this loop: ``shard=(rank, world)`` gives each data-parallel process every
    world-th image of the epoch's sample and of the validation set (sums are all-reduced; only rank 0
    writes); ``run_epoch(epoch, indices)`` replaces the local training pass (a parameter server
    hands the indices to its workers) and returns ``(loss sum, correct, count)``. ``collate_fn`` batches
    the data sets' items (default: torch's stacking).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1")
    learning = [model] if learning is None else learning
    rank, world = shard
    state = getattr(model, "module", model)  # a DistributedDataParallel wrapper saves its module
    history, best, start = [], {"val_loss": float("inf"), "epoch": None}, 0
    if resume and checkpoint.is_file():
        start, history, best = _resume(checkpoint, config, state, optimizer)
        log(f"resuming after epoch {start} of {epochs}")
    weights = balanced_weights(targets, n_classes)
    base_lr = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
    constrain = (lambda: max_norm_(learning, max_norm)) if max_norm else None
    for epoch in range(start, epochs):
        started = time.perf_counter()
        for group, lr in zip(optimizer.param_groups, base_lr, strict=True):
            group["lr"] = lr * (0.5 * (1 + math.cos(math.pi * epoch / epochs)) if cosine else 1.0)
        torch.manual_seed(seed * 100_003 + epoch + 7919 * rank)  # randomness depends on (seed, epoch, rank) only
        sample = list(WeightedRandomSampler(weights, len(train_set), replacement=True,
                                            generator=torch.Generator().manual_seed(seed * 100_003 + epoch)))
        sample = sample[:len(sample) // world * world]  # equal shards: every rank takes as many steps
        if run_epoch is not None:
            sums = run_epoch(epoch, sample)
        else:
            train_mode(model, learning)
            shard = sample[rank::world]
            # a last batch of one gives batch norm no statistics (and fails on 1x1 maps): it is left out
            loader = DataLoader(train_set, batch_size, sampler=shard, collate_fn=collate_fn,
                                drop_last=len(shard) % batch_size == 1 and len(shard) > 1)
            sums = run_batches(model, loader, loss, optimizer, constrain, progress, f"epoch {epoch + 1}/{epochs}")
        model.eval()
        with torch.no_grad():
            val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), batch_size,
                                    collate_fn=collate_fn)
            val = run_batches(model, val_loader, loss, None, None, False, "")
        (train_loss, train_acc), (val_loss, val_acc) = _reduce(sums, world), _reduce(val, world)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc,
                        "seconds": round(time.perf_counter() - started, 3)})
        log(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
            + (f", val accuracy {val_acc:.1%}" if val_acc is not None else ""))
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch + 1}
            if rank == 0:
                save_best(history[-1])
        if rank == 0:
            _save_checkpoint(checkpoint, state, optimizer, config, history, best)
    if rank == 0:
        plot_history(history, checkpoint.with_suffix(".png"))
    return history, best


def train_mode(model: nn.Module, learning: Sequence[nn.Module]) -> None:
    """Put ``learning`` in training mode and keep the rest in eval mode, so frozen batch norms keep their
    statistics; dropout (which holds no statistics) is on everywhere, so ``--dropout`` regularises
    a frozen or partly frozen model too."""
    model.eval()
    for module in learning:
        module.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


def max_norm_(modules: Sequence[nn.Module], limit: float) -> None:
    """Rescale each output unit's weights (conv filters, linear rows) to a norm of at most ``limit``."""
    with torch.no_grad():
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d | nn.Linear) and layer.weight.requires_grad:
                    layer.weight.copy_(torch.renorm(layer.weight, 2, 0, limit))


def _reduce(sums: Sequence[float], world: int) -> tuple[float, float]:
    """Mean loss and accuracy from ``(loss sum, correct, count)``, summed over the ranks."""
    totals = torch.tensor(sums, dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), None if math.isnan(correct) else correct / max(count, 1)


def run_batches(model, loader, loss_fn: Loss = cross_entropy, optimizer=None, constrain=None, progress: bool = False,
                description: str = "") -> tuple[float, int, int]:
    """One pass over ``loader`` (a training pass if ``optimizer`` is given); returns (loss sum, correct, count),
    ``correct`` NaN for a loss without logits."""
    total = correct = 0
    loss_sum = 0.0
    for batch in track(loader, description=description, disable=not progress, transient=True):
        loss, logits, target = loss_fn(model, batch)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if constrain:
                constrain()
        loss_sum += loss.item() * len(target)
        correct += int((logits.argmax(1) == target).sum()) if logits is not None else math.nan
        total += len(target)
    return loss_sum, correct, total


def _save_checkpoint(path: Path, model, optimizer, config, history, best) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": config,
                "history": history, "best": best}, buf)
    atomic_write_bytes(path, buf.getvalue())


def check_checkpoint(path: Path, config: dict) -> dict | None:
    """The checkpoint's state if there is one; refused if damaged or written by another run."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ModelFileError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if state.get("config") != config:
        differ = [k for k in config if state.get("config", {}).get(k) != config[k]]
        raise ModelFileError(f"{path} belongs to another run (differs in {', '.join(differ)}); "
                             f"delete it or run without --resume")
    return state


def _resume(path: Path, config: dict, model, optimizer) -> tuple[int, list, dict]:
    state = check_checkpoint(path, config)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return len(state["history"]), state["history"], state["best"]


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, training and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    scored = history[0]["val_accuracy"] is not None
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(8 if scored else 4, 3), squeeze=False)
    for ax, key in zip(axes[0], ("loss", "accuracy"), strict=False):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label="validation")
        ax.set_title(key)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    atomic_write_figure(path, fig)
