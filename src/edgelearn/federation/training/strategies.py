"""Flower strategies: FedAvg counting its traffic, and TeAM (each site trains only its classes' critical paths)."""

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from edgelearn.federation.training.heads import PathHead, average_paths, select_paths

STRATEGIES = ("fedavg", "team")
PATH_FRACTION = 0.15  # of each decoupled layer's filters per class path

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



def decouple(layers: dict, replies: list[Message], fraction: float, new_classes: list[str], seed: int) -> PathHead:
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

