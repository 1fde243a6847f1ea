"""The headless station on a line: a fixed camera in, MQTT and OPC UA out, with the real parts.

    python benchmarks/plant.py                  # ~25 min on 2 cores (--minutes 10 at each size)
    python benchmarks/plant.py --minutes 1 --sustained-seconds 20 --outage 10 --triggers 50   # a short trial

Parts: Mosquitto on 127.0.0.1 (a free port, persistence on); a camera made here: an MJPEG-over-HTTP server
thread serving imagenette test images (640x480 JPEG, as an IP camera would) at a set frame rate, recording
when each frame was sent; MobileNetV2 from a bundle (ONNX Runtime, fp32, exported once and cached like
benchmarks/edge.py does) with SLDA taught 10 imagenette classes x 5 train images; and ``edgelearn watch`` as a
subprocess with ``--mqtt`` to the broker and ``--opcua`` on loopback, as a plant runs it: its own process, so
its memory is its own and the measuring threads here do not share its interpreter lock.

Per input size (96 and 224 px), one ``watch`` process, in this order:
- ``--minutes`` at 5 frames/s: frame-to-MQTT-message latency (the frame's send time at the camera server to
  the subscriber's receipt, both ``time.time()`` on this machine; a frame maps to its decision by the
  watcher's frame counter, checked by the decided label against the sent image's class), and the resident
  memory of the ``watch`` process each minute.
- A broker outage of ``--outage`` s at 5 frames/s: Mosquitto stopped, the station keeps deciding, Mosquitto
  restarted. Every result ``watch`` printed (``--json-lines``) from the outage's start on must reach a
  persistent-session subscriber, in order; QoS 1 duplicates are counted apart.
- ``--sustained-seconds`` with the camera as fast as the station reads frames (or at ``--fast-fps``):
  decisions/s and frames dropped.
- ``--triggers`` calls of the OPC UA method ``Trigger()`` from an asyncua client: the round trip.
Writes benchmarks/results/plant.{json,md}.
"""

import asyncio
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from benchmarks.edge import bundle, rss_mb  # noqa: E402
from tests.mosquitto import Broker, Subscriber, free_port  # noqa: E402

RATE = 5.0  # frames/s of the camera while latency, memory and the outage are measured
WARM_UP = 10  # first decisions left out of the latency (the model's first runs)
CAMERA = (640, 480)
TARGETS = {"p99_ms_224": 100, "memory_growth_pct": 5, "lost": 0}


class Camera:
    """An IP camera's MJPEG stream of ``frames`` at ``fps`` (changeable while it runs); ``sent[k]`` is when
    frame k (the watcher's frame k + 1) went out, counted over the first connection only."""

    def __init__(self, frames: list[bytes], fps: float):
        self.frames, self.fps, self.sent, self.connections = frames, fps, [], 0
        self.stopping = threading.Event()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                camera.stream(self.wfile, first=camera.connections == 1)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stream(self, out, first: bool) -> None:
        k, due = 0, time.monotonic()
        while not self.stopping.is_set():
            data = self.frames[k % len(self.frames)]
            try:
                out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                          % (len(data), data))
                out.flush()
            except OSError:
                return
            if first:
                self.sent.append(time.time())
            k += 1
            if self.fps > 0:  # 0: as fast as the reader takes them
                due = max(due + 1 / self.fps, time.monotonic() - 1)  # a steady rate, no burst after a stall
                self.stopping.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class Listener(Subscriber):
    """A persistent-session subscriber of one station's results: (receipt time, frame id) of each message;
    retained copies (a resubscription's replay of the last result) are left out."""

    def __init__(self, broker: Broker, station: str):
        self.received: list[tuple[float, int]] = []
        super().__init__(broker, f"edgelearn/{station}/result", client_id=f"bench-{station}", clean=False)
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:
        if not message.retain:
            self.received.append((time.time(), json.loads(message.payload)["frame_id"]))


