"""Federated training of the network's last layers on Flower: FedAvg or TeAM (Qin et al.).

The shared layers (MobileNetV2 ``features[:17]``, ImageNet weights) stay frozen, so every site
computes its images' shared feature maps once and trains only the decoupled layers on them, for
``local-epochs`` per round (SGD, momentum 0.9). Images never leave a site.

- ``fedavg``: every site trains the whole decoupled part (:class:`~edgelearn.federation.team.DenseHead`)
  and Flower's ``FedAvg`` averages it, weighted by the sites' image counts.
- ``team``: first the sites report, per class, their images' mean channel activations (statistics,
  no images); the server selects each class's critical path and decouples the layers
  (:class:`~edgelearn.federation.team.PathHead`); each round a site receives, trains (one-vs-rest:
  each path scores its own class) and returns only its classes' paths, and the server averages each
  path over the sites that have that class.
  Classes named in ``new-classes`` get randomly initialised paths that learn 10x faster.

Both count the bytes of the arrays sent and received each round. ``test-data`` (a folder with a
``test/`` split) gives the server a held-out set to score the global model after every round. The
history goes to ``output`` (JSON), the global model beside it (``model.pt``: strategy, classes,
path sizes and the state of the decoupled layers).
"""

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from edgelearn.backbones import build_classifier
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.errors import FederationError
from edgelearn.federation.server_app import wait_for_nodes
from edgelearn.federation.team import (
    DenseHead,
    PathHead,
    average_paths,
    class_activation_sums,
    select_paths,
    split_mobilenet_v2,
)
from edgelearn.files import atomic_write_bytes
from edgelearn.training.loop import cross_entropy, run_batches

STRATEGIES = ("fedavg", "team")
PATH_FRACTION = 0.15  # of each decoupled layer's filters per class path
NEW_PATH_LR = 10.0  # Qin et al.: a new class's critical path learns 10x faster than the old ones


# --- what a site computes -------------------------------------------------------------------------

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


# --- strategies -----------------------------------------------------------------------------------

def array_bytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


class CountingFedAvg(FedAvg):
    """Flower's FedAvg, counting the bytes of arrays sent to and received from the sites per round."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.traffic: dict[int, dict[str, int]] = {}

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._count(server_round, "bytes_down", messages)
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self._count(server_round, "bytes_up", [r for r in replies if not r.has_error()])
        return super().aggregate_train(server_round, replies)

    def _count(self, server_round: int, direction: str, messages: list[Message]) -> None:
        total = sum(array_bytes(m.content[self.arrayrecord_key]) for m in messages)
        self.traffic.setdefault(server_round, {})[direction] = total


class TeAM(CountingFedAvg):
    """Each site gets the critical paths of its classes only; each path is averaged over the sites
    that trained it, weighted by their images of its class."""

    def __init__(self, head: PathHead, site_counts: dict[int, dict[str, int]], new_classes: Iterable[str] = (),
                 **kwargs):
        super().__init__(**kwargs)
        self.template, self.site_counts, self.new_classes = head, site_counts, set(new_classes)

    def configure_train(self, server_round, arrays, config, grid):
        head = self._head(arrays)
        messages = []
        for node, counts in self.site_counts.items():
            classes = sorted(counts)
            indices = [head.classes.index(c) for c in classes]
            site_config = ConfigRecord({**dict(config), "server-round": server_round, "classes": classes,
                                        "boost": [i for i, c in enumerate(classes) if c in self.new_classes]})
            content = RecordDict({self.arrayrecord_key: ArrayRecord(head.path_state(indices)),
                                  self.configrecord_key: site_config})
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        self._count(server_round, "bytes_down", messages)
        return messages

    def aggregate_train(self, server_round, replies):
        valid = [r for r in replies if not r.has_error()]
        self._count(server_round, "bytes_up", valid)
        if not valid:
            return None, None
        updates = []
        for reply in valid:
            counts = self.site_counts[reply.metadata.src_node_id]
            updates.append((sorted(counts), reply.content[self.arrayrecord_key].to_torch_state_dict(), counts))
        merged = average_paths(self.template.state_dict(), self.template.classes, updates)
        self.template.load_state_dict(merged)
        metrics = self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)
        return ArrayRecord(merged), metrics

    def _head(self, arrays: ArrayRecord) -> PathHead:
        self.template.load_state_dict(arrays.to_torch_state_dict())
        return self.template


# --- the Flower apps ------------------------------------------------------------------------------

def _site_cache(context: Context) -> tuple[Path, Path]:
    node = dict(context.node_config)
    return Path(node["data"]), Path(node.get("workdir") or Path(context.run_config.get("workdir", ".")) / "site")


def _site_data(context: Context):
    data, workdir = _site_cache(context)
    cfg = dict(context.run_config)
    return shared_features(data, "train", weights=cfg.get("weights"), input_size=int(cfg.get("input-size", 0)) or None,
                           cache=workdir)


client_app = ClientApp()


@client_app.query()
def describe(msg: Message, context: Context) -> Message:
    """Round 0: the site's classes and image counts and, for TeAM, per-class activation statistics."""
    features, labels, layers = _site_data(context)
    classes = sorted(set(labels))
    content = {"site": ConfigRecord({"classes": classes, "counts": [labels.count(c) for c in classes]})}
    if msg.content["config"]["strategy"] == "team":
        sums = class_activation_sums(DenseHead(layers, 1), features, labels)
        content["statistics"] = ArrayRecord({f"{c}/{k}": sums[c][k] for c in classes for k in "EPL"})
    return Message(content=RecordDict(content), reply_to=msg)


