"""The two Flower apps: each one's components and run config in a pyproject.toml beside its modules."""

import importlib
import tomllib
from importlib import resources

import pytest

pytest.importorskip("flwr")

# what `edgelearn federate` (and the benchmarks) put in each app's run config
SENT = {"knowledge": {"num-rounds", "min-sites", "output", "workdir", "learner", "backbone", "weights", "input-size",
                      "consolidate", "allow-unsigned", "trust-dir", "server-key"},
        "training": {"num-rounds", "min-sites", "output", "workdir", "strategy", "weights", "input-size",
                     "local-epochs", "lr", "path-fraction", "new-classes", "test-data"}}


@pytest.mark.parametrize("app", ["knowledge", "training"])
def test_each_flower_app_declares_its_components_and_every_config_key_it_is_sent(app):
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from edgelearn.federation.deploy import APPS

    project = tomllib.loads((resources.files(APPS[app]) / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    for role, kind in (("serverapp", ServerApp), ("clientapp", ClientApp)):
        module, _, name = project["components"][role].partition(":")
        assert module.startswith(APPS[app] + ".")
        assert isinstance(getattr(importlib.import_module(module), name), kind)
    assert SENT[app] <= set(project["config"])  # Flower refuses a run-config key its app does not declare


def test_run_and_node_configs_are_written_as_toml_that_keeps_spaces_and_quotes(tmp_path):
    from pathlib import Path

    from edgelearn.federation.deploy import _write_toml

    values = {"data": Path("/plant a/line \"2\""), "consolidate": True, "input-size": 0, "lr": 0.01, "skip": None}
    path = _write_toml(tmp_path / "run.toml", values)
    assert tomllib.loads(path.read_text()) == {"data": '/plant a/line "2"', "consolidate": True, "input-size": 0,
                                               "lr": 0.01}
