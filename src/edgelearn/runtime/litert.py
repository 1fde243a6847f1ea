"""LiteRT (TensorFlow Lite) export and inference, for edge runtimes that take ``.tflite`` files
(Rieder et al.'s format), through Google's maintained converter ``litert-torch`` (optional extra:
``pip install 'edgelearn[litert]'``). fp32 only here; the lower precisions go through ONNX Runtime.
"""

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgelearn.errors import EdgelearnError
from edgelearn.files import atomic_write_bytes

MISSING = "LiteRT export needs the optional converter: pip install 'edgelearn[litert]'"


def export_litert(model: nn.Module, input_size: int, path: Path, batch: int = 1) -> Path:
    """Convert ``model`` to a ``.tflite`` file with a ``(batch, 3, s, s)`` input (LiteRT shapes are
    static; :class:`LiteRunner` resizes the input for other batch sizes)."""
    try:
        import litert_torch
    except ImportError as exc:
        raise EdgelearnError(MISSING) from exc
    example = torch.zeros(batch, 3, input_size, input_size)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # keeps --json clean
        try:
            litert_torch.convert(model.to(memory_format=torch.contiguous_format).eval(), (example,)).export(
                str(Path(tmp) / "m.tflite"))
        except Exception as exc:  # the converter raises many kinds
            raise EdgelearnError(f"could not convert the model to LiteRT: {exc}") from exc
        atomic_write_bytes(path, (Path(tmp) / "m.tflite").read_bytes())
    return path


class LiteRunner:
    """Runs a ``.tflite`` classifier: ``(n, 3, s, s)`` tensor -> ``(n, classes)`` tensor."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise EdgelearnError(MISSING) from exc
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
        except Exception as exc:
            raise EdgelearnError(f"{path}: not a model LiteRT can run ({exc})") from exc
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.interpreter.allocate_tensors()

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        if tuple(self.interpreter.get_input_details()[0]["shape"]) != x.shape:
            self.interpreter.resize_tensor_input(self.input, x.shape)
            self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return tuple(torch.from_numpy(self.interpreter.get_tensor(d["index"]).copy())
                     for d in self.interpreter.get_output_details())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)[0].reshape(len(batch), -1)
