"""Data: frames from videos, representative images per class, and compressed classifiers for export."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgelearn.cli.options import Dedupe, Json, Precision, Similarity, Weights, default_weights
from edgelearn.cli.output import emit
from edgelearn.data import FolderDataset
from edgelearn.recognizer import Recognizer


def representatives(
    dataset: Annotated[Path, typer.Argument(help="Folder data set: <class>/<sub...>/*.jpg.")],
    per_class: Annotated[int, typer.Option(min=1, help="Representatives per class.")] = 5,
    method: Annotated[Similarity, typer.Option(help="How images are compared: image hashes, colour histograms, "
                                                    "SSIM, MSE, or the backbone's features.")] = Similarity.phash,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Copy them into OUTPUT/<class>/.")] = None,
    max_candidates: Annotated[int, typer.Option(min=1, help="Compare at most this many images per class "
                                                             "(seeded draw).")]
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
        rec = Recognizer.create(learner="ncm", weights=default_weights(weights))
        embed = lambda image: rec.embed([image])[0]  # noqa: E731
    similarity = get_similarity(method.value, embed)
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


def frames(
    videos: Annotated[Path, typer.Argument(help="Folder of clips sorted by concept: <concept>/<clip>.mp4.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Image data set to write.")],
    every: Annotated[int, typer.Option(min=1, help="Keep every n-th frame.")] = 10,
    dedupe: Annotated[Dedupe, typer.Option(help="phash (drop near-duplicate frames) or none.")] = Dedupe.phash,
    max_distance: Annotated[int, typer.Option(min=0, help="phash bits within which frames count as duplicates.")] = 4,
    as_json: Json = False,
):
    """Turn short videos into a labelled image data set (one folder per concept)."""
    from edgelearn.data.frames import extract_dataset

    written = extract_dataset(videos, output, every=every, max_distance=max_distance if dedupe == "phash" else None)
    table = Table("concept", "frames")
    for c, n in written.items():
        table.add_row(c, str(n))
    emit({"output": str(output), "frames": written, "total": sum(written.values())}, as_json, table)


def compress(
    model: Annotated[Path, typer.Argument(help="A classifier from edgelearn train or distill (.pt + .json).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.onnx (ONNX Runtime), OUT.pt2 (torch.export) or "
                                                                "OUT.tflite (LiteRT); + .json sidecar.")]
    = Path("model.onnx"),
    precision: Annotated[Precision, typer.Option(help="fp32, fp16, int8-dynamic or int8 (static, calibrated).")]
    = Precision.INT8,
    calibration: Annotated[Path | None, typer.Option(help="Folder data set: its train/ split calibrates int8, "
                                                          "its test/ split checks the export.")] = None,
    calibration_per_class: Annotated[int, typer.Option(min=1, help="Calibration images per class.")] = 10,
    as_json: Json = False,
):
    """Export a classifier, head included, to ONNX at a precision (or torch.export) and check it against PyTorch
    (top-1 agreement, largest logit difference, size, ms per image); `inspect OUTPUT` runs it."""
    from edgelearn.inspection.export import compress_classifier

    result = compress_classifier(model, output, precision=precision.value, calibration=calibration,
                                 calibration_per_class=calibration_per_class)
    table = Table("precision", "top-1 agreement", "max |Δ logit|", "MiB", "ms/image", "PyTorch ms/image")
    table.add_row(precision.value, f"{result['top1_agreement']:.2%}", f"{result['max_abs_logit_difference']:.3g}",
                  f"{result['bytes'] / 2**20:.3f}", f"{result['ms_per_image']:.2f}",
                  f"{result['torch_ms_per_image']:.2f}")
    table.caption = f"wrote {output}; checked on {result['checked_images']} images' patches"
    emit(result, as_json, table)


