"""Data-parallel and parameter-server training as real processes on loopback (tiny model, generated images)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch

from edgelearn.errors import ModelFileError
from edgelearn.training import TrainConfig
from edgelearn.training import train as run_training
from tests.conftest import make_image_folder

TINY = {"backbone": "tiny", "weights": "random", "strategy": "full", "lr": 1e-2, "batch_size": 8}


def train(dataset, output, **settings):
    """One quiet run of the dispatcher on a TrainConfig of these settings."""
    return run_training(TrainConfig(dataset, output, **settings), log=lambda *a: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("dist") / "data", per_class=20)


def shapes(path):
    return {k: v.shape for k, v in torch.load(path, weights_only=True).items()}


@pytest.mark.parametrize("mode", ["ddp", "ps"])
def test_two_workers_train_the_same_model_to_a_lower_loss(data, tmp_path, mode):
    train(data, tmp_path / "single.pt", epochs=1, **TINY)
    result = train(data, tmp_path / f"{mode}.pt", mode=mode, workers=2, epochs=3, **TINY)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3] and result["workers"] == 2
    assert result["history"][-1]["val_loss"] < result["history"][0]["val_loss"]
    assert result["history"][-1]["val_accuracy"] == 1.0 and result["test_accuracy"] == 1.0
    assert shapes(tmp_path / f"{mode}.pt") == shapes(tmp_path / "single.pt")


def test_data_parallel_run_resumes_from_its_checkpoint(data, tmp_path):
    train(data, tmp_path / "d.pt", mode="ddp", workers=2, epochs=1, **TINY)
    resumed = train(data, tmp_path / "d.pt", mode="ddp", workers=2, epochs=2, resume=True, **TINY)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    with pytest.raises(ModelFileError, match="another run"):
        train(data, tmp_path / "d.pt", mode="ddp", workers=2, epochs=3, resume=True, **{**TINY, "lr": 0.5})


def run_and_kill(args, worker: str, when: str, tmp_path):
    """Run `edgelearn train`; kill the worker (pid) named by the line matching `worker` once one matches `when`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgelearn", "train", *map(str, args), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines, pid, killed = [], None, False
    for line in proc.stdout:
        lines.append(line)
        if pid is None and (match := re.search(worker, line)):
            pid = int(match.group(1))
        if pid and not killed and re.search(when, line):
            os.kill(pid, signal.SIGKILL)
            killed = True
    assert proc.wait(timeout=600) == 0, "".join(lines[-30:])
    assert killed, "".join(lines)
    return "".join(lines)


def cli_args(data, out, mode):
    return [data, "-o", out, "--mode", mode, "--workers", "2", "--backbone", "tiny", "--weights", "random",
            "--strategy", "full", "--lr", "0.01", "--batch-size", "2", "--epochs", "3"]


def test_a_killed_parameter_server_worker_does_not_stop_the_run(data, tmp_path):
    worker = r"ps worker 2 \(pid (\d+)\) starts epoch 1"
    out = run_and_kill(cli_args(data, tmp_path / "ps.pt", "ps"), worker, worker, tmp_path)  # as it starts
    assert "worker2 failed" in out and "1 worker(s) go on" in out
    history = torch.load(tmp_path / "ps.ckpt", weights_only=True)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["train_accuracy"] > 0 for h in history)  # every epoch trained on the survivor


def test_a_killed_data_parallel_worker_restarts_from_the_checkpoint(data, tmp_path):
    args = cli_args(data, tmp_path / "ddp.pt", "ddp")
    out = run_and_kill(args, r"ddp worker 1 \(pid (\d+)\) ready", "epoch 1: train loss", tmp_path)  # in epoch 2
    assert "restarting all 2 from the last checkpoint" in out and "resuming after epoch" in out
    history = torch.load(tmp_path / "ddp.ckpt", weights_only=True)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((tmp_path / "ddp.json").read_text())["fine_tuned"]["epoch"] in (1, 2, 3)


