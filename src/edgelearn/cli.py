"""`edgelearn` command line: serve, learn, predict, evaluate, calibrate, consolidate, info, demo, merge,
federate, keys, representatives, frames, compress, train, distill, inspect, analyse, detector, detect.

Every reporting command takes ``--json`` (one JSON object on stdout, progress on stderr).
Exit codes: 0 success, 1 a user error (one line on stderr), 2 a usage error (Typer's own).
"""

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgelearn.backbones import WEIGHTS_ENV
from edgelearn.data import FeatureCache, FolderDataset
from edgelearn.errors import EdgelearnError
from edgelearn.evaluation import CONSOLIDATION, evaluate_features, learn_stream
from edgelearn.knowledge import ImportPolicy, SiteKey, TrustStore
from edgelearn.recognizer import Recognizer

app = typer.Typer(help="Image recognition that keeps learning on the edge.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(help="Site keys for signing knowledge packages.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
detector_app = typer.Typer(help="Object detectors: train (new classes without forgetting), evaluate, export.",
                           no_args_is_help=True)
app.add_typer(detector_app, name="detector")
store_app = typer.Typer(help="A station's store: check (and repair), back up.", no_args_is_help=True)
app.add_typer(store_app, name="store")
out = Console()
err = Console(stderr=True, soft_wrap=True)

DEMO_DATA = Path("../shared/data/imagenette")
DEMO_WEIGHTS = Path("../shared/models/mobilenet_v2_imagenet.pt")

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Weights = Annotated[str | None, typer.Option(
    envvar=WEIGHTS_ENV, help="Backbone weights: a state-dict file, 'download' or 'random'.")]
Runtime = Annotated[str, typer.Option(help="Run the backbone on torch or onnx (ONNX Runtime: same features, "
                                           "faster on CPUs).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the feature cache.")]
Key = Annotated[Path | None, typer.Option(help="This site's private key (edgelearn keys new): sign the output.")]


def user_errors(command):
    """Print a user's mistake as one line on stderr and exit 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (EdgelearnError, ValueError, OSError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def emit(result: dict, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    elif table is not None:
        out.print(table)


def _model_and_test_split(model: Path, dataset: Path, weights, no_cache: bool, runtime: str = "torch"):
    """A saved model, the data set's test split (or all of it) and its features."""
    rec = Recognizer.load(model, weights=weights, runtime=runtime)
    train, test = FolderDataset.splits(dataset)
    ds = test or train
    return rec, ds, _embed(rec, ds, no_cache)


def _embed(rec: Recognizer, ds: FolderDataset, no_cache: bool):
    cache = None if no_cache else FeatureCache(rec.backbone.fingerprint_id)
    return rec.embed_files(ds.paths, cache=cache, progress=err.is_terminal)


def _learn(dataset: Path, learner: str, steps: int, per_class: int | None, seed: int, consolidation: str,
           backbone: str, weights: str | None, input_size: int | None, no_cache: bool,
           runtime: str = "torch") -> dict:
    if consolidation not in CONSOLIDATION:
        raise ValueError(f"--consolidation must be one of {', '.join(CONSOLIDATION)}, got {consolidation!r}")
    train, test = FolderDataset.splits(dataset)
    train = train.sample_per_class(per_class, seed)
    rec = Recognizer.create(backbone, learner=learner, weights=weights, input_size=input_size, runtime=runtime)
    err.print(f"learning {len(train)} images of {len(train.classes)} classes in {steps} step(s) "
              f"with {rec.learner.kind} on {rec.backbone!r}")
    X = _embed(rec, train, no_cache)
    test_data = (_embed(rec, test, no_cache), test.labels) if test is not None else None
    history = learn_stream(rec, X, train.labels, n_steps=steps, seed=seed, consolidation=consolidation,
                           test=test_data)
    result = {"history": history, "info": rec.info()}
    if test_data is not None:
        result["evaluation"] = evaluate_features(rec, *test_data)
    return {"recognizer": rec, **result}


def _steps_table(history: list[dict], evaluation: dict | None) -> Table:
    table = Table("step", "classes", "representations", "learner bytes", "accuracy (seen classes)")
    for h in history:
        acc = f"{h['accuracy_seen']:.1%}" if "accuracy_seen" in h else "-"
        table.add_row(str(h["step"]), str(h["classes"]), str(h["representations"]), f"{h['learner_bytes']:,}", acc)
    if evaluation:
        table.caption = f"final: top-1 {evaluation['accuracy']:.2%}, top-5 {evaluation['top5']:.2%}, " \
                        f"n={evaluation['n']}"
    return table


@app.command()
@user_errors
def learn(
    dataset: Annotated[Path, typer.Argument(help="Folder: <class>/<sub...>/*.jpg, or with train/ and test/.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the model.")] = Path("model.edge"),
    learner: Annotated[str, typer.Option(help="fuzzy-artmap, slda or ncm.")] = "slda",
    steps: Annotated[int, typer.Option(help="Class-incremental steps.")] = 1,
    per_class: Annotated[int | None, typer.Option(help="Train images per class (seeded draw).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of class order, shuffling and sub-sampling.")] = 0,
    consolidation: Annotated[str, typer.Option(help="none, after_each_step or final.")] = "none",
    backbone: Annotated[str, typer.Option(help="torchvision model name.")] = "mobilenet_v2",
    weights: Weights = None,
    input_size: Annotated[int | None, typer.Option(help="Square input size (224 standard, 96 paper).")] = None,
    runtime: Runtime = "torch",
    no_cache: NoCache = False,
    key: Key = None,
    as_json: Json = False,
):
    """Learn the classes of a folder data set as a class-incremental stream and save the model."""
    result = _learn(dataset, learner, steps, per_class, seed, consolidation, backbone, weights, input_size,
                    no_cache, runtime)
    result.pop("recognizer").save(output, key=_key(key))
    err.print(f"saved {output}")
    emit({**result, "model": str(output)}, as_json, _steps_table(result["history"], result.get("evaluation")))


@app.command()
@user_errors
def predict(
    model: Annotated[Path, typer.Argument(help="A saved model (.edge).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 5,
    level: Annotated[int | None, typer.Option(help="Roll labels up to this concept level.")] = None,
    weights: Weights = None,
    runtime: Runtime = "torch",
    as_json: Json = False,
):
    """Classify images: label, confidence and the next-best classes."""
    rec = Recognizer.load(model, weights=weights, runtime=runtime)
    predictions = rec.predict(images, top_k=top_k, level=level)
    rows = [{"image": str(p), **pred.to_dict()} for p, pred in zip(images, predictions, strict=True)]
    table = Table("image", "label", "confidence", "next best")
    for r in rows:
        nxt = ", ".join(f"{a['label']} {a['confidence']:.0%}" for a in r["alternatives"])
        table.add_row(r["image"], r["label"] or "unknown", f"{r['confidence']:.1%}", nxt)
    emit({"predictions": rows}, as_json, table)


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="A saved model (.edge).")],
    dataset: Annotated[Path, typer.Argument(help="Folder data set (its test/ split when there is one).")],
    level: Annotated[int | None, typer.Option(help="Evaluate at this concept level.")] = None,
    variants: Annotated[bool, typer.Option(
        "--variants", help="Instead: one table over every runtime and precision of the model's backbone "
                           "(its learner relearned on train/).")] = False,
    weights: Weights = None,
    runtime: Runtime = "torch",
    no_cache: NoCache = False,
    as_json: Json = False,
):
    """Top-1, top-5 and per-class accuracy on a labelled folder."""
    if variants:
        return _variants_table(model, dataset, weights, as_json)
    rec, ds, X = _model_and_test_split(model, dataset, weights, no_cache, runtime)
    result = evaluate_features(rec, X, ds.labels, level=level)
    table = Table("class", "n", "top-1", "top-5")
    for c, r in result["per_class"].items():
        table.add_row(c, str(r["n"]), f"{r['accuracy']:.1%}", f"{r['top5']:.1%}")
    table.caption = f"all: top-1 {result['accuracy']:.2%}, top-5 {result['top5']:.2%}, n={result['n']}"
    emit(result, as_json, table)


