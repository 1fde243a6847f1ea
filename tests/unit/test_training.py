import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgelearn.backbones import build_backbone, build_classifier
from edgelearn.errors import ModelFileError
from edgelearn.training import TrainConfig, fit
from edgelearn.training import train as run_training

TINY = {"backbone": "tiny", "weights": "random", "batch_size": 8}


def train(dataset, output, **settings):
    """One quiet run of the dispatcher on a TrainConfig of these settings."""
    return run_training(TrainConfig(dataset, output, **settings), log=lambda *a: None)


def weights_of(path):
    return torch.load(path, weights_only=True)


def test_full_fine_tuning_learns_the_classes_and_loads_as_a_backbone(image_folder, tmp_path):
    result = train(image_folder, tmp_path / "ft.pt", strategy="full", epochs=3, lr=1e-2, **TINY)
    assert result["history"][-1]["val_accuracy"] == 1.0
    assert result["history"][-1]["val_loss"] < result["history"][0]["val_loss"]
    assert result["test_accuracy"] == 1.0 and result["test_loss"] < result["history"][0]["val_loss"]  # test/
    assert (tmp_path / "ft.json").is_file() and (tmp_path / "ft.png").stat().st_size > 1000
    bb = build_backbone("tiny", weights=tmp_path / "ft.pt", input_size=32)  # the head (3 classes) is dropped
    assert bb.feature_dim == 32 and bb.fingerprint["weights"] != "random:seed=0"


@pytest.mark.parametrize("strategy, changed", [("frozen", {"8"}), ("partial", {"4", "8"})])
def test_strategies_train_only_their_layers(image_folder, tmp_path, strategy, changed):
    train(image_folder, tmp_path / "ft.pt", strategy=strategy, epochs=1, lr=1e-2, trainable_blocks=1, **TINY)
    before, _, _, _ = build_classifier("tiny", weights="random")
    after = weights_of(tmp_path / "ft.pt")
    moved = {k.split(".")[0] for k, v in before.state_dict().items()
             if k in after and v.shape == after[k].shape and not torch.equal(v, after[k])}
    moved |= {k.split(".")[0] for k in after if after[k].shape != before.state_dict()[k].shape}
    assert moved == changed  # "8" is the head, "4" the last conv


def test_resume_continues_exactly_where_it_stopped(image_folder, tmp_path):
    train(image_folder, tmp_path / "straight.pt", strategy="full", epochs=2, **TINY)
    train(image_folder, tmp_path / "split.pt", strategy="full", epochs=1, **TINY)  # "interrupted"
    resumed = train(image_folder, tmp_path / "split.pt", strategy="full", epochs=2, resume=True, **TINY)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a, b = torch.load(tmp_path / "straight.ckpt", weights_only=True), torch.load(tmp_path / "split.ckpt",
                                                                                 weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value)
    with pytest.raises(ModelFileError, match="another run"):
        train(image_folder, tmp_path / "split.pt", strategy="frozen", epochs=3, resume=True, **TINY)


def test_test_scores_only_with_a_test_folder_of_known_classes(image_folder, tmp_path):
    shutil.rmtree(image_folder / "test" / "red")
    assert 0 <= train(image_folder, tmp_path / "a.pt", epochs=1, **TINY)["test_accuracy"] <= 1
    (image_folder / "test" / "blue").rename(image_folder / "test" / "purple")
    unknown = train(image_folder, tmp_path / "b.pt", epochs=1, **TINY)  # scored on green only
    assert unknown["test_classes_left_out"] == ["purple"] and 0 <= unknown["test_accuracy"] <= 1
    shutil.rmtree(image_folder / "test")
    assert "test_accuracy" not in train(image_folder, tmp_path / "c.pt", epochs=1, **TINY)


def test_bad_settings_are_refused(image_folder, tmp_path):
    with pytest.raises(ValueError, match="strategy must be"):
        train(image_folder, tmp_path / "x.pt", strategy="some", **TINY)
    (tmp_path / "x.ckpt").write_bytes(b"damaged")
    with pytest.raises(ModelFileError, match="cannot read the checkpoint"):
        train(image_folder, tmp_path / "x.pt", resume=True, **TINY)


def test_dropout_trains_even_when_only_the_head_learns(tmp_path):
    """A frozen feature extractor stays in eval mode (its batch norm keeps its statistics); the dropout before the
    head is on in training, so --dropout regularises --strategy frozen|partial too."""
    features, dropout, head = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), nn.Dropout(0.5), nn.Linear(8, 2)
    model = nn.Sequential(features, dropout, head)
    modes = []
    dropout.register_forward_hook(lambda module, *_: modes.append((module.training, features[1].training)))
    data = TensorDataset(torch.randn(16, 4), torch.arange(16) % 2)
    fit(model, torch.optim.SGD(head.parameters(), lr=0.1), data, data, targets=[i % 2 for i in range(16)],
        n_classes=2, epochs=1, batch_size=8, seed=0, checkpoint=tmp_path / "m.ckpt", config={},
        save_best=lambda metrics: None, learning=[head], log=lambda *a: None)
    assert modes[:2] == [(True, False), (True, False)]  # the two training batches
    assert modes[2:] and all(mode == (False, False) for mode in modes[2:])  # validation
