"""Module A for devices: export-backbone writes a bundle that runs without PyTorch."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgelearn.cli.options import Backbone, InputSize, Json, Precision, Weights, default_weights
from edgelearn.cli.output import emit


def export_backbone(
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle to write: NAME.edgebundle.")],
    backbone: Backbone = "mobilenet_v2",
    weights: Weights = None,
    input_size: InputSize = None,
    precision: Annotated[Precision, typer.Option(help="fp32, fp16, int8-dynamic or int8 (static: needs "
                                                      "--calibration).")] = Precision.FP32,
    calibration: Annotated[Path | None, typer.Option(help="Folder data set whose train/ split (or whole folder) "
                                                          "calibrates int8.")] = None,
    calibration_per_class: Annotated[int, typer.Option(min=1, help="Calibration images per class.")] = 10,
    as_json: Json = False,
):
    """Export module A as one bundle file (ONNX graph + fingerprint, preprocessing, sha256) that a device runs
    without PyTorch: give it as --weights to learn, predict, evaluate and serve there. Knowledge learned with
    the bundle and with these weights is interchangeable (the same fingerprint at fp32)."""
    from edgelearn.backbones import build_backbone, export_bundle

    bb = build_backbone(backbone, weights=default_weights(weights, backbone), input_size=input_size)
    images = _calibration_images(calibration, calibration_per_class) if precision is Precision.INT8 else None
    path = export_bundle(bb, output, precision.value, images)
    result = {"output": str(path), "backbone": bb.name, "precision": bb.precision, "input_size":
              bb.preprocessing.input_size, "feature_dim": bb.feature_dim, "fingerprint_id": bb.fingerprint_id,
              "bytes": path.stat().st_size}
    table = Table("bundle", "backbone", "precision", "input", "features", "MiB")
    table.add_row(str(path), bb.name, bb.precision, f"{bb.preprocessing.input_size} px", str(bb.feature_dim),
                  f"{result['bytes'] / 2**20:.2f}")
    emit(result, as_json, table)


def _calibration_images(folder: Path | None, per_class: int) -> list:
    from edgelearn.data import FolderDataset
    from edgelearn.data.images import load_image
    from edgelearn.errors import ParameterError

    if folder is None:
        raise ParameterError("int8 calibrates on representative images: give --calibration FOLDER (or choose "
                             "int8-dynamic, which needs none)")
    train, _ = FolderDataset.splits(folder)
    return [load_image(p) for p in train.sample_per_class(per_class, 1).paths]
