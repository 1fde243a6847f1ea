"""TeAM's critical paths and the federated aggregations, on random layers (no weights needed)."""

import copy
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message

from edgelearn.backbones import build_classifier
from edgelearn.federation.training.features import local_training
from edgelearn.federation.training.heads import (
    START_SCORE,
    DenseHead,
    PathHead,
    average_paths,
    class_activation_sums,
    select_paths,
    split_mobilenet_v2,
)
from edgelearn.federation.training.strategies import CountingFedAvg

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def layers():
    """Decoupled layers with MobileNetV2's shapes (160 -> 960 -> 320 -> 1280), random weights."""
    g = torch.Generator().manual_seed(0)
    shapes = {"E": (960, 160, 1, 1), "D": (960, 1, 3, 3), "P": (320, 960, 1, 1), "L": (1280, 320, 1, 1)}
    out = {}
    for name, shape in shapes.items():
        out[f"{name}.weight"] = torch.randn(shape, generator=g) / np.sqrt(np.prod(shape[1:]))
        out[f"{name}.bias"] = 0.1 * torch.randn(shape[0], generator=g)
    return out


def features(n=24, seed=1):
    return torch.rand(n, 160, 3, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def head(layers):
    x = features()
    labels = [CLASSES[i % 4] for i in range(len(x))]
    return PathHead.decouple(layers, select_paths(class_activation_sums(DenseHead(layers, 4), x, labels), 0.05))


def test_decoupling_keeps_the_shared_layers_frozen_and_splits_the_rest():
    model = build_classifier("mobilenet_v2", weights="random", input_size=64)[0].eval()
    trunk, folded = split_mobilenet_v2(model)
    assert not any(p.requires_grad for p in trunk.parameters()) and len(trunk) == 17
    x = trunk(torch.rand(2, 3, 64, 64))
    dense = DenseHead(folded, 5)
    with torch.no_grad():  # folding the batch norms keeps block 17 and the last conv computing the same
        expected = model.features[18](model.features[17](x)).mean((2, 3))
        got = torch.nn.functional.relu6(dense.L(dense.P(torch.nn.functional.relu6(
            dense.D(torch.nn.functional.relu6(dense.E(x))))))).mean((2, 3))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_a_specialised_model_for_k_classes_has_k_disconnected_paths(head):
    assert head.classes == CLASSES and head.sizes == {"E": 48, "P": 16, "L": 64}
    special = head.specialise(["b", "d"])
    assert special(features(3)).shape == (3, 2)
    for name, tensor in special.state_dict().items():
        assert tensor.shape[0] == 2 * head.state_dict()[name].shape[0] // 4
        torch.testing.assert_close(tensor, head.path_state([1, 3])[name])
    torch.nn.init.normal_(special.fc.weight)  # as after training (decoupled paths start with zero class weights)
    special.zero_grad()
    special(features(2))[:, 0].sum().backward()  # class b's score
    for name, param in special.named_parameters():
        rows = param.grad.reshape(2, -1)
        assert rows[1].abs().sum() == 0, f"path d's {name} influences class b"
    assert special.E.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no critical path for x"):
        head.specialise(["a", "x"])


def test_every_path_starts_at_the_same_not_my_class_score(head):
    head = copy.deepcopy(head).eval()
    scores = head(features(5, seed=7))
    torch.testing.assert_close(scores, torch.full((5, 4), START_SCORE))
    head.reset_paths([2], seed=1)  # a new class's path: random filters, the same starting score
    torch.testing.assert_close(head(features(5, seed=7)), torch.full((5, 4), START_SCORE))
    assert head.path_state([2])["E.weight"].abs().sum() > 0


def test_a_path_keeps_its_selected_filters_exactly(layers):
    x = features(8)
    dense = DenseHead(layers, 1)
    paths = select_paths(class_activation_sums(dense, x, ["a"] * 8), 1.0)  # one class, every filter
    head = PathHead.decouple(layers, paths)
    with torch.no_grad():
        expected = dense.activations(x)["L"]
        got = torch.nn.functional.relu6(head.L(head.P(torch.nn.functional.relu6(head.D(torch.nn.functional.relu6(
            head.E(x)))))))
    torch.testing.assert_close(got, expected[:, paths["a"]["L"]], atol=1e-5, rtol=1e-4)


def test_paths_are_averaged_per_class_weighted_by_images(head):
    state = head.state_dict()
    site1 = {k: v + 1.0 for k, v in head.path_state([0, 1]).items()}  # classes a, b
    site2 = {k: v + 4.0 for k, v in head.path_state([1, 2]).items()}  # classes b, c
    merged = average_paths(state, CLASSES, [(["a", "b"], site1, {"a": 10, "b": 30}),
                                            (["b", "c"], site2, {"b": 10, "c": 5})])
    for name, tensor in state.items():
        per = tensor.shape[0] // 4
        rows = [slice(i * per, (i + 1) * per) for i in range(4)]
        torch.testing.assert_close(merged[name][rows[0]], tensor[rows[0]] + 1.0)
        torch.testing.assert_close(merged[name][rows[1]], tensor[rows[1]] + (30 * 1.0 + 10 * 4.0) / 40)
        torch.testing.assert_close(merged[name][rows[2]], tensor[rows[2]] + 4.0)
        torch.testing.assert_close(merged[name][rows[3]], tensor[rows[3]])  # nobody has class d


def test_a_new_class_path_learns_ten_times_faster(layers):
    head = PathHead.decouple(layers, select_paths(class_activation_sums(DenseHead(layers, 2), features(8),
                                                                        ["a", "b"] * 4), 0.05))
    head.reset_paths([1], seed=3)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    twin = PathHead(head.classes, head.sizes, 160)
    twin.load_state_dict(before)
    x, y = features(8), torch.tensor([0, 1] * 4)
    torch.manual_seed(0)  # the same dropout masks for both
    local_training(head, x, y, epochs=1, lr=1e-3, seed=0, boost=[1], batch_size=8)
    torch.manual_seed(0)
    local_training(twin, x, y, epochs=1, lr=1e-3, seed=0, batch_size=8)
    for name in before:
        per = before[name].shape[0] // 2
        boosted = head.state_dict()[name] - before[name]
        plain = twin.state_dict()[name] - before[name]
        torch.testing.assert_close(boosted[:per], plain[:per])  # the old path: same step
        torch.testing.assert_close(boosted[per:], 10 * plain[per:], atol=1e-6, rtol=1e-3)  # weight decay is tiny


def reply(arrays: dict, examples: int, node: int) -> Message:
    """A site's training reply as the ServerApp receives it."""
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": examples})})
    metadata = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="q",
                        group_id="1", created_at=time.time(), ttl=60, message_type=MessageType.TRAIN)
    return make_message(metadata, content)


def test_fedavg_aggregation_is_the_weighted_mean_and_traffic_is_counted():
    strategy = CountingFedAvg(fraction_evaluate=0.0)
    a = {"w": np.full((3, 2), 1.0, np.float32), "b": np.zeros(4, np.float32)}
    b = {"w": np.full((3, 2), 5.0, np.float32), "b": np.ones(4, np.float32)}
    arrays, metrics = strategy.aggregate_train(1, [reply(a, 30, 1), reply(b, 10, 2)])
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((3, 2), (30 * 1 + 10 * 5) / 40))
    np.testing.assert_allclose(arrays["b"].numpy(), np.full(4, 0.25))
    assert strategy.traffic[1]["bytes_up"] == sum(len(Array(v).data) for v in [*a.values(), *b.values()])
