"""Run a federation as real processes on this machine: one Flower SuperLink, one SuperNode per site.

This is Flower's deployment runtime, the same one that spans machines (give each SuperNode the
SuperLink's address instead of loopback). ``edgelearn federate`` calls :func:`federate`.
"""

import json
import os
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import tomli_w

from edgelearn.errors import FederationError, ParameterError
from edgelearn.federation.tls import make_certificates, make_node_key

#: what a federation exchanges: knowledge packages (module B) or the network's last layers (FedAvg / TeAM);
#: each is a Flower app whose pyproject.toml (components, run config and its defaults) lies beside its modules
APPS = {"knowledge": "edgelearn.federation.knowledge", "training": "edgelearn.federation.training"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_toml(path: Path, values: dict) -> Path:
    """A run or node config as a TOML file, which ``flwr run --run-config`` and ``--node-config`` read."""
    path.write_text(tomli_w.dumps({k: str(v) if isinstance(v, os.PathLike) else v for k, v in values.items()
                                   if v is not None}))
    return path


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def federate(sites: dict[str, Path], workdir: Path, *, rounds: int = 1, config: dict | None = None,
             tls: bool = False, node_auth: bool = False, timeout: float = 600.0, app: str = "knowledge") -> list | dict:
    """Start a SuperLink and one SuperNode per site on loopback, run the rounds, return the history.

    ``sites`` maps a site name to its data folder (``train/`` and optionally ``test/``); each site
    keeps its knowledge under ``workdir/<site>``. ``config``: backbone, learner, weights, input-size,
    consolidate, trust-dir, server-key, allow-unsigned; per-site signing keys are read from
    ``config["keys"][site]``. Knowledge is exchanged signed and checked against trust-dir, unless
    allow-unsigned is set.
    ``tls``: a private CA and a SuperLink certificate for loopback; every connection is then TLS.
    ``node_auth`` (needs ``tls``): only SuperNodes whose public keys were registered may connect.
    ``app``: ``knowledge`` (exchange knowledge packages) or ``training`` (train the network's last
    layers with the ``strategy`` in ``config``: fedavg or team; see :mod:`edgelearn.federation.training`).
    """
    if app not in APPS:
        raise ValueError(f"app must be one of {', '.join(APPS)}, got {app!r}")
    if node_auth and not tls:
        raise ParameterError("node authentication needs TLS (tls=True / --tls)")
    if app == "knowledge" and not (config or {}).get("trust-dir") and not (config or {}).get("allow-unsigned"):
        raise ParameterError("knowledge is exchanged signed: give keys and a trust-dir (--keys, --trust), or "
                         "allow-unsigned (--allow-unsigned)")
    workdir = Path(workdir).resolve()
    app_dir, home = workdir / "app", workdir / "flwr-home"
    app_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(exist_ok=True)
    (app_dir / "pyproject.toml").write_bytes((resources.files(APPS[app]) / "pyproject.toml").read_bytes())
    for stale in workdir.glob("superlink.db*"):  # a run's SuperLink starts empty: no nodes of an earlier run
        stale.unlink()
    link = _free_port()  # Flower 1.41 serves its Fleet, Control and Runtime APIs on one HTTP port
    if tls:
        certs = make_certificates(workdir / "tls")
        link_security = ["--ssl-certfile", str(certs["cert"]), "--ssl-keyfile", str(certs["key"]),
                         "--ssl-ca-certfile", str(certs["ca"])]
        node_security = ["--root-certificates", str(certs["ca"])]
        connection = f'root-certificates = "{certs["ca"]}"'
    else:
        link_security, node_security, connection = ["--insecure"], ["--insecure"], "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\n{connection}\n')
    # the SuperLink and SuperNodes start Flower's helper commands by name: put this env's first
    env = {**os.environ, "FLWR_HOME": str(home),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    config = dict(config or {})
    keys = config.pop("keys", {})
    output = workdir / "history.json"
    output.unlink(missing_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    procs = []
    try:
        auth = ["--enable-supernode-auth"] if node_auth else []
        procs.append(_start([_bin("flower-superlink"), *link_security, *auth, "--port", str(link),
                             "--database", str(workdir / "superlink.db")], logs / "superlink.log", env))
        _wait_for_port(link, timeout=60)
        node_keys = {}
        for name in sites if node_auth else ():
            node_keys[name], public = make_node_key(workdir / "node-keys", name)
            registered = subprocess.run([_bin("flwr"), "supernode", "register", str(public), "local"], env=env,
                                        capture_output=True, text=True, timeout=60)
            if registered.returncode != 0:
                raise FederationError(f"could not register SuperNode {name}: {registered.stdout[-300:]}")
        for name, data in sites.items():
            node = {"site": name, "data": str(Path(data).resolve()), "workdir": str(workdir / name)}
            if name in keys:
                node["key"] = str(Path(keys[name]).resolve())
            if config.get("trust-dir"):
                node["trust"] = str(Path(config["trust-dir"]).resolve())
            node_config = _write_toml(workdir / f"node-{name}.toml", node)
            identity = ["--auth-supernode-private-key", str(node_keys[name])] if name in node_keys else []
            procs.append(_start([_bin("flower-supernode"), *node_security, *identity,
                                 "--superlink", f"127.0.0.1:{link}", "--port", str(_free_port()),
                                 "--node-config", str(node_config)],
                                logs / f"supernode-{name}.log", env))
        run_config = {"num-rounds": rounds, "min-sites": len(sites), "output": str(output),
                      "workdir": str(workdir), **config}
        overrides = _write_toml(workdir / "run-config.toml", run_config)
        started = subprocess.run([_bin("flwr"), "run", str(app_dir), "local", "--run-config", str(overrides)],
                                 env=env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            raise FederationError(f"flwr run failed: {(started.stderr or started.stdout).strip()[-500:]}")
        deadline = time.monotonic() + timeout
        while not output.is_file():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise FederationError(f"the federation did not finish; see the logs in {logs}")
            time.sleep(0.5)
        history = json.loads(output.read_text())
        if isinstance(history, dict) and "error" in history:
            raise FederationError(f"the server failed: {history['error']} (logs in {logs})")
        return history
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise FederationError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
