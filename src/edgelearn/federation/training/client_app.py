"""Flower ClientApp: a site describes its data (round 0) and trains the decoupled layers it receives on its
own images' shared feature maps; images never leave the site."""

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgelearn.federation.training.features import local_training, shared_features
from edgelearn.federation.training.heads import DenseHead, PathHead, class_activation_sums


def _site_cache(context: Context) -> tuple[Path, Path]:
    node = dict(context.node_config)
    return Path(node["data"]), Path(node.get("workdir") or Path(context.run_config.get("workdir", ".")) / "site")


def _site_data(context: Context):
    data, workdir = _site_cache(context)
    cfg = dict(context.run_config)
    return shared_features(data, "train", weights=cfg.get("weights"), input_size=int(cfg.get("input-size", 0)) or None,
                           cache=workdir)


app = ClientApp()


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Round 0: the site's classes and image counts and, for TeAM, per-class activation statistics."""
    features, labels, layers = _site_data(context)
    classes = sorted(set(labels))
    content = {"site": ConfigRecord({"classes": classes, "counts": [labels.count(c) for c in classes]})}
    if msg.content["config"]["strategy"] == "team":
        sums = class_activation_sums(DenseHead(layers, 1), features, labels)
        content["statistics"] = ArrayRecord({f"{c}/{k}": sums[c][k] for c in classes for k in "EPL"})
    return Message(content=RecordDict(content), reply_to=msg)


@app.train()
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

