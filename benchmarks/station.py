"""The live station, measured: HTTP throughput and latency, explanation costs, calibration, faithfulness.

    python benchmarks/station.py               # ~5 min on 2 cores once features are cached

- Served frames/s and p50/p99 latency through a real `edgelearn serve` process (uvicorn, loopback),
  at 96 and 224 px, with 1 and 8 concurrent clients, beside the raw backbone throughput (decode +
  embed, batch 1) measured in the same run, one and all threads.
- Cost of each explanation in the station: top-k + representatives (feature and phash matching
  over 12 thumbnails per class), Grad-CAM heat map.
- Calibration: expected calibration error of each learner's confidence on held-out test images,
  raw (T = 1), with a temperature fitted on a held-out half, and with the temperature the recognizer
  learns from the training stream itself (held-out evidence from the first batch on).
- Faithfulness of the heat maps: deletion curves (most salient pixels blurred first) against random
  pixel orders; area under the curve, lower = more faithful.
Writes benchmarks/results/station.{json,md} and plots.
"""

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.data.images import load_image  # noqa: E402
from edgelearn.evaluation import evaluate_features  # noqa: E402
from edgelearn.explain import HeatMapper, deletion_curve  # noqa: E402
from edgelearn.explain.calibration import reliability  # noqa: E402
from edgelearn.learners import make_learner  # noqa: E402
from edgelearn.recognizer import Recognizer  # noqa: E402
from tests.integration.server import Server  # noqa: E402

LEARNERS = ("slda", "ncm", "fuzzy_artmap")
SIZES = (96, 224)
RUNTIMES = ("torch", "onnx")
CLIENTS = (1, 8)


