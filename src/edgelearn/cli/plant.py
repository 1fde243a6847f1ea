"""The headless station: `edgelearn watch` a fixed camera and send each decision to the line."""

import importlib
import json
import re
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from edgelearn.cli.options import Weights
from edgelearn.cli.output import log
from edgelearn.errors import EdgelearnError, ParameterError
from edgelearn.plant import Decision
from edgelearn.recognizer import Recognizer

STATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # one MQTT topic level, an OPC UA name
PLANT_INSTALL = "needs the plant install: pip install 'edgelearn[plant]'"


Source = Annotated[str, typer.Argument(help="A USB camera index (0), an rtsp:// or http:// (MJPEG) URL, a video "
                                             "file, or a folder: image files written into it after the start.")]
Every = Annotated[int, typer.Option(min=1, help="Decide on every N-th frame.")]
MaxFps = Annotated[float | None, typer.Option(min=0.01, help="At most this many decisions per second.")]
OnChange = Annotated[float | None, typer.Option(min=0, max=254, help="Decide only when the picture changed by more "
                                                "than this many grey levels on average (0-255; a part arrived).")]
StationName = Annotated[str | None, typer.Option("--station", help="This station's name in every decision and MQTT "
                                                 "topic (default: the host name).")]
Webhook = Annotated[str | None, typer.Option(help="POST each decision as JSON to this URL.")]
Mqtt = Annotated[str | None, typer.Option(help="Publish to this broker (mqtt://host:1883, mqtts://...) on "
                                          "edgelearn/STATION/result; a message on .../trigger decides now.")]
MqttUser = Annotated[str | None, typer.Option(help="MQTT user name.")]
MqttPasswordFile = Annotated[Path | None, typer.Option(help="File holding the MQTT password.")]
MqttCa = Annotated[Path | None, typer.Option(help="CA certificate (PEM) the broker's TLS certificate is checked "
                                             "against.")]
MqttOutbox = Annotated[Path | None, typer.Option(help="Where results wait while the broker is away (default: "
                                                 "~/.local/share/edgelearn/outbox/STATION).")]
OpcUa = Annotated[str | None, typer.Option("--opcua", help="Serve the latest decision over OPC UA here "
                                           "(opc.tcp://0.0.0.0:4840); its Trigger() method decides now.")]
Loop = Annotated[bool, typer.Option("--loop", help="Play a video file as a camera would: at its recorded frame rate, "
                                                     "again from the start at its end.")]

def watch(
    source: Source,
    model: Annotated[Path, typer.Option(help="The saved model (.edge) that decides.")],
    weights: Weights = None,
    every: Every = 1,
    max_fps: MaxFps = None,
    on_change: OnChange = None,
    station: StationName = None,
    webhook: Webhook = None,
    mqtt: Mqtt = None,
    mqtt_user: MqttUser = None,
    mqtt_password_file: MqttPasswordFile = None,
    mqtt_ca: MqttCa = None,
    mqtt_outbox: MqttOutbox = None,
    opcua: OpcUa = None,
    loop: Loop = False,
    seconds: Annotated[float | None, typer.Option("--for", min=0, help="Stop after this many seconds.")] = None,
    json_lines: Annotated[bool, typer.Option("--json-lines", help="One JSON object per decision on stdout.")]
    = False,
):
    """Decide on a fixed camera's frames without a browser and send each decision on (MQTT, OPC UA, a
    webhook, stdout). Ctrl-C or SIGTERM stops; frames read, decided and dropped are printed at the end."""
    from edgelearn.plant.sources import open_source  # OpenCV: loaded for this command only
    from edgelearn.plant.watch import Watcher
    from edgelearn.resources import one_blas_thread

    station = station_name(station)
    recognizer = Recognizer.load(model, weights=weights)
    sinks: list = [PrintSink(json_lines)]
    watcher = None
    try:
        sinks += build_outputs(station, lambda: watcher.trigger(), webhook=webhook, mqtt=mqtt, mqtt_user=mqtt_user,
                               mqtt_password_file=mqtt_password_file, mqtt_ca=mqtt_ca, mqtt_outbox=mqtt_outbox,
                               opcua=opcua)
        watcher = Watcher(open_source(source, loop=loop), lambda image: recognizer.predict([image])[0].to_dict(),
                          sinks, station=station, every=every, max_fps=max_fps, on_change=on_change)
        with stop_event(seconds) as stop, one_blas_thread():
            watcher.run(stop)
    finally:
        close_all(sinks)
    stats = watcher.stats
    log(f"frames read {stats['read']}, decided {stats['decided']}, dropped {stats['dropped']}")


