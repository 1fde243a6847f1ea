"""Sharing what sites learned: keys, merge, and federations (knowledge exchange, or training together)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgelearn.cli.options import (
    Backbone,
    FederatedStrategy,
    InputSize,
    Json,
    Key,
    Learner,
    LearnerOption,
    Weights,
    default_weights,
    site_key,
)
from edgelearn.cli.output import emit, out
from edgelearn.errors import ParameterError
from edgelearn.files import atomic_write_bytes, read_model_file
from edgelearn.knowledge import ImportPolicy, SiteKey, TrustStore, merge_packages
from edgelearn.recognizer import Recognizer

Sites = Annotated[list[str], typer.Option("--site", help="NAME=FOLDER of a site's data (train/, test/); repeat "
                                                         "per site.")]
Rounds = Annotated[int, typer.Option(min=1, help="Rounds of the federation.")]
Workdir = Annotated[Path, typer.Option(help="Where sites keep their state, and the logs.")]
Tls = Annotated[bool, typer.Option(help="TLS on every connection (a private CA for loopback).")]
NodeAuth = Annotated[bool, typer.Option(help="Only registered SuperNodes may connect (needs --tls).")]


def keys_new(
    site: Annotated[str, typer.Argument(help="This site's name, e.g. plant-a.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write <site>.key and <site>.pub.")] = Path("keys"),
    as_json: Json = False,
):
    """Create this site's signing key pair; share <site>.pub with the sites that import from you."""
    key = SiteKey.generate(site)
    private, public = key.save(directory)
    result = {"site": site, "private_key": str(private), "public_key": str(public), "key_id": key.key_id}
    if not as_json:
        out.print(f"wrote {private} (keep it here) and {public} (give it to the other sites)")
    emit(result, as_json)


def merge(
    packages: Annotated[list[Path], typer.Argument(help="Knowledge packages (.edge) of several sites.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the merged knowledge.")],
    trust: Annotated[Path | None, typer.Option(help="Folder of trusted sites' public keys (<site>.pub).")] = None,
    allow_unsigned: Annotated[bool, typer.Option(help="Also accept unsigned packages (signed ones are still "
                                                      "checked, against --trust).")] = False,
    consolidate: Annotated[bool, typer.Option(help="Fuzzy ARTMAP: one representation per class after.")] = False,
    key: Key = None,
    as_json: Json = False,
):
    """Merge what several sites learned into one package; the result does not depend on the order."""
    if trust is None and not allow_unsigned:
        raise ParameterError("give --trust DIR (public keys of trusted sites) or --allow-unsigned")
    policy = ImportPolicy(TrustStore.load(trust) if trust is not None else None, allow_unsigned)
    data = merge_packages(*(read_model_file(p) for p in packages), policy=policy, consolidate=consolidate,
                          key=site_key(key), names=[str(p) for p in packages])
    merged = Recognizer.from_bytes(data, str(output), with_backbone=False)  # info() for the report
    atomic_write_bytes(output, data)
    result = {"model": str(output), "packages": len(packages), **merged.info()}
    if not as_json:
        out.print(f"merged {len(packages)} packages into {output}: {result['n_classes']} classes, "
                  f"{result['learner_bytes']:,} bytes")
    emit(result, as_json)


