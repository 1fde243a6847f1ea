"""Module A's execution: the runtimes a backbone runs on, the precisions of its exports, and the
runners of exported classifiers (ONNX Runtime, ``torch.export`` programs, LiteRT).

Every runner has the same API: ``runner(batch)`` -> the first output, ``runner.run(batch)`` -> all
outputs, as tensors, without autograd. :func:`export_model` and :func:`load_runner` are the one place
an export's file type chooses its runtime.
"""

import os
import tempfile
from enum import StrEnum
from pathlib import Path

from edgelearn.errors import ModelFileError, ParameterError


class Runtime(StrEnum):
    """Where a backbone runs in process: eager PyTorch, or ONNX Runtime (the same features, faster on CPUs)."""

    TORCH = "torch"
    ONNX = "onnx"

    @classmethod
    def parse(cls, value: str) -> "Runtime":
        try:
            return cls(value)
        except ValueError:
            raise ParameterError(f"runtime must be one of {', '.join(cls)}, got {value!r}") from None


class Precision(StrEnum):
    """The precision of an ONNX export: fp32, fp16, int8 weights (dynamic) or int8 calibrated (static)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8_DYNAMIC = "int8-dynamic"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str) -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise ParameterError(f"precision must be one of {', '.join(cls)}, got {value!r}") from None


EXPORT_SUFFIXES = (".onnx", ".pt2", ".tflite")  # ONNX Runtime, torch.export, LiteRT


def export_model(model, input_size: int, path: str | os.PathLike, precision: str = "fp32", *,
                 calibration=None, batch: int = 1) -> Path:
    """Export ``model`` (an image batch -> outputs network) to ``path``: ``.onnx`` at ``precision``
    (``calibration``: int8's preprocessed ``(n, 3, s, s)`` batches), ``.pt2`` or ``.tflite`` (fp32;
    LiteRT's input has ``batch`` images)."""
    from edgelearn.runtime.litert import export_litert
    from edgelearn.runtime.onnx import export_onnx
    from edgelearn.runtime.program import export_program
    from edgelearn.runtime.quantize import quantize

    path, precision = Path(path), Precision.parse(precision)
    if path.suffix not in EXPORT_SUFFIXES:
        raise ParameterError(f"{path}: name the export .onnx (ONNX Runtime), .pt2 (torch.export) or .tflite (LiteRT)")
    if path.suffix != ".onnx" and precision is not Precision.FP32:
        raise ParameterError(f"a {path.suffix} export is fp32; lower precisions go through ONNX Runtime (.onnx)")
    if path.suffix == ".pt2":
        return export_program(model, input_size, path)
    if path.suffix == ".tflite":
        return export_litert(model, input_size, path, batch=batch)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, input_size, Path(tmp) / "fp32.onnx")
        return quantize(fp32, path, precision, calibration=calibration if precision is Precision.INT8 else None)


def load_runner(path: str | os.PathLike, threads: int | None = None):
    """The runner of an exported model, chosen by its file type."""
    path = Path(path)
    if path.suffix == ".onnx":
        from edgelearn.runtime.onnx import OnnxRunner

        return OnnxRunner(path, threads)
    if path.suffix == ".pt2":
        from edgelearn.runtime.program import ProgramRunner

        return ProgramRunner(path)
    if path.suffix == ".tflite":
        from edgelearn.runtime.litert import LiteRunner

        return LiteRunner(path, threads)
    raise ModelFileError(f"{path}: an export is a {', '.join(EXPORT_SUFFIXES)} file")


__all__ = ["EXPORT_SUFFIXES", "Precision", "Runtime", "export_model", "load_runner"]