def test_online_sessions_continue_under_the_weight_constraint(data, tmp_path):
    train(data, tmp_path / "s1.pt", epochs=1, **TINY)
    second = train(data, tmp_path / "s2.pt", epochs=1, start_from=tmp_path / "s1.pt", max_norm=0.5, dropout=0.2,
                   **TINY)
    assert second["history"][0]["val_accuracy"] == 1.0
    weights = torch.load(tmp_path / "s2.pt", weights_only=True)
    for name, value in weights.items():
        if name.endswith("weight") and value.dim() in (2, 4):  # conv filters and linear rows
            assert value.flatten(1).norm(dim=1).max() <= 0.5 + 1e-4, name
    other = make_image_folder(tmp_path / "other", per_class=3)
    (other / "train" / "red").rename(other / "train" / "crimson")
    with pytest.raises(ModelFileError, match="knows the classes"):
        train(other, tmp_path / "s3.pt", epochs=1, start_from=tmp_path / "s1.pt", **TINY)


def test_bad_modes_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        train(data, tmp_path / "x.pt", mode="mpi", **TINY)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        train(data, tmp_path / "x.pt", mode="ddp", workers=0, **TINY)


def test_parameter_server_and_workers_started_separately_as_on_several_machines(data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [data, "-o", tmp_path / "ps.pt", "--mode", "ps", "--workers", "2", "--address", f"127.0.0.1:{port}",
              "--backbone", "tiny", "--weights", "random", "--strategy", "full", "--lr", "0.01", "--batch-size", "8",
              "--epochs", "2", "--json"]
    command = [sys.executable, "-m", "edgelearn", "train"]
    server = subprocess.Popen([*command, *map(str, common)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [subprocess.Popen([*command, *map(str, common), "--rank", str(rank), "--threads", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (1, 2)]
    out, errors = server.communicate(timeout=300)
    assert server.returncode == 0, errors[-2000:]
    result = json.loads(out)
    assert [h["epoch"] for h in result["history"]] == [1, 2] and result["history"][-1]["val_accuracy"] == 1.0
    for rank, worker in enumerate(workers, 1):
        worker_out, worker_err = worker.communicate(timeout=60)
        assert worker.returncode == 0, worker_err[-2000:]
        assert json.loads(worker_out.splitlines()[-1]) == {"mode": "ps", "rank": rank, "server": f"127.0.0.1:{port}"}
        assert f"ps worker {rank} (pid {worker.pid}) starts epoch 2" in worker_err


def largest_unit_norm(path):
    weights = torch.load(path, weights_only=True)
    return max(v.flatten(1).norm(dim=1).max().item() for k, v in weights.items()
               if k.endswith("weight") and v.dim() in (2, 4))


def test_parameter_server_applies_the_weight_constraint(data, tmp_path):
    train(data, tmp_path / "ps.pt", mode="ps", workers=2, epochs=1, max_norm=0.5, **TINY)
    assert largest_unit_norm(tmp_path / "ps.pt") <= 0.5 + 1e-4


def test_parameter_server_keeps_and_resumes_its_optimiser_state(data, tmp_path):
    """AdamW's step count runs on across epochs and a resume: the server's optimiser steps, and it is checkpointed."""
    steps_per_epoch = -(-54 // 8)  # 60 images less 6 held out for validation, in batches of 8
    train(data, tmp_path / "ps.pt", mode="ps", workers=2, epochs=1, **TINY)
    first = torch.load(tmp_path / "ps.ckpt", weights_only=True)["optimizer"]["state"]
    assert first and {int(s["step"]) for s in first.values()} == {steps_per_epoch}
    train(data, tmp_path / "ps.pt", mode="ps", workers=2, epochs=2, resume=True, **TINY)
    second = torch.load(tmp_path / "ps.ckpt", weights_only=True)["optimizer"]["state"]
    assert {int(s["step"]) for s in second.values()} == {2 * steps_per_epoch}


def test_parameter_server_hands_out_batches_on_demand_and_takes_back_a_lost_one():
    from edgelearn.training.distributed import _Epoch

    epoch = _Epoch(list(range(17)), batch_size=4)  # 4 batches of 4; a last batch of one is left out
    assert epoch.hand_out(1) == [0, 1, 2, 3] and epoch.hand_out(2) == [4, 5, 6, 7]
    epoch.done(1, (2.0, 3, 4))
    assert epoch.hand_out(1) == [8, 9, 10, 11]  # the free worker takes the next batch, not a fixed share
    assert epoch.lost(2) == [4, 5, 6, 7]  # worker 2 died: its batch goes back
    epoch.done(1, (1.0, 4, 4))
    assert [epoch.hand_out(1), epoch.hand_out(1), epoch.hand_out(1)] == [[12, 13, 14, 15], [4, 5, 6, 7], None]
    assert epoch.totals == [3.0, 7, 8]
