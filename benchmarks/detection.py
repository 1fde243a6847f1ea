"""A new object class without forgetting the old ones: paper 002's Table 4 on NEU-DET, on this CPU.

    python benchmarks/detection.py             # ~40 min on 2 cores

NEU-DET (6 steel-defect classes, 1,440 training / 360 test pictures of 200 x 200, Pascal VOC).
One class (--new-class, default pitted_surface, like the paper's Mango) is held out as the "new" one; the
other five are the "old" classes. SSDlite on the frozen ImageNet MobileNetV2 at 320 x 320 (paper
002's transfer learning: the trunk is frozen, the neck and head train). The trunk's maps of every
training picture are computed once (--views: the picture and its mirror) and shared by all runs.
Four settings, as the paper's columns:
- old only: trained on the old classes' pictures (--epochs);
- joint: trained on old + new pictures (--epochs);
- new only: the old-only detector, its head grown by the new class, fine-tuned on the new class's
  pictures alone (--new-epochs) - catastrophic forgetting;
- distillation: the same, plus the old detector's scores (MSE, eq. 3.2) and boxes (smooth L1,
  eq. 3.3) distilled, and --per-class random exemplar pictures of each old class;
- and, as a fifth, distillation without exemplars.
Best epoch by validation loss (10 % held out). AP@0.5 per class and mAP@0.5 on the 360 test pictures
(torchmetrics / pycocotools). Frames/s at 320 x 320, batch 1, PyTorch and ONNX Runtime (network
alone, and a picture end to end with decoding). Time to add a class: the trunk's pass over the new
pictures + the distillation run. Writes benchmarks/results/detection.{json,md}.
"""

import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.detection import VOCDataset, build_detector, load_detector  # noqa: E402
from edgelearn.detection.evaluate import evaluate  # noqa: E402
from edgelearn.detection.infer import DetectorRunner, export_detector, frame_time  # noqa: E402
from edgelearn.detection.train import train_detector, trunk_maps  # noqa: E402


def split_classes(train: Path, work: Path, new_class: str) -> tuple[Path, Path]:
    """VOC folders of links: old/ (pictures without the new class) and new/ (pictures with it)."""
    shutil.rmtree(work, ignore_errors=True)
    ds = VOCDataset(train)
    for a in ds.annotations:
        part = work / ("new" if new_class in a.names else "old")
        for sub, source in (("images", a.image), ("annotations", train / "annotations" / f"{a.image.stem}.xml")):
            (part / sub).mkdir(parents=True, exist_ok=True)
            (part / sub / source.name).symlink_to(source.resolve())
    return work / "old", work / "new"


def run(name: str, data: Path, out: Path, cache, test_maps, args, **options) -> dict:
    print(f"{name}: training on {data.name}", flush=True)
    started = time.perf_counter()
    result = train_detector(data, out, arch=args.arch, weights=args.weights, maps=cache, batch_size=args.batch_size,
                            lr=args.lr, views=args.views, log=lambda line: print("  " + line, flush=True), **options)
    seconds = time.perf_counter() - started
    scores = evaluate(load_detector(out), test_maps)
    print(f"  {name}: mAP@0.5 {scores['map_50']:.2%} {scores['ap_50']} ({seconds:.0f} s)", flush=True)
    return {"scores": scores, "seconds": seconds, "best_epoch": result["best_epoch"], "images": result["images"],
            "epochs": len(result["history"])}


