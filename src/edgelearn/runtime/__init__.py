"""Module A's execution: the runtimes a backbone runs on, the precisions of its exports, and the
runners of exported classifiers (ONNX Runtime, ``torch.export`` programs, LiteRT).

Every runner has the same API: ``runner(batch)`` -> the first output, ``runner.run(batch)`` -> all
outputs, as tensors, without autograd. :func:`load_runner` is the one place an export's file type
chooses its runtime.
"""

import os
from enum import StrEnum
from pathlib import Path

from edgelearn.errors import ModelFileError


class Runtime(StrEnum):
    """Where a backbone runs in process: eager PyTorch, or ONNX Runtime (the same features, faster on CPUs)."""

    TORCH = "torch"
    ONNX = "onnx"

    @classmethod
    def parse(cls, value: str) -> "Runtime":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"runtime must be one of {', '.join(cls)}, got {value!r}") from None


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
            raise ValueError(f"precision must be one of {', '.join(cls)}, got {value!r}") from None


EXPORT_SUFFIXES = (".onnx", ".pt2", ".tflite")  # ONNX Runtime, torch.export, LiteRT


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


__all__ = ["EXPORT_SUFFIXES", "Precision", "Runtime", "load_runner"]