@app.command()
@user_errors
def consolidate(
    model: Annotated[Path, typer.Argument(help="A saved model (.edge).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Default: overwrite MODEL.")] = None,
    strategy: Annotated[str, typer.Option(help="Fuzzy ARTMAP: union or mean.")] = "union",
    max_per_class: Annotated[int, typer.Option(help="Representations kept per class.")] = 1,
    key: Key = None,
    as_json: Json = False,
):
    """Shrink a model's fast memory (Fuzzy ARTMAP: fold representations per class)."""
    rec = Recognizer.load(model, with_backbone=False)
    before = rec.learner.nbytes
    kwargs = {"strategy": strategy, "max_per_class": max_per_class} if rec.learner.kind == "fuzzy_artmap" else {}
    rec.consolidate(**kwargs).save(output or model, key=_key(key))
    result = {"bytes_before": before, "bytes_after": rec.learner.nbytes, "model": str(output or model)}
    if not as_json:
        out.print(f"{result['model']}: learner memory {before:,} -> {rec.learner.nbytes:,} bytes")
    emit(result, as_json)


@app.command()
@user_errors
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
        raise ValueError("give --trust DIR (public keys of trusted sites) or --allow-unsigned")
    policy = ImportPolicy(TrustStore.load(trust) if trust is not None else None, allow_unsigned)
    recs = [Recognizer.load(p, with_backbone=False, policy=policy) for p in packages]
    merged = recs[0].merge(*recs[1:])
    if consolidate:
        merged.consolidate()
    merged.save(output, key=_key(key))
    result = {"model": str(output), "packages": len(packages), **merged.info()}
    if not as_json:
        out.print(f"merged {len(packages)} packages into {output}: {result['n_classes']} classes, "
                  f"{result['learner_bytes']:,} bytes")
    emit(result, as_json)


