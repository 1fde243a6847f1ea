"""Federation on Flower with real processes on loopback: two sites teach different classes."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgelearn.data import FolderDataset
from edgelearn.knowledge import SiteKey
from edgelearn.recognizer import Recognizer

pytest.importorskip("flwr")

SITE_CLASSES = {"a": {"red": (220, 30, 30), "green": (30, 200, 40)},
                "b": {"blue": (30, 40, 220), "yellow": (220, 220, 30)}}
CONFIG = {"backbone": "tiny", "weights": "random", "learner": "ncm"}


@pytest.fixture
def sites(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    for site, classes in SITE_CLASSES.items():
        for split, n in (("train", 4), ("test", 2)):
            for name, rgb in classes.items():
                folder = tmp_path / "data" / site / split / name
                folder.mkdir(parents=True)
                for i in range(n):
                    pixels = np.clip(np.array(rgb) + rng.integers(-25, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
    return {site: tmp_path / "data" / site for site in SITE_CLASSES}


def assert_every_site_knows_everything(sites, workdir):
    for site in sites:
        rec = Recognizer.load(workdir / site / "merged.edge")
        assert sorted(rec.classes) == ["blue", "green", "red", "yellow"]
        for other in sites.values():  # including the classes only the other site ever saw
            test = FolderDataset.scan(other, "test")
            assert [p.label for p in rec.predict(test.paths)] == list(test.labels)


def test_simulation_runtime(sites, tmp_path):
    from flwr.simulation import run_simulation

    from edgelearn.federation.knowledge.client_app import create_client_app
    from edgelearn.federation.knowledge.server_app import create_server_app

    config = {**CONFIG, "site-data": ",".join(str(p) for p in sites.values()), "workdir": str(tmp_path / "work"),
              "num-rounds": 1, "min-sites": 2, "allow-unsigned": True}
    run_simulation(create_server_app(config), create_client_app(config), num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1}})
    assert_every_site_knows_everything(sites, tmp_path / "work")


def test_deployment_with_tls_node_auth_and_signed_packages(sites, tmp_path):
    """A SuperLink and two SuperNodes as separate processes on loopback, over TLS, only registered
    SuperNodes admitted, every package signed and checked."""
    from edgelearn.federation.deploy import federate

    keys, trust = tmp_path / "keys", tmp_path / "trust"
    trust.mkdir()
    for name in ("a", "b", "server"):
        _, public = SiteKey.generate(name).save(keys)
        (trust / public.name).write_bytes(public.read_bytes())
    config = {**CONFIG, "keys": {s: keys / f"{s}.key" for s in sites}, "server-key": str(keys / "server.key"),
              "trust-dir": str(trust)}
    history = federate(sites, tmp_path / "work", rounds=2, config=config, tls=True, node_auth=True, timeout=300)
    assert [h["sites"] for h in history] == [2, 2]
    assert all(m["classes"] == 4 and m["accuracy"] == 1.0 for h in history for m in h["site_metrics"])
    assert all(b > 0 for h in history for b in h["bytes_sent_per_site"])
    assert_every_site_knows_everything(sites, tmp_path / "work")
    assert "https://127.0.0.1" in (tmp_path / "work" / "logs" / "superlink.log").read_text()


def test_node_auth_without_tls_is_refused(sites, tmp_path):
    from edgelearn.federation.deploy import federate

    with pytest.raises(ValueError, match="needs TLS"):
        federate(sites, tmp_path / "work", node_auth=True)


@pytest.mark.parametrize("strategy", ["team", "fedavg"])
def test_sites_train_the_last_layers_together(sites, tmp_path, strategy):
    """FedAvg / TeAM on real processes: the global model learns every site's classes; TeAM sends each
    site only its classes' paths."""
    import json

    import torch
    from typer.testing import CliRunner

    from edgelearn.backbones import build_classifier
    from edgelearn.cli import app
    from edgelearn.federation.training.heads import DenseHead, split_mobilenet_v2
    from tests.conftest import SHARED

    weights = SHARED / "models" / "mobilenet_v2_imagenet.pt"
    if not weights.is_file():
        pytest.skip("needs the shared ImageNet weights")
    test_all = tmp_path / "all"
    for site in sites.values():  # the server's held-out set: every site's test images
        for folder in (site / "test").iterdir():
            (test_all / "test" / folder.name).mkdir(parents=True)
            for image in folder.iterdir():
                (test_all / "test" / folder.name / image.name).symlink_to(image)
    args = [*[f"--site={k}={v}" for k, v in sites.items()], "--strategy", strategy, "--rounds", "2", "--local-epochs",
            "3", "--input-size", "64", "--weights", str(weights), "--test", str(test_all),
            "--workdir", str(tmp_path / "w")]
    result = CliRunner().invoke(app, ["federate-train", *args, "--json"])
    assert result.exit_code == 0, result.output
    history = json.loads(result.stdout)
    rounds = history["rounds"]
    assert history["classes"] == ["blue", "green", "red", "yellow"]
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"]
    model = torch.load(tmp_path / "w" / "model.pt", weights_only=True)
    assert model["classes"] == history["classes"] and model["strategy"] == strategy
    layers = split_mobilenet_v2(build_classifier("mobilenet_v2", weights="random")[0])[1]
    dense_bytes = sum(t.numel() * 4 for t in DenseHead(layers, 4).state_dict().values())
    per_site = rounds[1]["bytes_down"] / 2
    if strategy == "team":  # each site: its 2 classes' paths of 15 % of the filters (~1/11 of the layers)
        assert rounds[-1]["accuracy"] == 1.0  # disjoint classes per site: the paths never compete
        assert per_site < dense_bytes / 8
        assert history["query_bytes"] > 0
    else:
        assert abs(per_site - dense_bytes) / dense_bytes < 0.01