class Watch:
    """``edgelearn watch`` of ``camera``, its JSON lines read in a thread: (time printed, decision)."""

    def __init__(self, folder: Path, model: Path, weights: Path, camera: Camera, broker: Broker, station: str):
        self.opcua_port = free_port()
        cmd = [sys.executable, "-m", "edgelearn", "watch", camera.url, "--model", str(model), "--weights", str(weights),
               "--station", station, "--mqtt", broker.url, "--mqtt-outbox", str(folder / f"outbox-{station}.db"),
               "--opcua", f"opc.tcp://127.0.0.1:{self.opcua_port}", "--json-lines"]
        self.stderr = open(folder / f"watch-{station}.log", "w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.decisions: list[tuple[float, dict]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.decisions.append((time.time(), json.loads(line)))

    def wait_for_decisions(self, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.decisions) < n:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stderr.seek(0)
                raise SystemExit(f"watch made {len(self.decisions)} decisions, exit {self.process.poll()}:\n"
                                 + self.stderr.read()[-3000:])
            time.sleep(0.1)

    def stop(self) -> dict:
        """SIGTERM; the watcher's own count of frames read, decided and dropped (its last line)."""
        self.process.terminate()
        self.process.wait(60)
        self.stderr.seek(0)
        counts = re.findall(r"frames read (\d+), decided (\d+), dropped (\d+)", self.stderr.read())
        self.stderr.close()
        return dict(zip(("read", "decided", "dropped"), map(int, counts[-1]), strict=True)) if counts else {}


def percentiles_ms(values: list[float]) -> dict:
    if len(values) < 2:
        return {"n": len(values)}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(1000 * statistics.median(values), 1), "p99": round(1000 * q[98], 1),
            "max": round(1000 * max(values), 1), "n": len(values)}


