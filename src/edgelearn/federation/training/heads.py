"""TeAM (Qin et al.): a pretrained CNN's last layers decoupled into per-class critical paths.

MobileNetV2 splits into *shared layers* (``features[:17]``, frozen: every site computes their
feature maps once) and the *decoupled layers* (block 17's expand / depthwise / project convolutions,
the last 1x1 convolution, the classifier), batch norms folded into the convolutions. :class:`DenseHead`
is those layers as they are (what FedAvg trains and sends whole). :class:`PathHead` keeps, per
class, only the filters that class activates most (``fraction`` of each layer) and cuts every
connection between paths: path k's filters convolve path k's feature maps only, and its last
filters feed only its own class score. Every tensor of a :class:`PathHead` is stacked path by path
along its first dimension, so a path is one slice of each tensor: a site with k classes receives,
trains and returns k slices, and the server averages corresponding slices.
"""

import torch
from torch import nn
from torch.nn import functional as F

from edgelearn.errors import ParameterError

SHARED_BLOCKS = 17  # MobileNetV2's features[:17] stay shared and frozen
# Every path starts out saying "not my class" (sigmoid 0.12) with zero weights on its features: a
# site trains a path only against the classes it holds, and a path's score on classes it never met
# then stays near this prior instead of a random offset (non-IID imagenette: 2-4 points better).
START_SCORE = -2.0


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def split_mobilenet_v2(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The frozen shared layers and the decoupled layers' folded weights (``E``, ``D``, ``P``, ``L``)."""
    if not hasattr(model, "features") or len(model.features) != 19:
        raise ValueError("TeAM decoupling is implemented for torchvision's mobilenet_v2")
    block, last = model.features[17].conv, model.features[18]
    with torch.no_grad():
        layers = {}
        for name, (conv, bn) in {"E": (block[0][0], block[0][1]), "D": (block[1][0], block[1][1]),
                                 "P": (block[2], block[3]), "L": (last[0], last[1])}.items():
            layers[name + ".weight"], layers[name + ".bias"] = (t.detach().clone() for t in _fold(conv, bn))
    trunk = model.features[:SHARED_BLOCKS].eval().requires_grad_(False)
    return trunk, layers


class DenseHead(nn.Module):
    """The decoupled layers undivided, with a classifier for ``n_classes``: FedAvg's model."""

    def __init__(self, layers: dict[str, torch.Tensor], n_classes: int, seed: int = 0):
        super().__init__()
        c_in, c_e, c_p, c_l = layers["E.weight"].shape[1], layers["E.weight"].shape[0], \
            layers["P.weight"].shape[0], layers["L.weight"].shape[0]
        self.E = nn.Conv2d(c_in, c_e, 1)
        self.D = nn.Conv2d(c_e, c_e, 3, padding=1, groups=c_e)
        self.P = nn.Conv2d(c_e, c_p, 1)
        self.L = nn.Conv2d(c_p, c_l, 1)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc = nn.Linear(c_l, n_classes)
        self.load_state_dict({**layers, "fc.weight": self.fc.weight, "fc.bias": self.fc.bias})

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per layer, the output feature maps (after the activation; the linear projection's magnitude)."""
        e = F.relu6(self.E(x))
        d = F.relu6(self.D(e))
        p = self.P(d)
        return {"E": e, "D": d, "P": p.abs(), "L": F.relu6(self.L(p))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.P(F.relu6(self.D(F.relu6(self.E(x)))))
        return self.fc(F.dropout(F.relu6(self.L(p)).mean((2, 3)), 0.2, self.training))


def class_activation_sums(dense: DenseHead, features: torch.Tensor, labels: list[str]) -> dict[str, dict]:
    """Per class: the summed mean activation of every channel of E, P and L, and the image count
    (what a site shares for path selection: statistics, never images)."""
    out: dict[str, dict] = {}
    with torch.no_grad():
        for i in range(0, len(features), 64):
            acts = dense.activations(features[i:i + 64])
            for j, label in enumerate(labels[i:i + 64]):
                entry = out.setdefault(label, {"count": 0, **{k: 0.0 for k in "EPL"}})
                entry["count"] += 1
                for k in "EPL":
                    entry[k] = entry[k] + acts[k][j].mean((1, 2))
    return out


def select_paths(sums: dict[str, dict], fraction: float) -> dict[str, dict[str, torch.Tensor]]:
    """Per class, the indices of the ``fraction`` of filters in E, P and L it activates most."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the path fraction must be in (0, 1], got {fraction}")
    paths = {}
    for label, entry in sorted(sums.items()):
        paths[label] = {}
        for k in "EPL":
            mean = entry[k] / entry["count"]
            paths[label][k] = torch.sort(torch.topk(mean, max(1, round(fraction * len(mean)))).indices).values
    return paths


class PathHead(nn.Module):
    """``len(classes)`` disconnected critical paths; output column k is ``classes[k]``'s score."""

    def __init__(self, classes: list[str], sizes: dict[str, int], in_channels: int):
        super().__init__()
        self.classes, self.sizes = list(classes), dict(sizes)
        k, e, p, l_ = len(classes), sizes["E"], sizes["P"], sizes["L"]
        self.E = nn.Conv2d(in_channels, k * e, 1)  # each path sees all shared feature maps
        self.D = nn.Conv2d(k * e, k * e, 3, padding=1, groups=k * e)
        self.P = nn.Conv2d(k * e, k * p, 1, groups=k)  # groups = paths: no connection between them
        self.L = nn.Conv2d(k * p, k * l_, 1, groups=k)
        self.fc = nn.Conv2d(k * l_, k, 1, groups=k)

    @classmethod
    def decouple(cls, layers: dict[str, torch.Tensor], paths: dict[str, dict[str, torch.Tensor]]) -> "PathHead":
        """Cut the pretrained decoupled layers into the selected paths (the class scores start at
        START_SCORE)."""
        classes = sorted(paths)
        sizes = {k: len(paths[classes[0]][k]) for k in "EPL"}
        head = cls(classes, sizes, layers["E.weight"].shape[1])
        state = {}
        for name, rows, cols in (("E", "E", None), ("D", "E", None), ("P", "P", "E"), ("L", "L", "P")):
            weights, biases = [], []
            for c in classes:
                w = layers[f"{name}.weight"][paths[c][rows]]
                weights.append(w if cols is None else w[:, paths[c][cols]])
                biases.append(layers[f"{name}.bias"][paths[c][rows]])
            state[f"{name}.weight"], state[f"{name}.bias"] = torch.cat(weights), torch.cat(biases)
        head.load_state_dict({**state, "fc.weight": torch.zeros_like(head.fc.weight),
                              "fc.bias": torch.full_like(head.fc.bias, START_SCORE)})
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.P(F.relu6(self.D(F.relu6(self.E(x)))))
        pooled = F.dropout(F.relu6(self.L(p)).mean((2, 3), keepdim=True), 0.2, self.training)
        return self.fc(pooled).flatten(1)

    def path_state(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The slices of paths ``indices`` in every tensor (a specialised model's state, path order kept)."""
        return {name: _rows(t, len(self.classes), indices) for name, t in self.state_dict().items()}

    def specialise(self, classes: list[str]) -> "PathHead":
        """A model with only these classes' paths (the shared layers stay on the site)."""
        missing = sorted(set(classes) - set(self.classes))
        if missing:
            raise ParameterError(f"no critical path for {', '.join(missing)}")
        indices = [self.classes.index(c) for c in classes]
        head = PathHead(classes, self.sizes, self.E.in_channels)
        head.load_state_dict(self.path_state(indices))
        return head

    def reset_paths(self, indices: list[int], seed: int = 0) -> None:
        """Give paths ``indices`` fresh random weights (a new class's path is trained from scratch; its
        score starts at START_SCORE like every path's)."""
        if not indices:
            return
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            fresh = PathHead(self.classes, self.sizes, self.E.in_channels).state_dict()
        fresh["fc.weight"].zero_()
        fresh["fc.bias"].fill_(START_SCORE)
        k = len(self.classes)
        with torch.no_grad():
            for name, tensor in self.state_dict().items():
                per = tensor.shape[0] // k
                for i in indices:
                    tensor[i * per:(i + 1) * per] = fresh[name][i * per:(i + 1) * per]


def _rows(tensor: torch.Tensor, paths: int, indices: list[int]) -> torch.Tensor:
    per = tensor.shape[0] // paths
    return torch.cat([tensor[i * per:(i + 1) * per] for i in indices]).clone()


def average_paths(global_state: dict[str, torch.Tensor], classes: list[str],
                  updates: list[tuple[list[str], dict[str, torch.Tensor], dict[str, float]]]) -> dict:
    """The server's aggregation: each path becomes the weighted mean of the sites' versions of it
    (weights: the site's images of that class); a path no site trained keeps its values.

    ``updates``: per site, (its path classes in order, its specialised state, class -> weight).
    """
    out = {}
    for name, tensor in global_state.items():
        per = tensor.shape[0] // len(classes)
        total = torch.zeros(len(classes), dtype=torch.float64)
        acc = torch.zeros((len(classes), per, *tensor.shape[1:]), dtype=torch.float64)
        for site_classes, state, weights in updates:
            rows = state[name].reshape(len(site_classes), per, *tensor.shape[1:]).double()
            for j, c in enumerate(site_classes):
                k = classes.index(c)
                acc[k] += weights[c] * rows[j]
                total[k] += weights[c]
        old = tensor.reshape(len(classes), per, *tensor.shape[1:])
        trained = (total > 0).view(-1, *[1] * (acc.dim() - 1))
        mean = acc / total.clamp(min=1e-12).view(-1, *[1] * (acc.dim() - 1))
        out[name] = torch.where(trained, mean.to(tensor.dtype), old).reshape(tensor.shape)
    return out
