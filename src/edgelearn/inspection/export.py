"""Export a trained classifier, head included (a fine-tuned teacher or a distilled student), to
ONNX at a chosen precision, to a ``torch.export`` program (``.pt2``, fp32) or to LiteRT
(``.tflite``, fp32, optional extra), and check it against PyTorch on real images.

The export gets a sidecar ``OUT.json`` (the source's, plus the precision and the source's sha256),
so ``edgelearn inspect OUT.onnx|OUT.pt2|OUT.tflite ...`` runs it by the same patch protocol.
"""

import json
import os

import numpy as np
import torch

from edgelearn.backbones.backbone import fuse_batch_norms
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.errors import ParameterError
from edgelearn.files import atomic_write_bytes
from edgelearn.inspection.inspector import Inspector, load_model
from edgelearn.runtime import Precision, export_model


def compress_classifier(model: str | os.PathLike, output: str | os.PathLike, *, precision: str = "int8",
                        calibration: str | os.PathLike | None = None, calibration_per_class: int = 10,
                        check_images: int = 60, seed: int = 0) -> dict:
    """Write ``model`` as ONNX at ``precision``; ``calibration`` (a folder data set, its train split)
    supplies the int8 activation ranges and the images (test split) on which the result is compared
    with PyTorch: top-1 agreement and the largest logit difference over their patches."""
    precision = Precision.parse(precision)
    if calibration is None:
        raise ParameterError("give --calibration DATASET: images to calibrate int8 ranges and to check the export on")
    source = load_model(model)
    reference = Inspector(source)
    train, test = FolderDataset.splits(calibration)
    calib = train.sample_per_class(calibration_per_class, seed)
    patches = _patch_batches(reference, [load_image(p) for p in calib.paths])
    output = export_model(fuse_batch_norms(source.model), source.preprocessing.input_size, output, precision,
                          calibration=patches, batch=source.grid.grid ** 2)
    meta = {**source.meta, "file": output.name, "export": {"precision": precision, "parameters": reference.parameters,
                                                           "source_sha256": source.meta.get("sha256")}}
    atomic_write_bytes(output.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    exported = Inspector.load(output)
    check = (test or train).sample_per_class(max(1, check_images // len(train.classes)), seed + 1)
    images = [load_image(p) for p in check.paths]
    ours, theirs = reference.patch_logits(images), exported.patch_logits(images)
    return {"output": str(output), "precision": precision, "bytes": output.stat().st_size,
            "top1_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
            "max_abs_logit_difference": float((ours - theirs).abs().max()), "checked_images": len(images),
            "ms_per_image": exported.ms_per_image(), "torch_ms_per_image": reference.ms_per_image()}


def _patch_batches(inspector, images, batch_size: int = 32) -> list[np.ndarray]:
    crops = [inspector.transform(c) for image in images for c in inspector.model.grid.crops(image)]
    return [torch.stack(crops[i:i + batch_size]).numpy() for i in range(0, len(crops), batch_size)]
