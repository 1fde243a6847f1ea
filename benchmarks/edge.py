"""The device install against the workstation's, measured in one run: what a small board has to carry.

    python benchmarks/edge.py                 # ~10 min on 2 cores (the first run also builds the device venv)

- Installed size: ``du`` of site-packages of the device install (``pip install edgelearn``, made here in a
  virtual environment of its own) and of this one (the workstation: PyTorch with its CUDA wheels).
- Import time of what the station needs, in each install (median of 5 fresh interpreters).
- The served station (a real ``edgelearn serve`` on 127.0.0.1, MobileNetV2 + SLDA at 224 px): cold start to
  the first answer, resident memory once started and after N predictions, served frames/s (one client). The
  device runs from a bundle; the workstation from the PyTorch weights on ONNX Runtime, as before this issue.
- Module A's forward pass alone from bundles: frames/s at 96 and 224 px, fp32 and int8, 1 and 2 threads
  (interleaved, medians of 7 rounds after a warm-up).
Writes benchmarks/results/edge.{json,md}.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from tests.integration.server import TOKEN, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelearn" / "bundles"
STATION_IMPORTS = "import edgelearn.server.app, edgelearn.server.station, edgelearn.backbones.bundle, onnxruntime"


def device_python(venv: Path) -> Path:
    """The device install (no extras) in ``venv``, made once from this checkout."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, cwd=tempfile.gettempdir())
    if subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0:
        raise SystemExit(f"{venv} has PyTorch: not a device install")
    return python


def site_packages_mb(python: Path) -> dict:
    where = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()

    def mb(*paths: str) -> float:
        out = subprocess.run(["du", "-sk", *paths], capture_output=True, text=True, check=True).stdout
        return sum(int(line.split()[0]) for line in out.splitlines()) / 1024

    installer = [str(p) for p in Path(where).iterdir() if p.name.split("-")[0] in ("pip", "setuptools")]
    total = mb(where)
    return {"site_packages_mb": round(total, 1), "without_pip_setuptools_mb": round(total - mb(*installer), 1)}


