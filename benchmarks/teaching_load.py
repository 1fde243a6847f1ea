"""Does teaching stall predictions? Prediction latency with and without one client teaching.

    python benchmarks/teaching_load.py                   # about 2 minutes on 2 cores
    python benchmarks/teaching_load.py --seconds 60 --label before   # e.g. with PYTHONPATH=<old src>

A real `edgelearn serve` on 127.0.0.1 (MobileNetV2 with the shared ImageNet weights, ONNX Runtime,
224 px, SLDA) is taught ``--per-class`` images of each of imagenette's 10 classes. Then ``--clients``
threads send test images to ``/api/predict`` for ``--seconds``, once alone and once while one more
client teaches ``--teach-rate`` images per second (one image per request, classes in turn).
Reported: predictions/s, p50 and p99 latency of each phase, learns/s, and the ratio of the p99s
(the station's target: at most 1.5). Writes benchmarks/results/teaching_load[_LABEL].{json,md}.
The server runs whatever ``edgelearn`` the environment imports, so old and new code can be compared.
"""

import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from benchmarks.station import sample_images  # noqa: E402
from tests.integration.server import Server  # noqa: E402


def predict_load(server: Server, images: list[bytes], clients: int, seconds: float) -> tuple[list[float], float]:
    """``clients`` threads predicting back to back until the time is up: (latencies in ms, elapsed s)."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(offset: int) -> None:
        mine = []
        with httpx.Client(base_url=server.url, timeout=120) as c:
            c.post("/api/predict", params={"enqueue": False}, content=images[offset]).raise_for_status()
            start.wait()
            deadline = time.perf_counter() + seconds
            for data in itertools.islice(itertools.cycle(images), offset, None):
                if time.perf_counter() >= deadline:
                    break
                t = time.perf_counter()
                c.post("/api/predict", params={"enqueue": False}, content=data,
                       headers={"Content-Type": "image/jpeg"}).raise_for_status()
                mine.append((time.perf_counter() - t) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def teach_at_rate(server: Server, examples: list[tuple[str, bytes]], rate: float, stop: threading.Event) -> list:
    """One client teaching one image per request, ``rate`` requests per second (or as fast as it
    can, if learning is slower); returns the learn latencies in ms."""
    import httpx

    latencies = []
    with httpx.Client(base_url=server.url, timeout=120) as c:
        t0 = time.perf_counter()
        for k, (label, data) in enumerate(itertools.cycle(examples)):
            time.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
            if stop.is_set():
                break
            t = time.perf_counter()
            c.post("/api/learn", headers=server.auth("bench"), data={"label": label},
                   files=[("files", ("x.jpg", data, "image/jpeg"))]).raise_for_status()
            latencies.append((time.perf_counter() - t) * 1000)
    return latencies


def phase(server, queries, args, teach_examples=None) -> dict:
    stop, learned = threading.Event(), []
    teacher = None
    if teach_examples:
        teacher = threading.Thread(target=lambda: learned.extend(teach_at_rate(server, teach_examples,
                                                                              args.teach_rate, stop)))
        teacher.start()
    latencies, elapsed = predict_load(server, queries, args.clients, args.seconds)
    stop.set()
    if teacher:
        teacher.join()
    lat = np.array(latencies)
    return {"predictions_per_s": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "predictions": len(lat),
            "learns_per_s": len(learned) / elapsed, "learn_p50_ms": float(np.median(learned)) if learned else None}


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=30, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="predicting client threads")
    parser.add_argument("--teach-rate", type=float, default=2.0, help="images taught per second in the second phase")
    parser.add_argument("--per-class", type=int, default=5, help="images per class taught before measuring")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--label", default="", help="suffix of the result files (e.g. before, after)")
    args = parser.parse_args()
    first = sample_images(args, args.per_class, "train", seed=0)
    more = sample_images(args, 10, "train", seed=1)
    queries = [data for images in sample_images(args, 4, "test", seed=0).values() for data in images]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", "--backbone", "mobilenet_v2", "--weights", args.weights,
                        "--input-size", str(args.size), "--runtime", "onnx", log=Path(tmp) / "serve.log")
        try:
            for label, images in first.items():
                server.client.post("/api/learn", headers=server.auth(), data={"label": label},
                                   files=[("files", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(images)]
                                   ).raise_for_status()
            examples = [(label, d) for d_s in zip(*more.values(), strict=False)
                        for label, d in zip(more, d_s, strict=True)]  # classes in turn
            quiet = phase(server, queries, args)
            teaching = phase(server, queries, args, examples)
        finally:
            server.stop()
    report(args, quiet, teaching)


def report(args, quiet: dict, teaching: dict) -> None:
    ratio = teaching["p99_ms"] / quiet["p99_ms"]
    rows = [("predicting only", quiet), (f"one client teaching {args.teach_rate:g} images/s", teaching)]
    md = [f"# Predictions while teaching ({args.clients} predicting clients, {args.seconds:g} s per phase, "
          f"MobileNetV2 {args.size} px on ONNX Runtime, SLDA)", "",
          "| phase | predictions/s | p50 ms | p99 ms | learns/s | learn p50 ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        learn = f"{r['learn_p50_ms']:.0f}" if r["learn_p50_ms"] is not None else "-"
        md.append(f"| {name} | {r['predictions_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
                  f"| {r['learns_per_s']:.2f} | {learn} |")
    md += ["", f"p99 teaching / p99 predicting only: {ratio:.2f} (target <= 1.5)", ""]
    markdown = "\n".join(md)
    print(markdown)
    name = "teaching_load" + (f"_{args.label}" if args.label else "")
    common.write_results(name, {"p99_ratio": ratio, "target_met": ratio <= 1.5},
                         {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()},
                         {"predicting_only": quiet, "teaching": teaching}, markdown)


if __name__ == "__main__":
    main()