def steady(watch: Watch, camera: Camera, listener: Listener, labels: list[str], minutes: float) -> dict:
    """Latency at 5 frames/s and memory each minute, over ``minutes``."""
    memory = [rss_mb(watch.process.pid)]
    cpu_before, start = cpu_seconds(watch.process.pid), time.time()
    for minute in range(1, int(minutes) + 1):
        time.sleep(max(0.0, start + 60 * minute - time.time()))
        memory.append(rss_mb(watch.process.pid))
    if minutes != int(minutes):
        time.sleep(max(0.0, start + 60 * minutes - time.time()))
        memory.append(rss_mb(watch.process.pid))
    time.sleep(2)  # the last messages in flight
    end = time.time()
    cpu_share = (cpu_seconds(watch.process.pid) - cpu_before) / (end - start)
    received = {frame_id: at for at, frame_id in listener.received}  # first receipt of each
    decided = [d for at, d in watch.decisions if start <= at <= end]
    latencies, agree = [], 0
    for d in decided[WARM_UP:]:
        k = d["frame_id"] - 1
        if k < len(camera.sent) and d["frame_id"] in received:
            latencies.append(received[d["frame_id"]] - camera.sent[k])
            agree += d["label"] == labels[k % len(labels)]
    rss = [m["rss_mb"] for m in memory]
    ids = [d["frame_id"] for d in decided]
    return {"seconds": round(end - start, 1), "decided": len(decided), "latency_ms": percentiles_ms(latencies),
            "frames_not_decided": ids[-1] - ids[0] + 1 - len(ids) if ids else None,
            "label_matches_sent_class_pct": round(100 * agree / max(1, len(latencies)), 1),
            "memory": memory, "memory_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2),
            "cpu_pct_of_one_core": round(100 * cpu_share, 1)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def outage(watch: Watch, broker: Broker, listener: Listener, seconds: float) -> dict:
    """Mosquitto away for ``seconds`` while the station decides; then every result from then on, in order."""
    first = len(watch.decisions)
    broker.stop()
    down = time.time()
    time.sleep(seconds)
    broker.start()
    up = time.time()
    time.sleep(10)  # results made after the restart too
    made = watch.decisions[first:]
    produced = [d["frame_id"] for _, d in made]
    deadline = time.monotonic() + 180
    while not set(produced) <= {f for _, f in listener.received} and time.monotonic() < deadline:
        time.sleep(0.2)
    if not produced:
        raise SystemExit("watch made no decision across the outage: see its log")
    ids = [f for _, f in listener.received if f >= produced[0]]
    unique = list(dict.fromkeys(ids))
    first_receipt = {f: at for at, f in reversed(listener.received)}
    during = [d["frame_id"] for at, d in made if down <= at < up]
    return {"seconds": seconds, "produced_during": len(during),
            "produced_after_restart": sum(at >= up for at, _ in made),
            "produced": len(produced), "received": sum(f in first_receipt for f in produced),
            "lost": sum(f not in first_receipt for f in produced), "in_order": unique == sorted(unique),
            "qos1_duplicates": len(ids) - len(unique),
            "outage_results_delivered_s_after_restart":
                round(max((first_receipt[f] for f in during if f in first_receipt), default=up) - up, 1)}


def sustained(watch: Watch, camera: Camera, fps: float, seconds: float) -> dict:
    """Frames at ``fps`` (0: as fast as it reads them): decisions/s over ``seconds`` after a 3 s settling."""
    camera.fps = fps
    time.sleep(3)
    sent, decided, start = len(camera.sent), len(watch.decisions), time.time()
    time.sleep(seconds)
    took = time.time() - start
    n_sent, n_decided = len(camera.sent) - sent, len(watch.decisions) - decided
    camera.fps = RATE
    return {"camera_fps": fps, "seconds": round(took, 1), "frames_sent": n_sent, "decided": n_decided,
            "decisions_per_s": round(n_decided / took, 2), "not_decided": n_sent - n_decided}


def opcua_triggers(port: int, station: str, calls: int) -> dict:
    """Round trips of ``Trigger()`` from an asyncua client on loopback, one after the other."""
    from asyncua import Client

    async def run() -> list[float]:
        async with Client(f"opc.tcp://127.0.0.1:{port}/edgelearn/", timeout=30) as client:
            ns = await client.get_namespace_index(f"urn:edgelearn:{station}")
            node = await client.nodes.objects.get_child(f"{ns}:{station}")
            method = await node.get_child(f"{ns}:Trigger")
            await node.call_method(method)  # untimed: the session's first call
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                await node.call_method(method)
                times.append(time.perf_counter() - start)
            return times

    return {"round_trip_ms": percentiles_ms(asyncio.run(run()))}


def teach_model(size: int, weights: Path, data: Path, folder: Path) -> Path:
    """SLDA taught 10 imagenette classes x 5 train images on the bundle, saved as a .edge model."""
    from edgelearn.data import FolderDataset
    from edgelearn.data.images import load_image
    from edgelearn.recognizer import Recognizer

    train = FolderDataset.scan(data / "imagenette", "train").sample_per_class(5, 1)
    recognizer = Recognizer.create("mobilenet_v2", learner="slda", weights=str(weights))
    recognizer.learn([load_image(p) for p in train.paths], list(train.labels))
    return recognizer.save(folder / f"imagenette-{size}.edge")


def camera_frames(data: Path, per_class: int = 5) -> tuple[list[bytes], list[str]]:
    """Imagenette test images as a 640x480 camera would send them, classes interleaved."""
    from edgelearn.data import FolderDataset
    from edgelearn.data.images import load_image

    test = FolderDataset.scan(data / "imagenette", "test").sample_per_class(per_class, 0)
    order = sorted(range(len(test.paths)), key=lambda i: (i % per_class, test.labels[i]))  # not one class in a row
    frames = []
    for i in order:
        out = io.BytesIO()
        load_image(test.paths[i]).convert("RGB").resize(CAMERA).save(out, "JPEG", quality=90)
        frames.append(out.getvalue())
    return frames, [test.labels[i] for i in order]


def session(size: int, args, folder: Path, frames: list[bytes], labels: list[str]) -> dict:
    weights = bundle(size, "fp32", args.weights, args.data)
    model = teach_model(size, weights, args.data, folder)
    station = f"bench-{size}"
    (folder / f"broker-{size}").mkdir()
    broker = Broker(folder / f"broker-{size}", persistence=True).start()
    listener = Listener(broker, station)
    camera = Camera(frames, RATE)
    watch = Watch(folder, model, weights, camera, broker, station)
    try:
        watch.wait_for_decisions(WARM_UP + 1)
        result = {"size": size, "steady": steady(watch, camera, listener, labels, args.minutes)}
        print(size, "steady", result["steady"], flush=True)
        result["outage"] = outage(watch, broker, listener, args.outage)
        print(size, "outage", result["outage"], flush=True)
        result["sustained"] = sustained(watch, camera, args.fast_fps, args.sustained_seconds)
        print(size, "sustained", result["sustained"], flush=True)
        result["opcua"] = opcua_triggers(watch.opcua_port, station, args.triggers)
        print(size, "opcua", result["opcua"], flush=True)
    finally:
        result_line = watch.stop()
        camera.stop()
        listener.close()
        broker.stop()
    result["watch_stats"] = result_line
    result["camera_connections"] = camera.connections
    return result


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=10, help="steady 5 frames/s phase, per size")
    parser.add_argument("--outage", type=float, default=30, help="seconds the broker is away")
    parser.add_argument("--sustained-seconds", type=float, default=60)
    parser.add_argument("--fast-fps", type=float, default=0,
                        help="the camera's rate in the sustained phase (0: as fast as the station reads frames)")
    parser.add_argument("--triggers", type=int, default=100, help="OPC UA Trigger() calls (at least 50)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    args = parser.parse_args()
    if args.triggers < 50:
        parser.error("--triggers: at least 50 calls")
    load_start = os.getloadavg()
    frames, labels = camera_frames(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [session(size, args, Path(tmp), frames, labels) for size in args.sizes]
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "seeds"}
    config["command"] = " ".join(["python benchmarks/plant.py", *sys.argv[1:]])
    env = {"load_average_at_start": load_start, "load_average_at_end": os.getloadavg()}
    summary = {f"{r['size']}px": {"p99_ms": r["steady"]["latency_ms"].get("p99"),
                                  "frames_dropped": r["watch_stats"].get("dropped"),
                                  "memory_growth_pct": r["steady"]["memory_growth_pct"],
                                  "lost_in_outage": r["outage"]["lost"],
                                  "decisions_per_s": r["sustained"]["decisions_per_s"]} for r in runs}
    path = common.write_results("plant", summary | {"load": env}, config, runs, report(runs, config, env))
    print(f"wrote {path}")


def report(runs: list[dict], config: dict, env: dict) -> str:
    start, end = env["load_average_at_start"][0], env["load_average_at_end"][0]
    lines = ["# The headless station on a line (benchmarks/plant.py)", "",
             f"`{config['command']}` on {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M')} (load average {start:.1f} at the start, {end:.1f} at the end). "
             "`edgelearn watch` (a subprocess) of an MJPEG camera served here (640x480 imagenette test images), "
             "MobileNetV2 bundle (fp32, ONNX Runtime) + SLDA taught 10 classes x 5 images, results to Mosquitto "
             "on 127.0.0.1 and OPC UA on loopback.", "",
             "| | " + " | ".join(f"{r['size']} px" for r in runs) + " | target |",
             "|---|" + "---|" * len(runs) + "---|"]

    def row(name: str, value, target: str = "") -> None:
        lines.append(f"| {name} | " + " | ".join(str(value(r)) for r in runs) + f" | {target} |")

    lat = lambda r: r["steady"]["latency_ms"]  # noqa: E731
    row(f"frame-to-MQTT p50 / p99 ms at {RATE:g} frames/s", lambda r: f"{lat(r).get('p50')} / {lat(r).get('p99')}",
        f"p99 <= {TARGETS['p99_ms_224']} ms at 224 px")
    row("  frames measured (label matches the sent image's class)",
        lambda r: f"{lat(r)['n']} ({r['steady']['label_matches_sent_class_pct']} %)")
    row(f"resident memory MB, start -> after {config['minutes']:g} min",
        lambda r: f"{r['steady']['memory'][0]['rss_mb']} -> {r['steady']['memory'][-1]['rss_mb']}")
    row(f"  frames not decided at {RATE:g} frames/s", lambda r: r["steady"]["frames_not_decided"], "0")
    row("memory growth %", lambda r: r["steady"]["memory_growth_pct"], f"<= {TARGETS['memory_growth_pct']} %")
    row(f"CPU of the watch process at {RATE:g} frames/s (% of one core)", lambda r: r["steady"]["cpu_pct_of_one_core"])
    row(f"broker outage {config['outage']:g} s: results made during / after the restart",
        lambda r: f"{r['outage']['produced_during']} / {r['outage']['produced_after_restart']}")
    row("  received afterwards (lost), in order", lambda r: f"{r['outage']['received']} ({r['outage']['lost']}), "
        f"{'yes' if r['outage']['in_order'] else 'NO'}", "0 lost, in order")
    row("  QoS 1 duplicates; s from the restart until the outage's results were all in",
        lambda r: f"{r['outage']['qos1_duplicates']}; {r['outage']['outage_results_delivered_s_after_restart']}")
    camera = f"at {config['fast_fps']:g} frames/s" if config["fast_fps"] else "as fast as it reads"
    row(f"sustained decisions/s (camera {camera})", lambda r: r["sustained"]["decisions_per_s"])
    row("  frames sent / decided in that phase", lambda r: f"{r['sustained']['frames_sent']} / "
        f"{r['sustained']['decided']}")
    row(f"OPC UA Trigger() round trip p50 / p99 ms ({config['triggers']} calls)",
        lambda r: f"{r['opcua']['round_trip_ms']['p50']} / {r['opcua']['round_trip_ms']['p99']}")
    row("frames read / decided / dropped, whole run (watch's own count)",
        lambda r: " / ".join(str(v) for v in r["watch_stats"].values()))
    lines += ["", "Memory each minute (MB): " + "; ".join(
        f"{r['size']} px: " + ", ".join(str(m["rss_mb"]) for m in r["steady"]["memory"]) for r in runs), ""]
    lines.append(f"Latency: from the camera server's send of a frame to the subscriber's receipt of its result (same "
                 f"clock), the first {WARM_UP} decisions left out. A frame maps to its result by the watcher's frame "
                 "counter; the label check above confirms the mapping (the camera connected "
                 + ", ".join(f"{r['camera_connections']}x" for r in runs) + ").")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
