"""Flower ServerApp: query the sites, build the global model (FedAvg's dense head or TeAM's paths), run the
rounds, and write the history and the model."""

import io
import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from edgelearn.backbones import build_classifier
from edgelearn.errors import FederationError
from edgelearn.federation.nodes import wait_for_nodes
from edgelearn.federation.training.features import accuracy, shared_features
from edgelearn.federation.training.heads import DenseHead, split_mobilenet_v2
from edgelearn.federation.training.strategies import (
    PATH_FRACTION,
    STRATEGIES,
    CountingFedAvg,
    TeAM,
    array_bytes,
    decouple,
)
from edgelearn.files import atomic_write_bytes

app = ServerApp()


@app.main()
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
        head = decouple(layers, replies, float(cfg.get("path-fraction", PATH_FRACTION)), new, int(cfg.get("seed", 0)))
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