def federate(
    site: Sites,
    rounds: Rounds = 1,
    workdir: Workdir = Path("federation"),
    learner: LearnerOption = Learner.slda,
    backbone: Backbone = "mobilenet_v2",
    weights: Weights = None,
    input_size: InputSize = None,
    consolidate: Annotated[bool, typer.Option(help="Fuzzy ARTMAP: consolidate the merged knowledge.")] = False,
    keys: Annotated[Path | None, typer.Option(help="Folder with <site>.key per site and server.key: sign.")] = None,
    trust: Annotated[Path | None, typer.Option(help="Folder of trusted public keys: verify every package.")] = None,
    allow_unsigned: Annotated[bool, typer.Option(help="Exchange unsigned packages (without --keys/--trust).")]
    = False,
    tls: Tls = False,
    node_auth: NodeAuth = False,
    as_json: Json = False,
):
    """Exchange knowledge in a federation on this machine: a Flower SuperLink and one SuperNode process per
    site; each round the sites learn, the server merges, the sites take the merged knowledge."""
    from edgelearn.federation.deploy import federate as run_federation

    sites = dict(_site_arg(s) for s in site)
    if (keys is None or trust is None) and not allow_unsigned:
        raise ParameterError("sites exchange signed knowledge: give --keys DIR (<site>.key per site and server.key) "
                             "and --trust DIR (their .pub keys), or --allow-unsigned")
    if keys is not None and trust is None:
        raise ParameterError("--keys signs the packages: give --trust DIR too, so that the signatures can be checked")
    config = {"learner": learner.value, "backbone": backbone, "weights": weights or "", "input-size": input_size or 0,
              "consolidate": consolidate, "allow-unsigned": allow_unsigned}
    if keys is not None:
        config["keys"] = {name: keys / f"{name}.key" for name in sites}
        config["server-key"] = str((keys / "server.key").resolve())
    if trust is not None:
        config["trust-dir"] = str(trust.resolve())
    history = run_federation(sites, workdir, rounds=rounds, config=config, tls=tls, node_auth=node_auth)
    table = Table("round", "sites", "bytes sent per site", "merged bytes", "site accuracy")
    for h in history:
        accs = ", ".join(f"{m['accuracy']:.1%}" for m in h["site_metrics"] if "accuracy" in m)
        table.add_row(str(h["round"]), str(h["sites"]), f"{max(h['bytes_sent_per_site']):,}",
                      f"{h['bytes_merged']:,}", accs)
    emit({"rounds": history, "workdir": str(workdir)}, as_json, table)


def federate_train(
    site: Sites,
    strategy: Annotated[FederatedStrategy, typer.Option(help="fedavg (average the layers) or team (TeAM, Qin et al.: "
                                                             "per-class critical paths).")],
    rounds: Rounds = 1,
    workdir: Workdir = Path("federation"),
    weights: Weights = None,
    input_size: InputSize = None,
    local_epochs: Annotated[int, typer.Option(min=1, help="Epochs each site trains per round.")] = 1,
    lr: Annotated[float, typer.Option(help="The sites' SGD learning rate.")] = 0.01,
    path_fraction: Annotated[float, typer.Option(help="team: share of each layer's filters per class path, "
                                                      "in (0, 1].")] = 0.15,
    new_classes: Annotated[str, typer.Option(help="team: comma-separated classes whose paths start random and "
                                                  "learn 10x faster.")] = "",
    test: Annotated[Path | None, typer.Option(help="A data set whose test/ split scores the global model after "
                                                   "every round.")] = None,
    tls: Tls = False,
    node_auth: NodeAuth = False,
    as_json: Json = False,
):
    """Train a MobileNetV2's last layers together in a federation on this machine (a Flower SuperLink and
    one SuperNode process per site); the sites' images never leave them."""
    from edgelearn.federation.deploy import federate as run_federation

    sites = dict(_site_arg(s) for s in site)
    if not 0 < path_fraction <= 1:
        raise ParameterError(f"--path-fraction must be in (0, 1], got {path_fraction}")
    if test is not None and not (test / "test").is_dir():
        raise ParameterError(f"--test needs a folder with a test/ split, got {test}")
    config = {"strategy": strategy.value, "weights": str(default_weights(weights) or ""),
              "input-size": input_size or 0, "local-epochs": local_epochs, "lr": lr, "path-fraction": path_fraction,
              "new-classes": new_classes, "test-data": str(test.resolve()) if test else ""}
    history = run_federation(sites, workdir, rounds=rounds, config=config, tls=tls, node_auth=node_auth,
                             app="training")
    table = Table("round", "test accuracy", "MiB to sites", "MiB from sites", "train loss")
    for r in history["rounds"]:
        table.add_row(str(r["round"]), f"{r['accuracy']:.1%}" if "accuracy" in r else "-",
                      f"{r.get('bytes_down', 0) / 2**20:.2f}", f"{r.get('bytes_up', 0) / 2**20:.2f}",
                      f"{r['train-loss']:.3f}" if "train-loss" in r else "-")
    table.caption = f"{strategy}: the global model is {workdir / 'model.pt'}"
    emit(history, as_json, table)


def _site_arg(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not Path(folder).is_dir():
        raise ParameterError(f"--site takes NAME=FOLDER with an existing folder, got {text!r}")
    return name, Path(folder)