@client_app.train()
def train_round(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    features, labels, layers = _site_data(context)
    state = msg.content["arrays"].to_torch_state_dict()
    classes = list(config["classes"])
    if config["strategy"] == "team":
        sizes = {k: int(config[f"size-{k}"]) for k in "EPL"}
        head = PathHead(classes, sizes, features.shape[1])
    else:
        head = DenseHead(layers, len(classes))
    head.load_state_dict(state)
    keep = [i for i, label in enumerate(labels) if label in classes]
    targets = torch.tensor([classes.index(labels[i]) for i in keep])
    metrics = local_training(head, features[keep], targets, epochs=int(config["local-epochs"]), lr=float(config["lr"]),
                             seed=int(config["server-round"]), boost=list(config.get("boost", [])))
    content = RecordDict({"arrays": ArrayRecord(head.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


server_app = ServerApp()


def _decouple(layers: dict, replies: list[Message], fraction: float, new_classes: list[str], seed: int) -> PathHead:
    """TeAM's global model: every site's activation statistics summed per class, each class's path
    selected from them; the paths of ``new_classes`` start random."""
    totals = {}
    for r in replies:
        stats = r.content["statistics"].to_torch_state_dict()
        for c, n in zip(r.content["site"]["classes"], r.content["site"]["counts"], strict=True):
            entry = totals.setdefault(c, {"count": 0, **{k: 0.0 for k in "EPL"}})
            entry["count"] += n
            for k in "EPL":
                entry[k] = entry[k] + stats[f"{c}/{k}"]
    head = PathHead.decouple(layers, select_paths(totals, fraction))
    head.reset_paths([head.classes.index(c) for c in new_classes if c in head.classes], seed=seed)
    return head


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    try:
        run(cfg, grid)
    except Exception as exc:  # tell the waiting `federate` why, instead of letting it time out
        if cfg.get("output"):
            atomic_write_bytes(Path(cfg["output"]), json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        raise


def run(cfg: dict, grid: Grid) -> dict:
    """Query the sites, build the global model, run the rounds, write the history (and the model)."""
    strategy_name = str(cfg.get("strategy", "fedavg"))
    if strategy_name not in STRATEGIES:
        raise FederationError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy_name!r}")
    nodes = wait_for_nodes(grid, int(cfg.get("min-sites", 2)))
    ask = [Message(RecordDict({"config": ConfigRecord({"strategy": strategy_name})}), dst_node_id=n,
                   message_type=MessageType.QUERY) for n in nodes]
    answers = list(grid.send_and_receive(ask))
    replies = [r for r in answers if not r.has_error()]
    if len(replies) < len(nodes):
        reasons = "; ".join(r.error.reason.strip().splitlines()[-1] for r in answers if r.has_error())
        raise FederationError(f"only {len(replies)} of {len(nodes)} sites described their data ({reasons})")
    site_counts = {r.metadata.src_node_id: dict(zip(r.content["site"]["classes"], r.content["site"]["counts"],
                                                    strict=True)) for r in replies}
    classes = sorted({c for counts in site_counts.values() for c in counts})
    weights, size = cfg.get("weights") or None, int(cfg.get("input-size", 0)) or None
    test = None
    if cfg.get("test-data"):
        test = shared_features(Path(cfg["test-data"]), "test", weights=weights, input_size=size,
                               cache=Path(cfg.get("workdir", ".")) / "server")
        layers = test[2]
    else:
        layers = split_mobilenet_v2(build_classifier("mobilenet_v2", weights=weights, input_size=size)[0].eval())[1]
    train_config = {"strategy": strategy_name, "local-epochs": int(cfg.get("local-epochs", 1)),
                    "lr": float(cfg.get("lr", 0.01))}
    common = {"fraction_evaluate": 0.0, "min_train_nodes": len(nodes), "min_available_nodes": len(nodes)}
    query_bytes = sum(array_bytes(r.content["statistics"]) for r in replies if "statistics" in r.content)
    if strategy_name == "team":
        new = [c for c in str(cfg.get("new-classes", "")).split(",") if c]
        head = _decouple(layers, replies, float(cfg.get("path-fraction", PATH_FRACTION)), new, int(cfg.get("seed", 0)))
        train_config |= {f"size-{k}": head.sizes[k] for k in "EPL"}
        strategy = TeAM(head, site_counts, new_classes=new, **common)
    else:
        head = DenseHead(layers, len(classes), seed=int(cfg.get("seed", 0)))
        train_config["classes"] = classes
        strategy = CountingFedAvg(**common)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if test is None:
            return None
        head.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord({"accuracy": accuracy(head, classes, test[0], test[1])})

    result = strategy.start(grid, ArrayRecord(head.state_dict()), num_rounds=int(cfg.get("num-rounds", 1)),
                            train_config=ConfigRecord(train_config), evaluate_fn=evaluate)
    rounds = []
    for rnd in range(0, int(cfg.get("num-rounds", 1)) + 1):
        entry = {"round": rnd, **strategy.traffic.get(rnd, {})}
        if rnd in result.evaluate_metrics_serverapp:
            entry["accuracy"] = float(result.evaluate_metrics_serverapp[rnd]["accuracy"])
        if rnd in result.train_metrics_clientapp:
            entry |= {k: float(v) for k, v in result.train_metrics_clientapp[rnd].items()}
        rounds.append(entry)
        print(f"round {rnd}: {entry}", flush=True)
    history = {"strategy": strategy_name, "classes": classes, "sites": {str(n): c for n, c in site_counts.items()},
               "query_bytes": query_bytes, "rounds": rounds,
               "trainable_parameters": sum(p.numel() for p in head.parameters())}
    if cfg.get("output"):
        output = Path(cfg["output"])
        head.load_state_dict(result.arrays.to_torch_state_dict())
        buf = io.BytesIO()
        torch.save({"strategy": strategy_name, "classes": classes, "state": head.state_dict(),
                    "sizes": getattr(head, "sizes", None)}, buf)
        atomic_write_bytes(output.with_name("model.pt"), buf.getvalue())
        atomic_write_bytes(output, json.dumps(history, indent=1).encode())
    return history