def build_outputs(station: str, trigger: Callable[[], Decision], *, webhook: str | None = None,
                  mqtt: str | None = None, mqtt_user: str | None = None, mqtt_password_file: Path | None = None,
                  mqtt_ca: Path | None = None, mqtt_outbox: Path | None = None, opcua: str | None = None,
                  users: dict[str, str] | None = None) -> list:
    """The sinks the output options ask for; MQTT's trigger topic and OPC UA's Trigger() call ``trigger``
    (late: it may name a watcher made after the sinks). One that fails closes those made before it."""
    from edgelearn.plant.webhook import WebhookSink

    sinks: list = []
    try:
        if webhook:
            sinks.append(WebhookSink(webhook))
        if mqtt:
            sinks.append(mqtt_sink(mqtt, station, mqtt_user, mqtt_password_file, mqtt_ca, mqtt_outbox))
            sinks[-1].on_trigger(trigger)
        if opcua:
            sinks.append(plant_module("opcua").OpcUaServer(opcua, station, trigger=trigger, users=users))
    except BaseException:
        close_all(sinks)
        raise
    return sinks


def close_all(sinks: list) -> None:
    for sink in reversed(sinks):
        sink.close()


class PrintSink:
    """Each decision as a line for people, or as one JSON object (``--json-lines``)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def publish(self, decision: Decision) -> None:
        if self.as_json:
            print(json.dumps(decision.to_dict()), flush=True)
            return
        answer = decision.label
        if decision.unknown:
            answer = f"unknown (closest: {decision.top_k[0]['label']})" if decision.top_k else "unknown"
        print(f"frame {decision.frame_id}: {answer} {decision.confidence:.0%}", flush=True)

    def close(self) -> None:
        pass


def station_name(name: str | None) -> str:
    name = name or socket.gethostname().split(".")[0]
    if not STATION_NAME.fullmatch(name):
        raise ParameterError(f"station name {name!r}: use up to 64 letters, digits, '.', '-' or '_'")
    return name


@contextmanager
def stop_event(seconds: float | None):
    """An event set by Ctrl-C, SIGTERM, or after ``seconds``; the signals' own handlers come back after."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signals}
    timer = threading.Timer(seconds, stop.set) if seconds is not None else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        yield stop
    finally:
        if timer:
            timer.cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def plant_module(name: str):
    """``edgelearn.plant.<name>``, or one line saying what to install."""
    try:
        return importlib.import_module(f"edgelearn.plant.{name}")
    except ModuleNotFoundError as exc:
        raise EdgelearnError(f"--{name} {PLANT_INSTALL} ({exc.name} is missing)") from None


def mqtt_sink(url: str, station: str, user: str | None, password_file: Path | None, ca: Path | None,
              outbox: Path | None):
    try:
        password = password_file.read_text().rstrip("\r\n") if password_file else None
    except OSError as exc:
        raise ParameterError(f"{password_file}: the MQTT password file cannot be read ({exc.strerror})") from None
    outbox = outbox or Path.home() / ".local" / "share" / "edgelearn" / "outbox" / station
    return plant_module("mqtt").MqttSink(url, station, outbox=outbox, username=user, password=password, tls_ca=ca)