@app.command()
@user_errors
def federate(
    site: Annotated[list[str], typer.Option(help="NAME=FOLDER of a site's data (train/, test/); repeat per site.")],
    rounds: Annotated[int, typer.Option(help="Exchange rounds.")] = 1,
    workdir: Annotated[Path, typer.Option(help="Where sites keep their knowledge, and the logs.")] = Path("federation"),
    learner: Annotated[str, typer.Option(help="fuzzy-artmap, slda or ncm.")] = "slda",
    backbone: Annotated[str, typer.Option(help="torchvision model name.")] = "mobilenet_v2",
    weights: Weights = None,
    input_size: Annotated[int | None, typer.Option(help="Square input size.")] = None,
    consolidate: Annotated[bool, typer.Option(help="Fuzzy ARTMAP: consolidate the merged knowledge.")] = False,
    keys: Annotated[Path | None, typer.Option(help="Folder with <site>.key per site and server.key: sign.")] = None,
    trust: Annotated[Path | None, typer.Option(help="Folder of trusted public keys: verify every package.")] = None,
    allow_unsigned: Annotated[bool, typer.Option(help="Exchange unsigned packages (without --keys/--trust).")]
    = False,
    tls: Annotated[bool, typer.Option(help="TLS on every connection (a private CA for loopback).")] = False,
    node_auth: Annotated[bool, typer.Option(help="Only registered SuperNodes may connect (needs --tls).")] = False,
    train: Annotated[str | None, typer.Option(help="Instead of exchanging knowledge, train the network's last "
                                                   "layers: fedavg or team.")] = None,
    local_epochs: Annotated[int, typer.Option(help="--train: epochs each site trains per round.")] = 1,
    lr: Annotated[float, typer.Option(help="--train: the sites' SGD learning rate.")] = 0.01,
    path_fraction: Annotated[float, typer.Option(help="--train team: share of each layer's filters per "
                                                      "class path.")] = 0.15,
    new_classes: Annotated[str, typer.Option(help="--train team: comma-separated classes whose paths start "
                                                  "random and learn 10x faster.")] = "",
    test: Annotated[Path | None, typer.Option(help="--train: a data set whose test/ split scores the global "
                                                   "model after every round.")] = None,
    as_json: Json = False,
):
    """Run a federation on this machine: a Flower SuperLink and one SuperNode process per site."""
    from edgelearn.federation.deploy import federate as run_federation

    sites = dict(_site_arg(s) for s in site)
    if train is not None:
        _federated_training(sites, workdir, train, rounds=rounds, weights=weights, input_size=input_size,
                            local_epochs=local_epochs, lr=lr, path_fraction=path_fraction, new_classes=new_classes,
                            test=test, tls=tls, node_auth=node_auth, as_json=as_json)
        return
    if (keys is None or trust is None) and not allow_unsigned:
        raise ValueError("sites exchange signed knowledge: give --keys DIR (<site>.key per site and server.key) and "
                         "--trust DIR (their .pub keys), or --allow-unsigned")
    if keys is not None and trust is None:
        raise ValueError("--keys signs the packages: give --trust DIR too, so that the signatures can be checked")
    config = {"learner": learner, "backbone": backbone, "weights": weights or "", "input-size": input_size or 0,
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


def _federated_training(sites, workdir, strategy, *, rounds, weights, input_size, local_epochs, lr, path_fraction,
                        new_classes, test, tls, node_auth, as_json) -> None:
    from edgelearn.federation.deep import STRATEGIES
    from edgelearn.federation.deploy import federate as run_federation

    if strategy not in STRATEGIES:
        raise ValueError(f"--train must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not 0 < path_fraction <= 1:
        raise ValueError(f"--path-fraction must be in (0, 1], got {path_fraction}")
    if test is not None and not (test / "test").is_dir():
        raise ValueError(f"--test needs a folder with a test/ split, got {test}")
    config = {"strategy": strategy, "weights": str(_default_weights(weights) or ""), "input-size": input_size or 0,
              "local-epochs": local_epochs, "lr": lr, "path-fraction": path_fraction, "new-classes": new_classes,
              "test-data": str(test.resolve()) if test else ""}
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
        raise ValueError(f"--site takes NAME=FOLDER with an existing folder, got {text!r}")
    return name, Path(folder)


@keys_app.command("new")
@user_errors
def keys_new(
    site: Annotated[str, typer.Argument(help="This site's name, e.g. plant-a.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write <site>.key and <site>.pub.")] = Path("keys"),
    as_json: Json = False,
):
    """Create this site's signing key pair; share <site>.pub with the sites that import from you."""
    site_key = SiteKey.generate(site)
    private, public = site_key.save(directory)
    result = {"site": site, "private_key": str(private), "public_key": str(public), "key_id": site_key.key_id}
    if not as_json:
        out.print(f"wrote {private} (keep it here) and {public} (give it to the other sites)")
    emit(result, as_json)


@app.command()
@user_errors
def serve(
    data: Annotated[Path | None, typer.Option(envvar="EDGELEARN_DATA", help="The station's folder: SQLite store, "
                                              "token, TLS certificate (default: ~/.local/share/edgelearn).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: the whole network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[str | None, typer.Option(envvar="EDGELEARN_TOKEN", help="Write token, at least 16 characters "
                                              "(default: made on first start, kept in DATA/token). Prefer the "
                                              "file or $EDGELEARN_TOKEN: a command line is visible to every "
                                              "user of the machine.")] = None,
    backbone: Annotated[str, typer.Option(help="torchvision model name (fixed at the store's first start).")]
    = "mobilenet_v2",
    weights: Weights = None,
    input_size: Annotated[int | None, typer.Option(help="Square input size (224 standard, 96 paper).")] = None,
    learner: Annotated[str, typer.Option(help="fuzzy-artmap, slda or ncm (first start).")] = "slda",
    runtime: Annotated[str, typer.Option(help="onnx (ONNX Runtime: same features, about 2x faster) or torch.")]
    = "onnx",
    keep_images: Annotated[bool, typer.Option(help="Keep thumbnails of taught images (representatives) and "
                                              "of feedback and queued frames.")] = False,
    representatives: Annotated[str, typer.Option(help="How representatives are matched: feature, phash, hist, "
                                                 "ssim, ...")] = "feature",
    unknown_below: Annotated[float, typer.Option(help="Say 'unknown' below this calibrated confidence (0: never).")]
    = 0.5,
    queue_below: Annotated[float, typer.Option(help="Queue predictions below this confidence for labelling.")]
    = 0.5,
    trust: Annotated[Path | None, typer.Option(help="Folder of trusted sites' public keys (<site>.pub): imports "
                                               "must be signed by one of them.")] = None,
    allow_unsigned: Annotated[bool, typer.Option(help="Also accept unsigned imports (without --trust, imports are "
                                                      "refused otherwise); signed ones are still checked.")] = False,
    max_upload_mb: Annotated[int, typer.Option(help="Largest request (zips, videos), MiB.")] = 200,
    max_image_mpix: Annotated[float, typer.Option(min=0.01, help="Largest image, million pixels (8-bit only).")]
    = 12,
    max_request_mpix: Annotated[float, typer.Option(min=0.01, help="Teaching: all images, zip members and video "
                                                    "frames of one request, million pixels.")] = 200,
    max_request_images: Annotated[int, typer.Option(min=1, help="Teaching: images per request.")] = 2000,
    decode_slots: Annotated[int, typer.Option(min=1, help="Images decoded at once (busy: 429, try again).")] = 3,
    tls: Annotated[bool, typer.Option("--tls", help="HTTPS with a self-signed certificate made in the data "
                                      "folder (its fingerprint is printed: compare it in the browser).")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="HTTPS with this certificate (PEM; with --tls-key).")]
    = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's private key (PEM).")] = None,
    read_token: Annotated[str | None, typer.Option(help="Read-only token, at least 16 characters (default: "
                                                   "$EDGELEARN_READ_TOKEN or DATA/read-token if there): with it, "
                                                   "reads need a token even on loopback.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(help="Another name browsers use to reach the station "
                                                           "(repeatable; localhost, this machine's name and IP "
                                                           "addresses are always served).")] = None,
    users: Annotated[Path | None, typer.Option(help="File of 'name token' lines (private, tokens of 16+ "
                                               "characters): each writer's own token; events record its name, "
                                               "not X-User.")] = None,
):
    """Start the station: web page with camera, explanations and corrections, REST API (docs at /docs)."""
    import uvicorn

    from edgelearn.explain.representatives import get_similarity
    from edgelearn.files import private_folder
    from edgelearn.server import Station, StationConfig, create_app, default_data_dir, station_token
    from edgelearn.server import read_token as find_read_token
    from edgelearn.server.guard import is_loopback, load_users, served_names
    from edgelearn.server.limits import Limits
    from edgelearn.server.tls import fingerprint, self_signed

    data = private_folder(data or default_data_dir())
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if tls and tls_cert is None:
        tls_cert, tls_key = self_signed(data, [host])
    if representatives != "feature":
        get_similarity(representatives)  # an unknown method fails now, not at the first prediction
    if trust is not None:
        TrustStore.load(trust)  # a missing trust folder fails now, not at the first import
    config = StationConfig(data, backbone, _default_weights(weights), input_size, learner.replace("-", "_"),
                           runtime, keep_images, representatives=representatives, unknown_below=unknown_below,
                           queue_below=queue_below, trust=trust, allow_unsigned=allow_unsigned)
    write_token, new = station_token(data, token)
    reads_token = find_read_token(data, read_token)
    writers = load_users(users) if users else None
    reads_need_token = reads_token is not None or not is_loopback(host)
    station = Station(config)
    err.print(f"station store: {config.store_path} ({len(station.rec.classes)} classes, "
              f"version {station.store.active_version})")
    if new:  # shown once: afterwards it is read from the file, never printed into logs again
        err.print(f"write token (new, kept in {data / 'token'}, readable by you only): {write_token}")
    elif not token:
        err.print(f"write token: in {data / 'token'}")
    err.print("reads (predictions, status, versions, ...) "
              + ("need the read or write token" if reads_need_token else "are open on this machine")
              + "; the feedback log, images and knowledge export always need a token")
    if writers:
        err.print(f"writers from {users}: {', '.join(writers)} (events record the name of the token used)")
    if "--token" in sys.argv or "--read-token" in sys.argv:
        err.print("note: a token given on the command line is visible to other users (ps); prefer DATA/token "
                  "or $EDGELEARN_TOKEN")
    scheme = "https" if tls_cert else "http"
    if tls_cert:
        err.print(f"TLS certificate {tls_cert}, SHA-256 fingerprint {fingerprint(tls_cert)}")
    err.print(f"open {scheme}://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/ in a browser")
    limits = Limits(int(max_image_mpix * 1e6), int(max_request_mpix * 1e6), max_request_images, decode_slots)
    api = create_app(station, write_token, max_upload_bytes=max_upload_mb * 2**20, limits=limits,
                     read_token=reads_token, users=writers, reads_need_token=reads_need_token,
                     allowed_hosts=served_names(host, allowed_host or []))
    uvicorn.run(api, host=host, port=port, log_level="info", timeout_graceful_shutdown=10,
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


@app.command()
@user_errors
def calibrate(
    model: Annotated[Path, typer.Argument(help="A saved model (.edge).")],
    dataset: Annotated[Path, typer.Argument(help="Labelled images NOT used for learning (its test/ split if any).")],
    weights: Weights = None,
    no_cache: NoCache = False,
    as_json: Json = False,
):
    """Fit the confidence temperature on held-out images, so that 80 % confidence means 80 % right."""
    rec, ds, X = _model_and_test_split(model, dataset, weights, no_cache)
    before = evaluate_features(rec, X, ds.labels)["ece"]
    temperature = rec.calibrate(X, ds.labels)
    after = evaluate_features(rec, X, ds.labels)["ece"]
    result = {"temperature": temperature, "ece_before": before, "ece_after": after, "n": len(ds), "model": str(model)}
    rec.save(model)
    if not as_json:
        out.print(f"{model}: temperature {temperature:.3g}; expected calibration error "
                  f"{before:.1%} -> {result['ece_after']:.1%} on {len(ds)} images")
    emit(result, as_json)


@app.command()
@user_errors
def representatives(
    dataset: Annotated[Path, typer.Argument(help="Folder data set: <class>/<sub...>/*.jpg.")],
    per_class: Annotated[int, typer.Option(help="Representatives per class.")] = 5,
    method: Annotated[str, typer.Option(help="phash, ahash, dhash, whash, colorhash, hist, hist_chisqr, "
                                       "hist_intersect, hist_bhattacharyya, ssim, mse or feature.")] = "phash",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Copy them into OUTPUT/<class>/.")] = None,
    max_candidates: Annotated[int, typer.Option(help="Compare at most this many images per class (seeded draw).")]
    = 200,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    weights: Weights = None,
    as_json: Json = False,
):
    """Pick a few diverse, typical images per class (the most typical first, then the most different)."""
    import shutil

    from edgelearn.data.images import load_image
    from edgelearn.explain import get_similarity, pick_diverse
    from edgelearn.explain.representatives import distance_matrix

    ds = FolderDataset.scan(dataset).sample_per_class(max_candidates, seed)
    embed = None
    if method == "feature":
        rec = Recognizer.create(learner="ncm", weights=_default_weights(weights))
        embed = lambda image: rec.embed([image])[0]  # noqa: E731
    similarity = get_similarity(method, embed)
    chosen: dict[str, list[str]] = {}
    for c in ds.classes:
        paths = [p for p, label in zip(ds.paths, ds.labels, strict=True) if label == c]
        signatures = [similarity.signature(load_image(p)) for p in paths]
        chosen[c] = [str(paths[i]) for i in pick_diverse(distance_matrix(signatures, similarity), per_class)]
        if output is not None:
            (output / c).mkdir(parents=True, exist_ok=True)
            for p in chosen[c]:
                shutil.copy2(p, output / c / Path(p).name)
    table = Table("class", "representatives")
    for c, paths in chosen.items():
        table.add_row(c, ", ".join(Path(p).name for p in paths))
    emit({"method": similarity.name, "per_class": per_class, "representatives": chosen}, as_json, table)


@app.command()
@user_errors
def frames(
    videos: Annotated[Path, typer.Argument(help="Folder of clips sorted by concept: <concept>/<clip>.mp4.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Image data set to write.")],
    every: Annotated[int, typer.Option(help="Keep every n-th frame.")] = 10,
    dedupe: Annotated[str, typer.Option(help="phash (drop near-duplicate frames) or none.")] = "phash",
    max_distance: Annotated[int, typer.Option(help="phash bits within which frames count as duplicates.")] = 4,
    as_json: Json = False,
):
    """Turn short videos into a labelled image data set (one folder per concept)."""
    from edgelearn.data.frames import extract_dataset

    if dedupe not in ("phash", "none"):
        raise ValueError(f"--dedupe must be phash or none, got {dedupe!r}")
    written = extract_dataset(videos, output, every=every, max_distance=max_distance if dedupe == "phash" else None)
    table = Table("concept", "frames")
    for c, n in written.items():
        table.add_row(c, str(n))
    emit({"output": str(output), "frames": written, "total": sum(written.values())}, as_json, table)


@app.command()
@user_errors
def compress(
    model: Annotated[Path, typer.Argument(help="A classifier from edgelearn train or distill (.pt + .json).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.onnx (ONNX Runtime), OUT.pt2 (torch.export) or "
                                                                "OUT.tflite (LiteRT); + .json sidecar.")]
    = Path("model.onnx"),
    precision: Annotated[str, typer.Option(help="fp32, fp16, int8-dynamic or int8 (static, calibrated).")] = "int8",
    calibration: Annotated[Path | None, typer.Option(help="Folder data set: its train/ split calibrates int8, "
                                                          "its test/ split checks the export.")] = None,
    calibration_per_class: Annotated[int, typer.Option(help="Calibration images per class.")] = 10,
    as_json: Json = False,
):
    """Export a classifier, head included, to ONNX at a precision (or torch.export) and check it against PyTorch
    (top-1 agreement, largest logit difference, size, ms per image); `inspect OUTPUT` runs it."""
    from edgelearn.compress.classifier import compress_classifier

    result = compress_classifier(model, output, precision=precision, calibration=calibration,
                                 calibration_per_class=calibration_per_class)
    table = Table("precision", "top-1 agreement", "max |Δ logit|", "MiB", "ms/image", "PyTorch ms/image")
    table.add_row(precision, f"{result['top1_agreement']:.2%}", f"{result['max_abs_logit_difference']:.3g}",
                  f"{result['bytes'] / 2**20:.3f}", f"{result['ms_per_image']:.2f}",
                  f"{result['torch_ms_per_image']:.2f}")
    table.caption = f"wrote {output}; checked on {result['checked_images']} images' patches"
    emit(result, as_json, table)


def _variants_table(model: Path, dataset: Path, weights, as_json: bool) -> None:
    """Module A at every runtime and precision: top-1/top-5 of the model's learner kind on each
    variant's features, size, p50 latency at batch 1, throughput at batch 32 (paper 001, figs. 4-8)."""
    from edgelearn.backbones.weights import resolve_weights
    from edgelearn.compress.variants import VARIANTS, compare_variants

    rec = Recognizer.load(model, with_backbone=False)
    fp = rec.info()["backbone"]
    weights = _default_weights(weights)
    if resolve_weights(fp["name"], weights).ident != fp["weights"]:
        raise ValueError(f"{model} was learned on other backbone weights ({fp['weights'][:16]}…); "
                         f"give them with --weights")
    rows = compare_variants(dataset, weights=weights, input_size=fp.get("input_size"),
                            backbone=fp["name"], learner=rec.info()["learner"], variants=VARIANTS,
                            progress=lambda line: err.print(line, highlight=False))
    table = Table("runtime", "precision", "top-1", "top-5", "MiB", "p50 ms (batch 1)", "img/s (batch 32)")
    for r in rows:
        table.add_row(r["runtime"], r["precision"], f"{r['accuracy']:.2%}", f"{r['top5']:.2%}",
                      f"{r['bytes'] / 2**20:.2f}", f"{r['p50_ms']:.1f}", f"{r['batch32_per_s']:.0f}")
    emit({"variants": [{k: v for k, v in r.items() if k != "path"} for r in rows]}, as_json, table)


@app.command()
@user_errors
def train(
    dataset: Annotated[Path, typer.Argument(help="Folder data set: <class>/*.jpg (its train/ split if any).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The trained weights (+ .json, .ckpt, .png).")]
    = Path("trained.pt"),
    strategy: Annotated[str, typer.Option(help="frozen (new head only), partial (last blocks too) or full.")]
    = "frozen",
    mode: Annotated[str, typer.Option(help="single (this process), ddp (synchronous data parallel) or ps "
                                           "(asynchronous parameter server).")] = "single",
    workers: Annotated[int, typer.Option(help="ddp/ps: worker processes.")] = 2,
    threads: Annotated[int | None, typer.Option(help="Threads per process (default: cores / workers).")] = None,
    address: Annotated[str | None, typer.Option(help="ps across machines: HOST:PORT the server listens on "
                                                     "(no local workers) and the workers join.")] = None,
    rank: Annotated[int | None, typer.Option(help="ps across machines: run as this worker (1..workers) of the "
                                                  "server at --address.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = 5,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default by strategy).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step (per worker).")] = 32,
    blocks: Annotated[int, typer.Option(help="partial: how many of the last blocks learn.")] = 3,
    backbone: Annotated[str, typer.Option(help="torchvision model name.")] = "mobilenet_v2",
    weights: Weights = None,
    input_size: Annotated[int | None, typer.Option(help="Square input size.")] = None,
    patch: Annotated[int | None, typer.Option(help="Train on patches of this size (inspection protocol).")] = None,
    grid: Annotated[int, typer.Option(help="With --patch: grid x grid patches cover a test image.")] = 3,
    start_from: Annotated[Path | None, typer.Option("--from", help="Continue from an earlier result (an online "
                                                                   "session on new data).")] = None,
    max_norm: Annotated[float | None, typer.Option(help="Weight constraint: each unit's weights at most this "
                                                        "norm (paper 002's sessions: 3).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout before the head (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT.ckpt after an interruption.")] = False,
    as_json: Json = False,
):
    """Train a classifier (transfer learning) in one process or across several; the best epoch by
    validation loss is kept and loads as a backbone afterwards (--weights OUTPUT) or, with --patch, as
    an inspection teacher."""
    from edgelearn.data.patches import PatchGrid
    from edgelearn.training import train as run_train

    result = run_train(dataset, output, mode=mode, workers=workers, threads=threads, address=address, rank=rank,
                       backbone=backbone,
                       weights=_default_weights(weights), strategy=strategy, epochs=epochs, lr=lr,
                       batch_size=batch_size, input_size=input_size, trainable_blocks=blocks,
                       patch=patch and PatchGrid(patch, grid), start_from=start_from, max_norm=max_norm,
                       dropout=dropout, seed=seed, resume=resume, progress=err.is_terminal,
                       log=lambda line: err.print(line, highlight=False))
    if rank is not None:
        emit(result, as_json, f"worker {rank} done: the server at {address} holds the model")
        return
    emit(result, as_json, _history_table(result, output))


def _history_table(result: dict, output: Path) -> Table:
    table = Table("epoch", "train loss", "val loss", "val accuracy", "seconds")
    for h in result["history"]:
        table.add_row(str(h["epoch"]), f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{h['val_accuracy']:.1%}",
                      f"{h['seconds']:.1f}")
    table.caption = f"best epoch {result['best_epoch']} saved to {output}; curves in {output.with_suffix('.png')}"
    return table


@app.command()
@user_errors
def distill(
    dataset: Annotated[Path, typer.Argument(help="Folder data set: <class>/*.png (its train/ split if any).")],
    teacher: Annotated[Path | None, typer.Option(help="The teacher (edgelearn train --patch); "
                                                       "without one the student learns from the labels.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The student (+ .json, .ckpt, .png).")]
    = Path("student.pt"),
    filters: Annotated[str, typer.Option(help="Filters of the five conv layers (paper 003 Table 1).")]
    = "4,8,16,4,4",
    hidden: Annotated[int, typer.Option(help="Units of the hidden fully connected layer.")] = 256,
    alpha: Annotated[float, typer.Option(help="Weight of the hard labels next to the teacher's logits.")] = 0.0,
    patches_per_image: Annotated[int, typer.Option(help="Random flipped/rotated patches per training image.")] = 8,
    epochs: Annotated[int, typer.Option(help="Passes over the transfer set.")] = 30,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Patches per step.")] = 64,
    patch: Annotated[int, typer.Option(help="Without a teacher: patch size.")] = 128,
    grid: Annotated[int, typer.Option(help="Without a teacher: grid x grid test patches.")] = 3,
    input_size: Annotated[int | None, typer.Option(help="The student's input (default: the teacher's, or the "
                                                        "patch size); smaller = patches scaled down.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, patches and initial weights.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT.ckpt after an interruption.")] = False,
    as_json: Json = False,
):
    """Train the shallow student of paper 003: regress a teacher's logits (or learn the labels alone)."""
    from edgelearn.data.patches import PatchGrid
    from edgelearn.inspection import distill as run_distill

    try:
        sizes = tuple(int(v) for v in filters.split(","))
    except ValueError:
        raise ValueError(f"--filters takes comma-separated whole numbers such as 4,8,16,4,4, got {filters!r}") from None
    result = run_distill(dataset, output, teacher=teacher, patch=None if teacher else PatchGrid(patch, grid),
                         input_size=input_size, filters=sizes, hidden=hidden, alpha=alpha,
                         patches_per_image=patches_per_image, epochs=epochs,
                         lr=lr, batch_size=batch_size, seed=seed, resume=resume, progress=err.is_terminal,
                         log=lambda line: err.print(line, highlight=False))
    table = _history_table(result, output)
    table.caption += f"; {result['parameters']:,} parameters"
    emit(result, as_json, table)


@app.command()
@user_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="A patch classifier (edgelearn train --patch / distill).")],
    target: Annotated[Path, typer.Argument(help="An image, a folder of images, or a data set (its test/ split "
                                                "is evaluated).")],
    as_json: Json = False,
):
    """Inspect by patches: the class is the patches' majority, an image is defective if any patch is.
    On a data set: accuracy, per-class TPR/TNR, parameters and ms per image."""
    from edgelearn.data.images import IMAGE_SUFFIXES, load_image
    from edgelearn.inspection import Inspector, evaluate_inspection

    if not target.exists():
        raise ValueError(f"not found: {target}")
    inspector = Inspector.load(model)
    images = [target] if target.is_file() else sorted(p for p in target.iterdir()
                                                      if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if images:
        results = [{"image": str(p), **vars(r)} for p in images for r in inspector.inspect([load_image(p)])]
        table = Table("image", "class", "defective", "patch votes")
        for r in results:
            table.add_row(r["image"], r["label"], "yes" if r["defective"] else "no", json.dumps(r["votes"]))
        emit({"inspections": results}, as_json, table)
        return
    train, test = FolderDataset.splits(target)
    report = evaluate_inspection(inspector, test or train)
    report["ms_per_image"] = inspector.ms_per_image()
    table = Table("class", "images", "TPR", "TNR")
    for c, row in report["per_class"].items():
        table.add_row(c, str(row["n"]), *(f"{row[k]:.2%}" if row[k] is not None else "-" for k in ("tpr", "tnr")))
    table.caption = (f"accuracy {report['accuracy']:.2%} on {report['images']} images; "
                     f"{report['parameters']:,} parameters; {report['ms_per_image']:.2f} ms per image "
                     f"({report['patches_per_image']} patches)")
    if "defect_detection" in report:
        d = report["defect_detection"]
        table.caption += f"; defects found {d['tpr']:.2%}, defect-free passed {d['tnr']:.2%}"
    emit(report, as_json, table)


@app.command()
@user_errors
def analyse(
    model: Annotated[Path, typer.Argument(help="A patch classifier (edgelearn train --patch / distill).")],
    dataset: Annotated[Path, typer.Argument(help="Images for sparsity and disentanglement (test/ split if any).")],
    weights: Weights = None,
    images: Annotated[int, typer.Option(help="At most this many images (one centre patch each).")] = 400,
    plot: Annotated[Path | None, typer.Option(help="Write gamma and sparsity per layer to this PNG.")] = None,
    as_json: Json = False,
):
    """What the network learned (paper 003): weight change per conv layer since its initial weights,
    dead-channel sparsity per layer, and the disentanglement d of its last conv representation."""
    from edgelearn.inspection.analysis import analyse_model, plot_analysis

    train, test = FolderDataset.splits(dataset)
    result = analyse_model(model, (test or train).sample_per_class(max(1, images // len(train.classes))),
                           initial_weights=_default_weights(weights))
    if plot is not None:
        plot_analysis({model.stem: result}, plot)
    table = Table("layer", "γ (weight change)", "s (sparsity)")
    for name in result["sparsity"]:
        gamma = result["weight_change"].get(result["conv_of"].get(name, ""), None)
        table.add_row(name, "-" if gamma is None else f"{gamma:.3f}", f"{result['sparsity'][name]:.2%}")
    d = result["disentanglement"]
    table.caption = f"disentanglement d = {d['d']:.3f} over {d['points']} images"
    emit(result, as_json, table)


@detector_app.command("train")
@user_errors
def detector_train(
    dataset: Annotated[Path, typer.Argument(help="Pascal VOC folder: images/ + annotations/ (or JPEGImages/ + "
                                                 "Annotations/).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The detector (.safetensors; + .ckpt, .png).")]
    = Path("detector.safetensors"),
    arch: Annotated[str, typer.Option(help="ssdlite (MobileNet SSDlite) or retinanet (focal loss).")] = "ssdlite",
    start_from: Annotated[Path | None, typer.Option("--from", help="Continue from this detector: an online "
                                                                   "session, or new classes added to it.")] = None,
    distill: Annotated[bool, typer.Option(help="With --from and new classes: keep the old classes' scores and "
                                               "boxes (knowledge distillation).")] = False,
    exemplars: Annotated[Path | None, typer.Option(help="With --from: the old VOC folder; --per-class random "
                                                        "images of each old class join the training.")] = None,
    per_class: Annotated[int, typer.Option(help="Exemplar images per old class.")] = 20,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = 30,
    views: Annotated[int, typer.Option(help="Cached views per image: 1 the image, 2 + its mirror, more + SSD "
                                            "augmentations.")] = 2,
    size: Annotated[int, typer.Option(help="Square input size.")] = 320,
    lr: Annotated[float | None, typer.Option(help="Learning rate (AdamW; default 1e-3, with --from 3e-4).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 16,
    weights: Weights = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT.ckpt after an interruption.")] = False,
    as_json: Json = False,
):
    """Train a detector's neck and head on a frozen ImageNet MobileNetV2; the best epoch by validation
    loss is kept. With --from, classes the detector does not know are added to it."""
    from edgelearn.detection.train import train_detector

    result = train_detector(dataset, output, arch=arch, size=size, weights=_default_weights(weights),
                            start_from=start_from, distill=distill, exemplars=exemplars, per_class=per_class,
                            epochs=epochs, batch_size=batch_size, lr=lr, views=views, seed=seed, resume=resume,
                            progress=err.is_terminal, log=lambda line: err.print(line, highlight=False))
    table = Table("epoch", "train loss", "val loss", "seconds")
    for h in result["history"]:
        table.add_row(str(h["epoch"]), f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{h['seconds']:.1f}")
    table.caption = (f"{', '.join(result['classes'])}; best epoch {result['best_epoch']} saved to {output}"
                     + (f"; new classes {', '.join(result['new_classes'])}" if result["new_classes"] else ""))
    emit(result, as_json, table)


@detector_app.command("evaluate")
@user_errors
def detector_evaluate(
    model: Annotated[Path, typer.Argument(help="A detector (.safetensors).")],
    dataset: Annotated[Path, typer.Argument(help="Pascal VOC folder to evaluate on.")],
    as_json: Json = False,
):
    """mAP@0.5, COCO's mAP@[.5:.95] and each class's AP@0.5."""
    from edgelearn.detection import load_detector
    from edgelearn.detection.evaluate import evaluate as evaluate_detector

    result = evaluate_detector(load_detector(model), dataset, progress=err.is_terminal)
    table = Table("class", "AP@0.5")
    for name, ap in result["ap_50"].items():
        table.add_row(name, f"{ap:.1%}")
    table.caption = f"{result['images']} images: mAP@0.5 {result['map_50']:.1%}, mAP@[.5:.95] {result['map']:.1%}"
    emit(result, as_json, table)


@detector_app.command("export")
@user_errors
def detector_export(
    model: Annotated[Path, typer.Argument(help="A detector (.safetensors).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.onnx")] = Path("detector.onnx"),
    as_json: Json = False,
):
    """Export a detector to ONNX and check it against PyTorch (raw outputs, boxes, ms per image)."""
    from edgelearn.detection.infer import export_detector

    result = export_detector(model, output)
    table = Table("max |Δ|", "same detections", "MiB", "ms/image", "PyTorch ms/image")
    table.add_row(f"{result['max_abs_difference']:.3g}", f"{result['same_detections']:.0%}",
                  f"{result['bytes'] / 2**20:.2f}", f"{result['ms_per_image']:.1f}",
                  f"{result['torch_ms_per_image']:.1f}")
    table.caption = f"wrote {output}; checked on {result['checked_images']} images; `edgelearn detect {output}` runs it"
    emit(result, as_json, table)


@app.command()
@user_errors
def detect(
    model: Annotated[Path, typer.Argument(help="A detector: .safetensors (PyTorch) or .onnx (ONNX Runtime).")],
    inputs: Annotated[list[Path], typer.Argument(help="Pictures, folders of pictures or videos.")],
    threshold: Annotated[float, typer.Option(help="Lowest score shown.")] = 0.5,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Folder for the pictures (and videos) "
                                                                       "with boxes drawn.")] = None,
    every: Annotated[int, typer.Option(help="Videos: every n-th frame.")] = 1,
    as_json: Json = False,
):
    """Find objects: print each box (class, score, pixels) and, with -o, draw them."""
    from edgelearn.detection.infer import DetectorRunner, detect_paths

    if not 0 <= threshold <= 1:
        raise ValueError(f"--threshold must be within 0 and 1, got {threshold}")
    results = detect_paths(DetectorRunner(model), inputs, threshold=threshold, output=output, every=every)
    table = Table("source", "class", "score", "box (x1, y1, x2, y2)")
    for r in results:
        source = r["source"] + (f" #{r['frame']}" if "frame" in r else "")
        for o in r["objects"] or [{"class": "-", "score": None, "box": []}]:
            table.add_row(source, o["class"], "" if o["score"] is None else f"{o['score']:.2f}",
                          ", ".join(f"{v:g}" for v in o["box"]))
    emit({"detections": results}, as_json, table)


StoreData = Annotated[Path, typer.Argument(help="The station's folder (holds station.sqlite).")]


def _open_store(data: Path):
    from edgelearn.server.station import StationConfig
    from edgelearn.store import Store

    path = StationConfig(data).store_path
    if not path.is_file():
        raise EdgelearnError(f"no station store at {path}")
    return Store(path)


@store_app.command("check")
@user_errors
def store_check(
    data: StoreData,
    repair: Annotated[bool, typer.Option("--repair", help="Drop events whose features were altered or damaged.")]
    = False,
    as_json: Json = False,
):
    """Check a station's store: SQLite integrity, every event's feature hash, every version's package."""
    store = _open_store(data)
    try:
        problems = store.check(repair=repair)
    finally:
        store.close()
    left = [p for p in problems if not p.startswith("dropped ")]
    emit({"store": str(store.path), "problems": problems, "ok": not left}, as_json)
    if not as_json:
        for problem in problems:
            out.print(problem, highlight=False, soft_wrap=True)
        out.print(f"{store.path}: {'ok' if not left else f'{len(left)} problem(s)'}", highlight=False)
    if left:
        raise typer.Exit(1)


@store_app.command("backup")
@user_errors
def store_backup(data: StoreData, output: Annotated[Path, typer.Argument(help="The copy (mode 0600).")],
                 as_json: Json = False):
    """Copy a station's store while the station runs (SQLite online backup): a consistent, private file."""
    store = _open_store(data)
    try:
        store.backup(output)
    finally:
        store.close()
    emit({"store": str(store.path), "backup": str(output)}, as_json)
    if not as_json:
        out.print(f"backed up {store.path} to {output}", highlight=False)


def _default_weights(weights: str | None) -> str | None:
    """The shared ImageNet MobileNetV2 file when nothing else is given and it is there (this checkout)."""
    return str(DEMO_WEIGHTS) if weights is None and DEMO_WEIGHTS.is_file() else weights


def _key(path: Path | None) -> SiteKey | None:
    return SiteKey.load(path) if path is not None else None


@app.command()
@user_errors
def info(
    model: Annotated[Path, typer.Argument(help="A saved model (.edge).")],
    as_json: Json = False,
):
    """What a model knows: learner, classes, memory, backbone fingerprint."""
    result = Recognizer.load(model, with_backbone=False).info()
    table = Table("field", "value")
    for key in ("learner", "n_classes", "representations", "learner_bytes", "examples_seen"):
        table.add_row(key, str(result[key]))
    table.add_row("backbone", json.dumps(result["backbone"]))
    table.add_row("classes", ", ".join(result["classes"]))
    emit(result, as_json, table)


@app.command()
@user_errors
def demo(
    dataset: Annotated[Path, typer.Argument(help="Folder data set with train/ and test/.")] = DEMO_DATA,
    learner: Annotated[str, typer.Option(help="fuzzy-artmap, slda or ncm.")] = "slda",
    steps: Annotated[int, typer.Option(help="Class-incremental steps.")] = 10,
    weights: Weights = None,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("demo.edge"),
    as_json: Json = False,
):
    """The main job on an embedded default: learn imagenette class by class, evaluate, save."""
    weights = _default_weights(weights)
    if not dataset.is_dir():
        raise ValueError(f"demo data set not found at {dataset}; give a folder data set as argument")
    result = _learn(dataset, learner, steps, 100, 0, "none", "mobilenet_v2", weights, None, False)
    result.pop("recognizer").save(output)
    err.print(f"saved {output}")
    emit({**result, "model": str(output)}, as_json, _steps_table(result["history"], result.get("evaluation")))

