"""The station: serve it, and check or back up its store."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgelearn.cli import plant
from edgelearn.cli.options import (
    InputSize,
    Json,
    Learner,
    PrecisionOption,
    Runtime,
    Similarity,
    Weights,
    refuse_together,
)
from edgelearn.cli.output import emit, err, out
from edgelearn.errors import EdgelearnError, ParameterError
from edgelearn.knowledge import TrustStore

# serve's options for a fixed camera (shared with `watch`): refused without --camera
CAMERA_OPTIONS = ("every", "max_fps", "on_change", "station_name", "webhook", "mqtt", "mqtt_user",
                  "mqtt_password_file", "mqtt_ca", "mqtt_outbox", "opcua", "loop")


def serve(
    ctx: typer.Context,
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
    input_size: InputSize = None,
    precision: PrecisionOption = None,
    learner: Annotated[Learner, typer.Option(help="Module B's incremental learner (first start).")] = Learner.slda,
    runtime: Annotated[Runtime, typer.Option(help="onnx (ONNX Runtime: same features, about 2x faster) or torch.")]
    = Runtime.ONNX,
    keep_images: Annotated[bool, typer.Option(help="Keep thumbnails of taught images (representatives) and "
                                              "of feedback and queued frames.")] = False,
    representatives: Annotated[Similarity, typer.Option(help="How representatives are matched.")]
    = Similarity.feature,
    unknown_below: Annotated[float, typer.Option(help="Say 'unknown' below this calibrated confidence instead of "
                                                "when an image is unlike anything taught (0: the latter).")]
    = 0,
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
    camera: Annotated[str | None, typer.Option(help="A fixed camera the station decides on by itself, as `watch` "
                                               "does (USB index, rtsp:// or http:// URL, video file, folder): the "
                                               "page shows it, uncertain frames join the queue.")] = None,
    every: plant.Every = 1,
    max_fps: plant.MaxFps = None,
    on_change: plant.OnChange = None,
    station_name: plant.StationName = None,
    webhook: plant.Webhook = None,
    mqtt: plant.Mqtt = None,
    mqtt_user: plant.MqttUser = None,
    mqtt_password_file: plant.MqttPasswordFile = None,
    mqtt_ca: plant.MqttCa = None,
    mqtt_outbox: plant.MqttOutbox = None,
    opcua: plant.OpcUa = None,
    loop: plant.Loop = False,
):
    """Start the station: web page with camera, explanations and corrections, REST API (docs at /docs); with
    --camera it also decides on a fixed camera and sends each decision on (MQTT, OPC UA, a webhook)."""
    import uvicorn

    from edgelearn.files import private_folder
    from edgelearn.server import Station, StationConfig, create_app, default_data_dir, station_token
    from edgelearn.server import read_token as find_read_token
    from edgelearn.server.guard import is_loopback, load_users, served_names
    from edgelearn.server.limits import Limits
    from edgelearn.server.tls import fingerprint, self_signed

    if camera is None:
        refuse_together(ctx, "serve without --camera", *CAMERA_OPTIONS)
    data = private_folder(data or default_data_dir())
    if (tls_cert is None) != (tls_key is None):
        raise ParameterError("--tls-cert and --tls-key go together")
    if tls and tls_cert is None:
        tls_cert, tls_key = self_signed(data, [host])
    if trust is not None:
        TrustStore.load(trust)  # a missing trust folder fails now, not at the first import
    config = StationConfig(data, backbone, weights, input_size, learner.replace("-", "_"),  # weights: found in data
                           runtime.value, keep_images, representatives=representatives.value,
                           unknown_below=unknown_below, queue_below=queue_below, trust=trust,
                           allow_unsigned=allow_unsigned, precision=precision and precision.value)
    write_token, new = station_token(data, token)
    reads_token = find_read_token(data, read_token)
    writers = load_users(users) if users else None
    reads_need_token = reads_token is not None or not is_loopback(host)
    fixed = fixed_camera(camera, plant.station_name(station_name), writers, every=every, max_fps=max_fps,
                         on_change=on_change, loop=loop, webhook=webhook, mqtt=mqtt, mqtt_user=mqtt_user,
                         mqtt_password_file=mqtt_password_file, mqtt_ca=mqtt_ca, mqtt_outbox=mqtt_outbox,
                         opcua=opcua) if camera else None
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
                     allowed_hosts=served_names(host, allowed_host or []), camera=fixed)
    uvicorn.run(api, host=host, port=port, log_level="info", timeout_graceful_shutdown=10,
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


def fixed_camera(source: str, name: str, users: dict[str, str] | None, *, every: int, max_fps: float | None,
                 on_change: float | None, loop: bool, **outputs):
    """``serve --camera``: the source opened now (a wrong one fails before the station starts serving), the
    output options' sinks, and the watcher the app starts with the station. OPC UA logs in ``users``."""
    from edgelearn.plant.sources import open_source  # OpenCV: loaded for a camera only
    from edgelearn.server.camera import Camera

    camera = None
    sinks = plant.build_outputs(name, lambda: camera.trigger(), users=users, **outputs)
    try:
        camera = Camera(open_source(source, loop=loop), sinks, station=name, every=every, max_fps=max_fps,
                        on_change=on_change)
    except BaseException:
        plant.close_all(sinks)
        raise
    err.print(f"camera {camera.source}: decisions as station {name}")
    return camera


StoreData = Annotated[Path, typer.Argument(help="The station's folder (holds station.sqlite).")]


def _open_store(data: Path):
    from edgelearn.server.station import StationConfig
    from edgelearn.store import Store

    path = StationConfig(data).store_path
    if not path.is_file():
        raise EdgelearnError(f"no station store at {path}")
    return Store(path)


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


