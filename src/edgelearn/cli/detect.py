"""Object detection: train, evaluate and export detectors; detect objects in pictures and videos."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgelearn.cli.options import Arch, Json, Weights, default_weights
from edgelearn.cli.output import emit, err, log


def detector_train(
    dataset: Annotated[Path, typer.Argument(help="Pascal VOC folder: images/ + annotations/ (or JPEGImages/ + "
                                                 "Annotations/).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The detector (.safetensors; + .ckpt, .png).")]
    = Path("detector.safetensors"),
    arch: Annotated[Arch, typer.Option(help="ssdlite (MobileNet SSDlite) or retinanet (focal loss).")] = Arch.ssdlite,
    start_from: Annotated[Path | None, typer.Option("--from", help="Continue from this detector: an online "
                                                                   "session, or new classes added to it.")] = None,
    distill: Annotated[bool, typer.Option(help="With --from and new classes: keep the old classes' scores and "
                                               "boxes (knowledge distillation).")] = False,
    exemplars: Annotated[Path | None, typer.Option(help="With --from: the old VOC folder; --per-class random "
                                                        "images of each old class join the training.")] = None,
    per_class: Annotated[int, typer.Option(min=1, help="Exemplar images per old class.")] = 20,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 30,
    views: Annotated[int, typer.Option(min=1, help="Cached views per image: 1 the image, 2 + its mirror, more + SSD "
                                            "augmentations.")] = 2,
    size: Annotated[int, typer.Option(min=1, help="Square input size.")] = 320,
    lr: Annotated[float | None, typer.Option(help="Learning rate (AdamW; default 1e-3, with --from 3e-4).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 16,
    weights: Weights = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT.ckpt after an interruption.")] = False,
    as_json: Json = False,
):
    """Train a detector's neck and head on a frozen ImageNet MobileNetV2; the best epoch by validation
    loss is kept, with each class's score threshold (best F1 on the validation pictures) that `detect`
    uses by default. With --from, classes the detector does not know are added to it."""
    from edgelearn.detection.train import train_detector

    result = train_detector(dataset, output, arch=arch.value, size=size, weights=default_weights(weights),
                            start_from=start_from, distill=distill, exemplars=exemplars, per_class=per_class,
                            epochs=epochs, batch_size=batch_size, lr=lr, views=views, seed=seed, resume=resume,
                            progress=err.is_terminal, log=log)
    table = Table("epoch", "train loss", "val loss", "seconds")
    for h in result["history"]:
        table.add_row(str(h["epoch"]), f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{h['seconds']:.1f}")
    table.caption = (f"{', '.join(result['classes'])}; best epoch {result['best_epoch']} saved to {output}"
                     + (f"; new classes {', '.join(result['new_classes'])}" if result["new_classes"] else ""))
    emit(result, as_json, table)


def detector_evaluate(
    model: Annotated[Path, typer.Argument(help="A detector (.safetensors).")],
    dataset: Annotated[Path, typer.Argument(help="Pascal VOC folder to evaluate on.")],
    as_json: Json = False,
):
    """mAP@0.5, COCO's mAP@[.5:.95], each class's AP@0.5, and its precision and recall at the score
    threshold `detect` uses by default (chosen in training on the validation pictures: best F1)."""
    from edgelearn.detection import load_detector
    from edgelearn.detection.evaluate import evaluate as evaluate_detector

    result = evaluate_detector(load_detector(model), dataset, progress=err.is_terminal)
    table = Table("class", "AP@0.5", "threshold", "precision", "recall")
    for name, at in result["at_threshold"].items():
        ap = result["ap_50"].get(name)
        table.add_row(name, "-" if ap is None else f"{ap:.1%}", f"{at['threshold']:.2f}", f"{at['precision']:.1%}",
                      f"{at['recall']:.1%}")
    table.caption = f"{result['images']} images: mAP@0.5 {result['map_50']:.1%}, mAP@[.5:.95] {result['map']:.1%}"
    emit(result, as_json, table)


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


def detect(
    model: Annotated[Path, typer.Argument(help="A detector: .safetensors (PyTorch) or .onnx (ONNX Runtime).")],
    inputs: Annotated[list[Path], typer.Argument(help="Pictures, folders of pictures or videos.")],
    threshold: Annotated[float | None, typer.Option(min=0, max=1, help="Lowest score shown (default: each class's "
                                                                       "threshold chosen in training, else 0.5).")]
    = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Folder for the pictures (and videos) "
                                                                       "with boxes drawn.")] = None,
    every: Annotated[int, typer.Option(min=1, help="Videos: every n-th frame.")] = 1,
    as_json: Json = False,
):
    """Find objects: print each box (class, score, pixels) and, with -o, draw them."""
    from edgelearn.detection.infer import DetectorRunner, detect_paths

    results = detect_paths(DetectorRunner(model), inputs, threshold=threshold, output=output, every=every)
    table = Table("source", "class", "score", "box (x1, y1, x2, y2)")
    for r in results:
        source = r["source"] + (f" #{r['frame']}" if "frame" in r else "")
        for o in r["objects"] or [{"class": "-", "score": None, "box": []}]:
            table.add_row(source, o["class"], "" if o["score"] is None else f"{o['score']:.2f}",
                          ", ".join(f"{v:g}" for v in o["box"]))
    emit({"detections": results}, as_json, table)