def import_seconds(python: Path, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(python), "-c", STATION_IMPORTS], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bundle(size: int, precision: str, weights: str, data: Path) -> Path:
    """MobileNetV2 at ``size`` px and ``precision``, exported once by this (workstation) install."""
    path = BUNDLES / f"mobilenet_v2-{size}-{precision}.edgebundle"
    if not path.exists():
        BUNDLES.mkdir(parents=True, exist_ok=True)
        extra = ["--calibration", str(data / "imagenette"), "--calibration-per-class", "10"] if precision == "int8" \
            else []
        subprocess.run([sys.executable, "-m", "edgelearn", "export-backbone", "-o", str(path), "--weights", weights,
                        "--input-size", str(size), "--precision", precision, *extra], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def rss_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    value = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status.splitlines()
             if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss_mb": round(value["VmRSS"], 1), "peak_rss_mb": round(value["VmHWM"], 1)}


def served(python: Path, weights: str, teach: dict[str, list[bytes]], queries: list[bytes], n: int) -> dict:
    """Cold start to the first answer, memory, and frames/s of one ``edgelearn serve`` process."""
    import httpx

    with tempfile.TemporaryDirectory() as data:
        port = free_port()
        env = {**os.environ, "EDGELEARN_TOKEN": TOKEN, "EDGELEARN_WEIGHTS": weights}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        start = time.perf_counter()
        process = subprocess.Popen([str(python), "-m", "edgelearn", "serve", "--data", data, "--port", str(port)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
            while True:
                try:
                    answer = client.post("/api/predict", headers=auth, files={"image": ("q.jpg", queries[0])})
                    break
                except httpx.TransportError:
                    if process.poll() is not None:
                        raise RuntimeError(f"the station exited with {process.returncode}") from None
                    time.sleep(0.05)
            cold = time.perf_counter() - start
            assert answer.status_code == 200, answer.text
            started = rss_mb(process.pid)
            for label, images in teach.items():
                client.post("/api/learn", headers=auth, data={"label": label},
                            files=[("files", (f"{i}.jpg", b)) for i, b in enumerate(images)]).raise_for_status()
            taught = rss_mb(process.pid)
            start = time.perf_counter()
            for i in range(n):
                client.post("/api/predict", headers=auth, files={"image": ("q.jpg", queries[i % len(queries)])},
                            params={"representatives": 0}).raise_for_status()
            fps = n / (time.perf_counter() - start)
            return {"cold_start_s": round(cold, 2), "started": started, "taught": taught,
                    "after_predictions": rss_mb(process.pid), "served_fps": round(fps, 1), "predictions": n}
        finally:
            process.terminate()
            process.wait(30)


def forward_fps(bundles: dict[tuple, Path], images: list, rounds: int = 7, frames: int = 30) -> dict:
    """Module A alone, batch 1, per (size, precision, threads): interleaved rounds, median frames/s."""
    from edgelearn.backbones import BundleBackbone

    runs = {}
    for (size, precision), path in bundles.items():
        for threads in (1, 2):
            bb = BundleBackbone(path, threads=threads)
            inputs = [bb.preprocessing.array(image)[None] for image in images[:frames]]
            bb.embed_tensor(inputs[0])  # warm-up
            runs[(size, precision, threads)] = (bb, inputs)
    seen: dict[tuple, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, (bb, inputs) in runs.items():
            start = time.perf_counter()
            for x in inputs:
                bb.embed_tensor(x)
            seen[key].append(len(inputs) / (time.perf_counter() - start))
    return {f"{size}px_{precision}_{threads}t": round(statistics.median(v), 1)
            for (size, precision, threads), v in seen.items()}


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--device-venv", type=Path, default=Path(tempfile.gettempdir()) / "edgelearn-device-venv")
    parser.add_argument("--predictions", type=int, default=1000)
    args = parser.parse_args()
    from edgelearn.data import FolderDataset
    from edgelearn.data.images import load_image

    device = device_python(args.device_venv)
    workstation = Path(sys.executable)
    result: dict = {"environment": {**common.environment(), "load_average_at_start": os.getloadavg()},
                    "install": {}, "import_s": {}, "station": {}}
    for name, python in (("device", device), ("workstation", workstation)):
        result["install"][name] = site_packages_mb(python)
        result["import_s"][name] = round(import_seconds(python), 2)
    print(result["install"], result["import_s"], flush=True)

    test = FolderDataset.scan(args.data / "imagenette", "test").sample_per_class(5, 0)
    queries = [Path(p).read_bytes() for p in test.paths]
    train = FolderDataset.scan(args.data / "imagenette", "train").sample_per_class(5, 1)
    teach: dict[str, list[bytes]] = {}
    for path, label in zip(train.paths, train.labels, strict=True):
        teach.setdefault(label, []).append(Path(path).read_bytes())
    bundles = {(size, precision): bundle(size, precision, args.weights, args.data)
               for size in (96, 224) for precision in ("fp32", "int8")}
    for name, python, weights in (("device", device, str(bundles[(224, "fp32")])),
                                  ("workstation", workstation, args.weights)):
        served(python, weights, {}, queries[:1], 1)  # once, untimed: the workstation exports its ONNX graph
        result["station"][name] = served(python, weights, teach, queries, args.predictions)
        print(name, result["station"][name], flush=True)
    result["forward_fps"] = forward_fps(bundles, [load_image(p) for p in test.paths])
    print(result["forward_fps"], flush=True)
    result["environment"]["load_average_at_end"] = os.getloadavg()
    (common.RESULTS / "edge.json").write_text(json.dumps(result, indent=1))
    (common.RESULTS / "edge.md").write_text(report(result, args))


def report(r: dict, args) -> str:
    d, w = r["station"]["device"], r["station"]["workstation"]
    env = r["environment"]
    lines = ["# The device install (benchmarks/edge.py)", "",
             f"`python benchmarks/edge.py --predictions {args.predictions}` on {env['cores']} x86 cores, {env['date']} "
             f"(load average {env['load_average_at_start'][0]:.1f} at the start, {env['load_average_at_end'][0]:.1f} "
             "at the end). Station: MobileNetV2 + SLDA at 224 px fp32, one client on 127.0.0.1, 10 classes taught "
             "from 5 images each; the device from a bundle, the workstation from the PyTorch weights on ONNX Runtime.",
             "",
             "| | device install | workstation install |", "|---|---|---|"]
    rows = [("site-packages (MB)", r["install"]["device"]["site_packages_mb"],
             r["install"]["workstation"]["site_packages_mb"]),
            ("  without pip and setuptools (MB)", r["install"]["device"]["without_pip_setuptools_mb"],
             r["install"]["workstation"]["without_pip_setuptools_mb"]),
            ("import of the station's modules (s)", r["import_s"]["device"], r["import_s"]["workstation"]),
            ("cold start to the first answer (s)", d["cold_start_s"], w["cold_start_s"]),
            ("resident memory, started (MB)", d["started"]["rss_mb"], w["started"]["rss_mb"]),
            (f"resident memory after {d['predictions']} predictions (MB)", d["after_predictions"]["rss_mb"],
             w["after_predictions"]["rss_mb"]),
            ("peak resident memory (MB)", d["after_predictions"]["peak_rss_mb"], w["after_predictions"]["peak_rss_mb"]),
            ("served frames/s (one client)", d["served_fps"], w["served_fps"])]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines += ["", "Module A alone from bundles (batch 1, frames/s, median of 7 interleaved rounds):", "",
              "| input | precision | 1 thread | 2 threads |", "|---|---|---|---|"]
    f = r["forward_fps"]
    for size in (96, 224):
        for precision in ("fp32", "int8"):
            one, two = f[f"{size}px_{precision}_1t"], f[f"{size}px_{precision}_2t"]
            lines.append(f"| {size} px | {precision} | {one} | {two} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
