"""What a network learned (Kim, Noh and Park, section 4.1): per-layer weight change, dead-channel sparsity,
and the disentanglement of its last convolutional representation.

- ``weight_change``: gamma^l = ||w_converged - w_0|| / ||w_0|| per conv layer (eq. 2).
- ``sparsity``: s^l = dead channels / channels per conv layer, a channel being dead for an image
  when its whole activation map is zero (eq. 3), averaged over the images.
- ``disentanglement``: d = mean over pairs of |D_G - D_E| / D_E, with D_E Euclidean and D_G the
  shortest path in the k-nearest-neighbour graph (k = 5; eqs. 4-6). 0 = a flat, unfolded manifold.
"""

from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path
from torch import nn

from edgelearn.backbones import build_classifier
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.data.patches import PatchGrid
from edgelearn.errors import DatasetError, IncompatibleError, WeightsError
from edgelearn.files import atomic_write_figure
from edgelearn.inspection.inspector import STUDENT, InspectionModel, load_model
from edgelearn.inspection.student import Student, StudentConfig

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def weight_change(initial: nn.Module, trained: nn.Module) -> dict[str, float]:
    """gamma per conv layer, in network order."""
    before, after = conv_layers(initial), conv_layers(trained)
    if before.keys() != after.keys():
        raise IncompatibleError("the two models do not have the same conv layers")
    return {name: float((after[name].weight - w.weight).norm() / w.weight.norm()) for name, w in before.items()}


def activation_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The rectifier after each conv layer: where a channel can be dead (exactly zero)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)}


@torch.inference_mode()
def sparsity(model: nn.Module, batches) -> dict[str, float]:
    """s per rectified layer that outputs feature maps, in network order, averaged over images."""
    dead, seen = {}, [0]

    def hook(name):
        def count(_module, _inputs, output):
            if output.dim() == 4:
                dead[name] = dead.get(name, 0.0) + float((output.amax(dim=(2, 3)) <= 0).float().mean(1).sum())
        return count

    handles = [m.register_forward_hook(hook(name)) for name, m in activation_layers(model).items()]
    try:
        for x in batches:
            model(x)
            seen[0] += len(x)
    finally:
        for h in handles:
            h.remove()
    return {name: value / max(seen[0], 1) for name, value in dead.items()}


@torch.inference_mode()
def last_conv_representation(model: nn.Module, batches) -> np.ndarray:
    """The last rectified feature map of each image, flattened: ``(n, P)``."""
    latest, out = {}, []

    def keep(_module, _inputs, output):
        if output.dim() == 4:
            latest["x"] = output

    handles = [m.register_forward_hook(keep) for m in activation_layers(model).values()]
    try:
        for x in batches:
            model(x)
            out.append(latest["x"].flatten(1).numpy().copy())
    finally:
        for h in handles:
            h.remove()
    return np.concatenate(out)


def disentanglement(points: np.ndarray, k: int = 5) -> dict:
    """d of eq. 6 over all pairs connected in the symmetric k-NN graph (the fraction left out is reported)."""
    x = torch.as_tensor(np.asarray(points, dtype=np.float64))
    n = len(x)
    if n <= k:
        raise DatasetError(f"need more than k={k} points, got {n}")
    euclid = torch.cdist(x, x).numpy()
    neighbours = np.argsort(euclid, axis=1)[:, 1:k + 1]
    rows = np.repeat(np.arange(n), k)
    graph = csr_matrix((euclid[rows, neighbours.ravel()], (rows, neighbours.ravel())), shape=(n, n))
    geodesic = shortest_path(graph, method="D", directed=False)
    i, j = np.triu_indices(n, 1)
    e, g = euclid[i, j], geodesic[i, j]
    ok = np.isfinite(g) & (e > 0)
    return {"d": float(np.mean(np.abs(g[ok] - e[ok]) / e[ok])), "k": k, "points": n,
            "unconnected_pairs": float(1 - ok.mean())}


def plot_analysis(results: dict[str, dict], path: Path) -> None:
    """gamma and s per layer (x: relative depth, so a deep teacher and a shallow student share an axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    titles = {"weight_change": "weight change rate γ (eq. 2)", "sparsity": "dead-channel sparsity s (eq. 3)"}
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        for label, result in results.items():
            values = list(result.get(key, {}).values())
            if values:
                ax.plot(np.linspace(0, 1, len(values)), values, "o-", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("layer (relative depth: input → output)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    atomic_write_figure(path, fig)


def initial_model(model: InspectionModel, weights=None) -> nn.Module:
    """The network as it was before training: a student re-drawn from its seed, or a fine-tuned
    model's source weights (``weights``; they must be the ones it was fine-tuned from)."""
    meta = model.meta
    if meta.get("architecture") == STUDENT:
        config = StudentConfig.from_dict(meta["student"])
        with torch.random.fork_rng():
            torch.manual_seed(meta["distilled"]["seed"])
            return Student(config)
    start = meta.get("fine_tuned", {})
    initial, _, source, _ = build_classifier(meta["architecture"].rsplit(".", 1)[-1], weights=weights,
                                             seed=start.get("seed", 0))
    if start.get("from") and source.ident != start["from"]:
        raise WeightsError(f"{model.path} was fine-tuned from weights {start['from'][:16]}…, not from "
                           f"{source.ident[:16]}…: give those with --weights")
    return initial


def analyse_model(path, dataset: FolderDataset, *, initial_weights=None, k: int = 5, batch_size: int = 32) -> dict:
    """gamma per conv layer, s per rectified layer and d of the last conv representation, on the
    centre patch of each image of ``dataset``."""
    model = load_model(path)
    net = model.model
    centre = PatchGrid(model.grid.size, 1)
    transform = model.preprocessing.patch_transform()
    patches = [transform(centre.crops(load_image(p))[0]) for p in dataset.paths]
    batches = [torch.stack(patches[i:i + batch_size]) for i in range(0, len(patches), batch_size)]
    conv_of, last = {}, None
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            last = name
        elif isinstance(module, ACTIVATIONS) and last is not None:
            conv_of[name] = last
    return {"model": str(path), "weight_change": weight_change(initial_model(model, initial_weights), net),
            "sparsity": sparsity(net, batches), "conv_of": conv_of,
            "disentanglement": disentanglement(last_conv_representation(net, batches), k)}
