"""Compare the variants of module A on one data set: the layout of Rieder et al.'s figures 4-8 (top-1,
top-5, size, latency) for the features our learners use: each variant's features feed a fresh
streaming LDA learned on the training split and tested on the test split."""

import os
import time

import numpy as np

from edgelearn.backbones import build_backbone
from edgelearn.data import FolderDataset
from edgelearn.data.images import load_image
from edgelearn.errors import DatasetError
from edgelearn.evaluation.stream import evaluate_features
from edgelearn.learners import make_learner
from edgelearn.recognizer import Recognizer
from edgelearn.runtime import Precision, Runtime

VARIANTS = ((Runtime.TORCH, Precision.FP32), *((Runtime.ONNX, p) for p in Precision))


def compare_variants(dataset: str | os.PathLike, *, weights=None, input_size: int | None = None,
                     backbone: str = "mobilenet_v2", per_class: int | None = None, calibration_per_class: int = 10,
                     variants=VARIANTS, learner: str = "slda", seed: int = 0, timing_images: int = 32,
                     progress=print) -> list[dict]:
    """One row per (runtime, precision): accuracy of ``learner`` on the variant's features, model bytes,
    p50 latency at batch 1 and throughput at batch 32 (decoded images, preprocessing included)."""
    train, test = FolderDataset.splits(dataset)
    if test is None:
        raise DatasetError(f"{dataset}: needs train/ and test/ folders to compare variants")
    train = train.sample_per_class(per_class, seed)
    calibration = [load_image(p) for p in train.sample_per_class(calibration_per_class, seed + 1).paths]
    timing = [load_image(p) for p in test.paths[:timing_images]]
    rows = []
    for runtime, precision in variants:
        bb = build_backbone(backbone, weights=weights, input_size=input_size, runtime=runtime, precision=precision,
                            calibration=calibration if precision == Precision.INT8 else None)
        rec = Recognizer(bb, make_learner(learner))
        rec.learn_features(rec.embed_files(train.paths), train.labels)
        result = evaluate_features(rec, rec.embed_files(test.paths), test.labels)
        size = bb.onnx_path.stat().st_size if bb.onnx_path is not None else _torch_bytes(bb)
        rows.append({"runtime": runtime, "precision": precision, "accuracy": result["accuracy"],
                     "top5": result["top5"], "bytes": size, **_speed(bb, timing),
                     "path": str(bb.onnx_path) if bb.onnx_path is not None else None})
        progress(f"{runtime} {precision}: top-1 {result['accuracy']:.2%}, {size / 2**20:.2f} MiB, "
                 f"p50 {rows[-1]['p50_ms']:.1f} ms, {rows[-1]['batch32_per_s']:.0f} img/s at batch 32")
    return rows


def _torch_bytes(bb) -> int:
    return sum(t.numel() * t.element_size() for t in bb.model.state_dict().values())


def _speed(bb, images) -> dict:
    bb.embed(images[:2], batch_size=1)
    times = []
    for image in images:
        t = time.perf_counter()
        bb.embed([image], batch_size=1)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    bb.embed(images, batch_size=32)
    return {"p50_ms": float(np.median(times) * 1000), "batch1_per_s": float(len(times) / sum(times)),
            "batch32_per_s": float(len(images) / (time.perf_counter() - t))}