# -- HTTP -----------------------------------------------------------------------------------------------
def http_run(server: Server, images: list[bytes], clients: int, requests_each: int) -> dict:
    """``clients`` threads, each sending ``requests_each`` frames one after another (connections are
    opened and warmed before the clock starts)."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def send(c, data) -> float:
        t = time.perf_counter()
        r = c.post("/api/predict", params={"enqueue": False}, content=data,
                   headers={"Content-Type": "image/jpeg"})  # the camera page's way
        r.raise_for_status()
        return time.perf_counter() - t

    def client(offset: int):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            send(c, images[offset % len(images)])
            start.wait()
            mine = [send(c, images[(offset * requests_each + i) % len(images)]) for i in range(requests_each)]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return {"frames_per_s": len(latencies) / (time.perf_counter() - t0), "latencies_ms": np.array(latencies) * 1000}


def raw_backbone(backbone, images: list[bytes], n: int, threads: int | None = None) -> float:
    """Images/s of decode + preprocessing + embedding at batch 1, in this process."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for data in images[:3]:
            backbone.embed([load_image(data)], batch_size=1)
        t = time.perf_counter()
        for i in range(n):
            backbone.embed([load_image(images[i % len(images)])], batch_size=1)
        return n / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def served(args, teach: dict[str, list[bytes]], queries: list[bytes]) -> list[dict]:
    """Per size: the server is taught, then rounds of (raw backbone, 1 client, 8 clients) alternate,
    so that a slow spell of this shared machine hits raw and served figures alike."""
    from edgelearn.backbones import build_backbone

    rows = []
    for runtime, size in [(r, s) for r in RUNTIMES for s in SIZES]:
        backbone = build_backbone("mobilenet_v2", weights=args.weights, input_size=size, runtime=runtime)
        raw, runs = [], {c: [] for c in CLIENTS}
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp) / "data", "--backbone", "mobilenet_v2", "--weights", args.weights,
                            "--input-size", str(size), "--runtime", runtime, log=Path(tmp) / "serve.log")
            try:
                for label, images in teach.items():
                    r = server.client.post("/api/learn", headers=server.auth(), data={"label": label},
                                           files=[("files", (f"{i}.jpg", d)) for i, d in enumerate(images)])
                    r.raise_for_status()
                http_run(server, queries, 1, 5)  # warm-up
                for _ in range(args.rounds):
                    raw.append(raw_backbone(backbone, queries, args.requests))
                    for clients in CLIENTS:
                        each = args.requests if clients == 1 else max(args.requests // 4, 5)
                        runs[clients].append(http_run(server, queries, clients, each))
                raw.append(raw_backbone(backbone, queries, args.requests))
            finally:
                server.stop()
        one = raw_backbone(backbone, queries, args.requests, threads=1)
        rows.append({"runtime": runtime, "size": size, "clients": 0, "raw_frames_per_s": float(np.median(raw)),
                     "raw_runs": raw, "raw_frames_per_s_1_thread": one})
        print(f"  {runtime} {size}px raw backbone: {np.median(raw):.1f} img/s (runs {np.round(raw, 1).tolist()}; "
              f"{one:.1f} on one thread)", flush=True)
        for clients, results in runs.items():
            ms = np.concatenate([r["latencies_ms"] for r in results])
            fps = [r["frames_per_s"] for r in results]
            row = {"runtime": runtime, "size": size, "clients": clients, "frames_per_s": float(np.median(fps)),
                   "runs": fps, "requests": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)),
                   "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}
            rows.append(row)
            print(f"  {runtime} {size}px {clients} client(s): {row['frames_per_s']:.1f} frames/s (runs "
                  f"{np.round(fps, 1).tolist()}), p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)
    return rows


# -- explanation costs ---------------------------------------------------------------------------------
def explanation_costs(args, teach: dict[str, list[bytes]], queries: list[bytes]) -> dict:
    from edgelearn.server import Station, StationConfig

    out = {}
    for method in ("feature", "phash"):
        with tempfile.TemporaryDirectory() as tmp:
            station = Station(StationConfig(Path(tmp), weights=args.weights, keep_images=True, representatives=method))
            for label, images in teach.items():
                station.learn([load_image(d) for d in images], [label] * len(images))
            images = [load_image(d) for d in queries[:20]]
            features = [station.rec.embed([im], batch_size=1) for im in images]
            t = time.perf_counter()
            for im, f in zip(images, features, strict=True):
                p = station.rec.predict_features(f, top_k=5)[0]
                shown = [p.label] + [a[0] for a in p.alternatives[:2]]
                station._representatives(im, f[0], shown, 1)
            out[f"topk_representatives_ms_{method}"] = (time.perf_counter() - t) / len(images) * 1000
            if method == "feature":
                station.heatmap(images[0], station.rec.classes[0])  # builds the mapper once
                t = time.perf_counter()
                for im in images[:10]:
                    station.heatmap(im, station.rec.predict_features(station.rec.embed([im]))[0].label)
                out["heatmap_ms"] = (time.perf_counter() - t) / 10 * 1000
                out["thumbnails"] = station.store.count("thumbnails")
            station.close()
    return out


# -- calibration ---------------------------------------------------------------------------------------
def calibration(args, name: str, size: int) -> list[dict]:
    feats = common.dataset_features(name, size, args.weights, args.data)
    (Xtr, ytr, _), (Xte, yte, _) = feats["train"], feats["test"]
    rows = []
    for learner in LEARNERS:
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            idx = rng.permutation(common.per_class_indices(ytr, 100, seed))
            rec = Recognizer(None, make_learner(learner), fingerprint=feats["fingerprint"])
            for lo in range(0, len(idx), 10):  # the station's way: batches of 10; the recognizer calibrates itself
                rec.learn_features(Xtr[idx[lo:lo + 10]], list(ytr[idx[lo:lo + 10]]))
            online_t = rec.temperature
            half = rng.permutation(len(yte))
            cal, ev = half[: len(yte) // 2], half[len(yte) // 2:]
            rec.temperature = 1.0
            raw = evaluate_features(rec, Xte[ev], yte[ev])
            rec.temperature = online_t
            live = evaluate_features(rec, Xte[ev], yte[ev])
            fitted_t = rec.calibrate(Xte[cal], list(yte[cal]))
            fitted = evaluate_features(rec, Xte[ev], yte[ev])
            names, proba = rec.predict_proba(Xte[ev])
            correct = np.asarray(names, object)[proba.argmax(1)] == yte[ev]
            rows.append({"data": name, "size": size, "learner": learner, "seed": seed, "accuracy": raw["accuracy"],
                         "ece_raw": raw["ece"], "ece_online": live["ece"], "ece_fitted": fitted["ece"],
                         "t_online": online_t, "t_fitted": fitted_t,
                         "reliability_fitted": reliability(proba, correct)})
        sel = [r for r in rows if r["learner"] == learner]
        print(f"  {name} {size}px {learner}: ECE raw {np.mean([r['ece_raw'] for r in sel]):.3f}, online "
              f"{np.mean([r['ece_online'] for r in sel]):.3f}, fitted {np.mean([r['ece_fitted'] for r in sel]):.3f}",
              flush=True)
    return rows


# -- faithfulness --------------------------------------------------------------------------------------
def faithfulness(args, size: int = 224, per_class: int = 5, randoms: int = 3) -> dict:
    """Deletion curves in three orders: most relevant first (MoRF), least relevant first (LeRF), and
    random 32x32 blocks (the heat map's own grain: MobileNetV2's last feature map is 7x7 at 224 px).
    A faithful map: MoRF falls faster than both (smaller area under the curve)."""
    feats = common.dataset_features("imagenette", size, args.weights, args.data)
    (Xtr, ytr, _), (Xte, yte, test_ds) = feats["train"], feats["test"]
    rec = Recognizer.create(weights=args.weights, input_size=size, learner="slda", runtime="onnx")
    idx = common.per_class_indices(ytr, 100, 0)
    rec.learn_features(Xtr[idx], list(ytr[idx]))
    rec.calibrate(Xte[::2], list(yte[::2]))  # held-out half; the explained images are the other half
    mapper = HeatMapper(rec.backbone)
    rng = np.random.default_rng(0)
    odd = np.arange(1, len(yte), 2)
    chosen = np.concatenate([rng.choice(odd[yte[odd] == c], per_class, replace=False) for c in sorted(set(yte))])
    grid = size // 32
    curves: dict[str, list] = {"morf": [], "lerf": [], "random_blocks": [], "morf_captum": []}
    correlations = []
    for i in chosen:
        image = load_image(test_ds.paths[i])
        label = rec.predict([image])[0].label or rec.classes[0]
        c = rec.classes.index(label)
        heat = mapper.heat(image, lambda f, label=label: rec.learner.logit_gradient(f, label))
        x = rec.backbone.preprocessing.array(image)[None]
        reference = captum_grad_cam(rec, image, label)
        correlations.append(float(np.corrcoef(heat.ravel(), reference.ravel())[0, 1]))

        def score(batch, c=c):
            return rec.predict_proba(rec.backbone.embed_tensor(batch))[1][:, c]

        curves["morf"].append(deletion_curve(score, x, heat, steps=10))
        curves["morf_captum"].append(deletion_curve(score, x, reference, steps=10))
        curves["lerf"].append(deletion_curve(score, x, heat, 10, order=np.argsort(heat.ravel(), kind="stable")))
        blocks = []
        for _ in range(randoms):
            cells = rng.permutation(grid * grid).reshape(grid, grid).repeat(size // grid, 0).repeat(size // grid, 1)
            order = np.argsort((cells + rng.random(cells.shape) * 0.5).ravel(), kind="stable")
            blocks.append(deletion_curve(score, x, heat, 10, order=order))
        curves["random_blocks"].append(np.mean(blocks, axis=0))
    auc = {k: np.array([np.trapezoid(c, dx=0.1) for c in v]) for k, v in curves.items()}
    return {"images": len(chosen), **{f"auc_{k}": float(v.mean()) for k, v in auc.items()},
            "captum_correlation_median": float(np.median(correlations)),
            "captum_correlation_min": float(np.min(correlations)),
            "morf_below_lerf_share": float(np.mean(auc["morf"] < auc["lerf"])),
            "morf_below_random_share": float(np.mean(auc["morf"] < auc["random_blocks"])),
            **{f"curve_{k}": np.mean(v, axis=0).tolist() for k, v in curves.items()}}


def captum_grad_cam(rec: Recognizer, image, label: str) -> np.ndarray:
    """The reference: Captum's LayerGradCam of the linearised logit, back-propagated through PyTorch (what the
    station drew before its heat maps came from ONNX Runtime's feature map)."""
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    from edgelearn.backbones.backbone import last_feature_map

    bb = rec.backbone
    x = torch.from_numpy(bb.preprocessing.array(image)[None]).requires_grad_(True)
    g = torch.from_numpy(rec.learner.logit_gradient(bb.embed_tensor(x.detach().numpy()), label).astype(np.float32))
    layer = last_feature_map(bb.model, bb.preprocessing.input_size)
    with torch.enable_grad():  # autograd on: the backbone runs on PyTorch, not its ONNX graph
        gradcam = LayerGradCam(lambda inp: (bb.embed_tensor(inp) * g).sum(dim=1), layer)
        cam = gradcam.attribute(x, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    cam = cam[0, 0].clamp_min(0).numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def sample_images(args, per_class: int, split: str, seed: int) -> dict[str, list[bytes]]:
    from edgelearn.data import FolderDataset

    ds = FolderDataset.scan(args.data / "imagenette", split).sample_per_class(per_class, seed)
    out: dict[str, list[bytes]] = {}
    for path, label in zip(ds.paths, ds.labels, strict=True):
        out.setdefault(label, []).append(Path(path).read_bytes())
    return out


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--requests", type=int, default=60, help="frames per round and size (split among clients)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of raw and served measurements")
    parser.add_argument("--only", choices=("http", "costs", "calibration", "faithfulness"),
                        help="measure only this part (no report written; faithfulness: results/heatmaps.json)")
    parser.set_defaults(seeds=5)
    args = parser.parse_args()
    teach = sample_images(args, 10, "train", 0)
    queries = [d for images in sample_images(args, 6, "test", 1).values() for d in images]
    print("serving", flush=True)
    if args.only in (None, "http"):
        http = served(args, teach, queries)
    if args.only in (None, "costs"):
        print("explanation costs", flush=True)
        costs = explanation_costs(args, sample_images(args, 12, "train", 2), queries)
        print(costs, flush=True)
    if args.only in (None, "calibration"):
        print("calibration", flush=True)
        calib = [r for name in ("imagenette", "neu_cls") for size in SIZES for r in calibration(args, name, size)]
    if args.only in (None, "faithfulness"):
        print("faithfulness", flush=True)
        faith = faithfulness(args)
        print({k: v for k, v in faith.items() if not k.startswith("curve")}, flush=True)
        if args.only:
            (common.RESULTS / "heatmaps.json").write_text(json.dumps({"environment": common.environment(), **faith},
                                                                     indent=1))
    if args.only:
        return
    report(args, http, costs, calib, faith)


def report(args, http, costs, calib, faith) -> None:
    def find(runtime, size, clients):
        return next(r for r in http if r["runtime"] == runtime and r["size"] == size and r["clients"] == clients)

    summary = {}
    for runtime, size in [(r, s) for r in RUNTIMES for s in SIZES]:
        raw = find(runtime, size, 0)["raw_frames_per_s"]
        summary[f"raw_backbone_fps_{runtime}_{size}"] = raw
        summary[f"raw_backbone_fps_1_thread_{runtime}_{size}"] = find(runtime, size, 0)["raw_frames_per_s_1_thread"]
        for clients in CLIENTS:
            r = find(runtime, size, clients)
            summary[f"served_fps_{runtime}_{size}_{clients}c"] = r["frames_per_s"]
            summary[f"p50_ms_{runtime}_{size}_{clients}c"] = r["p50_ms"]
            summary[f"p99_ms_{runtime}_{size}_{clients}c"] = r["p99_ms"]
            summary[f"served_over_raw_{runtime}_{size}_{clients}c"] = r["frames_per_s"] / raw
    summary.update({k: v for k, v in costs.items() if k != "thumbnails"})
    for key in ("ece_raw", "ece_online", "ece_fitted", "accuracy"):
        for learner in LEARNERS:
            sel = [r[key] for r in calib if r["learner"] == learner and r["data"] == "imagenette" and r["size"] == 224]
            summary[f"{key}_{learner}_imagenette_224"] = float(np.mean(sel))
    summary.update({f"deletion_{k}": faith[k] for k in ("auc_morf", "auc_lerf", "auc_random_blocks",
                                                        "morf_below_lerf_share", "morf_below_random_share")})

    lines = ["# Station benchmark", "", "`python benchmarks/station.py` "
             f"(requests {args.requests}, seeds {args.seeds}; 2-core x86 CPU, no GPU; MobileNetV2 + SLDA,",
             "10 imagenette classes taught through the API with 10 images each; predictions with top-5 and",
             "representatives, no heat map).", "", "## Served through HTTP (real uvicorn on loopback)", "",
             "| runtime | size | clients | frames/s | p50 ms | p99 ms | raw backbone img/s (batch 1) | served / raw |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for runtime, size in [(r, s) for r in RUNTIMES for s in SIZES]:
        raw = find(runtime, size, 0)["raw_frames_per_s"]
        for clients in CLIENTS:
            r = find(runtime, size, clients)
            lines.append(f"| {runtime} | {size} | {clients} | {r['frames_per_s']:.1f} | {r['p50_ms']:.0f} | "
                         f"{r['p99_ms']:.0f} | {raw:.1f} | {r['frames_per_s'] / raw:.2f} |")
    lines += ["", "Raw backbone on one thread (a rough stand-in for one edge core; no Raspberry Pi was measured): "
              + ", ".join(f"{r} {s} px {find(r, s, 0)['raw_frames_per_s_1_thread']:.1f} img/s"
                          for r in RUNTIMES for s in SIZES) + ".",
              "", "## Explanation costs (224 px, in the station, per image)", "",
              f"- top-5 + representatives, feature matching: {costs['topk_representatives_ms_feature']:.2f} ms",
              f"- top-5 + representatives, phash matching: {costs['topk_representatives_ms_phash']:.2f} ms "
              f"({costs['thumbnails']} thumbnails kept)",
              f"- Grad-CAM heat map (backward pass through MobileNetV2 + PNG overlay): {costs['heatmap_ms']:.0f} ms",
              "", "## Calibration (expected calibration error, 15 bins; lower is better)", "",
              "| data | size | learner | accuracy | ECE T=1 | ECE online T | ECE fitted T | T online | T fitted |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("imagenette", "neu_cls"):
        for size in SIZES:
            for learner in LEARNERS:
                sel = [r for r in calib if r["data"] == name and r["size"] == size and r["learner"] == learner]
                m = {k: np.mean([r[k] or np.nan for r in sel]) for k in
                     ("accuracy", "ece_raw", "ece_online", "ece_fitted", "t_online", "t_fitted")}
                lines.append(f"| {name} | {size} | {learner} | {m['accuracy']:.1%} | {m['ece_raw']:.3f} | "
                             f"{m['ece_online']:.3f} | {m['ece_fitted']:.3f} | {m['t_online']:.3g} | "
                             f"{m['t_fitted']:.3g} |")
    lines += ["", f"Online T: the station's prequential fit on the training stream itself (each batch of 10 scored "
              f"before it is learned). Fitted T: fitted on a random half of the test split, ECE on the other half. "
              f"{args.seeds} seeds, 100 training images per class.", "",
              "## Heat-map faithfulness (deletion, 224 px, SLDA, calibrated)", "",
              f"{faith['images']} held-out imagenette images; pixels blurred (Gaussian) in order of Grad-CAM heat, "
              f"most relevant first (MoRF), least relevant first (LeRF), or random 32x32 blocks; area under the "
              f"predicted class's probability curve over 0-100 % blurred (lower = its evidence went sooner):", "",
              "| order | AUC |", "|---|---:|",
              f"| MoRF (Grad-CAM's hottest first) | {faith['auc_morf']:.3f} |",
              f"| random blocks | {faith['auc_random_blocks']:.3f} |",
              f"| LeRF (Grad-CAM's coldest first) | {faith['auc_lerf']:.3f} |", "",
              f"MoRF below LeRF on {faith['morf_below_lerf_share']:.0%} of the images, below random blocks on "
              f"{faith['morf_below_random_share']:.0%}.", "",
              "![deletion curves](station_deletion.png)", ""]
    config = {"requests": args.requests, "seeds": args.seeds, "sizes": SIZES, "clients": CLIENTS, "runtimes": RUNTIMES,
              "weights": args.weights, "learner_served": "slda"}
    common.write_results("station", summary, config, {"http": http, "costs": costs, "calibration": calib,
                                                      "faithfulness": faith}, "\n".join(lines))
    plot(faith)
    print("\n".join(lines))


def plot(faith) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.linspace(0, 1, len(faith["curve_morf"]))
    for key, style, name in (("morf", "o-", "most relevant first"), ("random_blocks", "s--", "random blocks"),
                             ("lerf", "^:", "least relevant first")):
        ax.plot(x, faith[f"curve_{key}"], style, label=name)
    ax.set_xlabel("fraction of pixels blurred")
    ax.set_ylabel("probability of the predicted class")
    ax.set_title("deletion curves (224 px, SLDA)")
    common.save_figure(fig, ax, "station_deletion.png")


if __name__ == "__main__":
    main()
