"""What a site computes: the frozen shared layers' feature maps (once, then cached), local training of the
decoupled layers on them, and a head's accuracy."""

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from edgelearn.backbones import build_classifier
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.federation.training.heads import PathHead, split_mobilenet_v2
from edgelearn.training.loop import cross_entropy, run_batches

NEW_PATH_LR = 10.0  # TeAM: a new class's critical path learns 10x faster than the old ones

def shared_features(data: Path, split: str, *, weights: str | None, input_size: int | None, cache: Path
                    ) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    """The split's shared feature maps (computed once, then read from ``cache``), its labels, and the
    pretrained decoupled layers."""
    model, prep, source, _ = build_classifier("mobilenet_v2", weights=weights or None, input_size=input_size)
    trunk, layers = split_mobilenet_v2(model.eval())
    ds = FolderDataset.scan(data, split)
    listing = json.dumps([source.ident, prep.input_size, *map(str, ds.paths), *map(os.path.getmtime, ds.paths)])
    path = cache / f"shared-{split}-{hashlib.sha256(listing.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        features = torch.load(path, weights_only=True)
    else:
        transform = prep.transform()
        with torch.no_grad():
            features = torch.cat([trunk(torch.stack([transform(load_image(p)) for p in ds.paths[i:i + 32]]))
                                  for i in range(0, len(ds.paths), 32)])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, path)
    return features, list(ds.labels), layers


def local_training(head: torch.nn.Module, features: torch.Tensor, targets: torch.Tensor, *, epochs: int, lr: float,
                   seed: int, boost: Iterable[int] = (), batch_size: int = 32) -> dict:
    """``epochs`` of SGD on the site's shared features; the paths ``boost`` learn NEW_PATH_LR x faster."""
    boost = list(boost)
    if boost and isinstance(head, PathHead):
        k = len(head.classes)
        for param in head.parameters():
            scale = torch.ones(k)
            scale[boost] = NEW_PATH_LR
            rows = scale.repeat_interleave(param.shape[0] // k).view(-1, *[1] * (param.dim() - 1))
            param.register_hook(lambda grad, rows=rows: grad * rows)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    loss = one_vs_rest if isinstance(head, PathHead) else cross_entropy
    head.train()
    sums = (0.0, 0, 0)
    for _ in range(epochs):
        loader = DataLoader(TensorDataset(features, targets), batch_size, shuffle=True, generator=generator)
        sums = run_batches(head, loader, loss, optimizer=optimizer)
    head.eval()
    return {"num-examples": len(targets), "train-loss": sums[0] / max(sums[2], 1),
            "train-accuracy": sums[1] / max(sums[2], 1)}


def one_vs_rest(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each critical path scores "my class or not" on its own (sigmoid). A site trains its paths only
    against its own classes; with a softmax, scores of paths that never met at one site would not be
    comparable, with one-vs-rest each path's score means the same everywhere."""
    x, target = batch
    logits = model(x)
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(target, logits.shape[1]).float()), logits, target


def accuracy(head: torch.nn.Module, classes: list[str], features: torch.Tensor, labels: list[str]) -> float:
    head.eval()
    with torch.no_grad():
        predicted = torch.cat([head(features[i:i + 256]).argmax(1) for i in range(0, len(features), 256)])
    return sum(classes[k] == label for k, label in zip(predicted.tolist(), labels, strict=True)) / max(len(labels), 1)