def frames_per_second(model: Path, work: Path, picture: Path) -> dict:
    onnx = export_detector(model, work / "detector.onnx")
    image = Image.open(picture)
    out = {"onnx_agreement": onnx["same_detections"], "onnx_max_abs_difference": onnx["max_abs_difference"],
           "network_fps": {"torch": 1000 / onnx["torch_ms_per_image"], "onnx": 1000 / onnx["ms_per_image"]}}
    runners = {"torch": DetectorRunner(model), "onnx": DetectorRunner(work / "detector.onnx")}
    out["end_to_end_fps"] = {name: 1000 / frame_time(lambda r=runner: r.detect([image]))
                             for name, runner in runners.items()}
    return out


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", default="neu_det")
    parser.add_argument("--new-class", default="pitted_surface")
    parser.add_argument("--arch", default="ssdlite", choices=["ssdlite", "retinanet"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--new-epochs", type=int, default=20)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 new, 3e-4 continuing (edgelearn's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgelearn-detection"))
    args = parser.parse_args()
    data = args.data / args.dataset
    old_data, new_data = split_classes(data / "train", args.work / "split", args.new_class)
    full, test = VOCDataset(data / "train"), VOCDataset(data / "test")
    trunk = build_detector(full.classes, arch=args.arch, weights=args.weights)
    started = time.perf_counter()
    cache = trunk_maps(trunk, full, views=args.views, progress=True)
    trunk_ms = 1000 * (time.perf_counter() - started) / (len(full) * args.views)
    test_maps = trunk_maps(trunk, test, progress=True)
    print(f"trunk maps: {trunk_ms:.0f} ms per picture and view", flush=True)

    old_model = args.work / "old.safetensors"
    runs = {"old only": run("old only", old_data, old_model, cache, test_maps, args, epochs=args.epochs),
            "joint": run("joint", data / "train", args.work / "joint.safetensors", cache, test_maps, args,
                         epochs=args.epochs)}
    grow = {"start_from": old_model, "epochs": args.new_epochs}
    runs["new only"] = run("new only", new_data, args.work / "finetune.safetensors", cache, test_maps, args, **grow)
    runs["distillation + exemplars"] = run("distillation + exemplars", new_data, args.work / "distill.safetensors",
                                           cache, test_maps, args, distill=True, exemplars=old_data,
                                           per_class=args.per_class, **grow)
    runs["distillation"] = run("distillation", new_data, args.work / "distill-only.safetensors", cache, test_maps,
                               args, distill=True, **grow)
    new_pictures = len(VOCDataset(new_data))
    add_seconds = runs["distillation + exemplars"]["seconds"] + new_pictures * args.views * trunk_ms / 1000
    speed = frames_per_second(args.work / "joint.safetensors", args.work, test.annotations[0].image)

    old_classes = [c for c in full.classes if c != args.new_class]
    summary = {"runs": {}, "time_to_add_class_s": add_seconds, "trunk_ms_per_picture": trunk_ms, **speed}
    for name, r in runs.items():
        ap = r["scores"]["ap_50"]
        summary["runs"][name] = {"old_map_50": float(np.mean([ap[c] for c in old_classes])),
                                 "new_ap_50": ap.get(args.new_class), "map_50": r["scores"]["map_50"],
                                 "coco_map": r["scores"]["map"]}
    s, joint = summary["runs"], summary["runs"]["joint"]
    summary["targets"] = {
        "distillation old mAP within 2 points of joint": joint["old_map_50"] - s["distillation + exemplars"][
            "old_map_50"] <= 0.02,
        "new-only loses >= 30 % of joint's old mAP": s["new only"]["old_map_50"] <= 0.7 * joint["old_map_50"],
        "new class AP within 5 points of joint": joint["new_ap_50"] - s["distillation + exemplars"]["new_ap_50"]
        <= 0.05,
        ">= 10 frames/s at 320 (ONNX Runtime, end to end)": speed["end_to_end_fps"]["onnx"] >= 10}
    markdown = _markdown(args, runs, summary, full.classes, old_classes)
    path = common.write_results("detection", summary, {k: str(v) for k, v in vars(args).items()}, runs, markdown)
    print(markdown)
    print(f"wrote {path}")


def _markdown(args, runs: dict, summary: dict, classes: list[str], old_classes: list[str]) -> str:
    names = list(runs)
    lines = [f"# A new class without forgetting: NEU-DET, new class {args.new_class} ({args.arch}, 320 px, frozen "
             f"trunk, {args.views} cached views, {args.epochs} epochs old/joint, {args.new_epochs} epochs new, "
             f"{args.per_class} exemplars per old class, lr {args.lr or '1e-3 new / 3e-4 continuing'})", "",
             "| AP@0.5 (%) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c in classes:
        lines.append(f"| {c}{' (new)' if c == args.new_class else ''} | " + " | ".join(
            _pct(runs[n]["scores"]["ap_50"].get(c)) for n in names) + " |")
    for key, label in (("old_map_50", "old classes mAP"), ("map_50", "mAP@0.5"), ("coco_map", "mAP@[.5:.95]")):
        lines.append(f"| **{label}** | " + " | ".join(_pct(summary["runs"][n][key]) for n in names) + " |")
    lines.append("| training s | " + " | ".join(f"{runs[n]['seconds']:.0f}" for n in names) + " |")
    fps, e2e = summary["network_fps"], summary["end_to_end_fps"]
    lines += ["", f"Frames/s at 320 x 320, batch 1: network {fps['torch']:.1f} (PyTorch) / {fps['onnx']:.1f} "
              f"(ONNX Runtime); a picture end to end (resize, network, decoding, NMS) {e2e['torch']:.1f} / "
              f"{e2e['onnx']:.1f}. ONNX agrees with PyTorch on {summary['onnx_agreement']:.0%} of the check "
              f"pictures' detections (max |Δ| {summary['onnx_max_abs_difference']:.2g}).",
              f"Time to add a class: {summary['time_to_add_class_s']:.0f} s (trunk maps "
              f"{summary['trunk_ms_per_picture']:.0f} ms per picture and view + distillation run).", "",
              "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in summary["targets"].items())]
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


if __name__ == "__main__":
    main()
