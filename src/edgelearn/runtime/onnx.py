"""Module A on ONNX Runtime: the frozen backbone exported once (torch.export -> ONNX), then run by
ONNX Runtime's CPU kernels, about twice as fast at batch 1 as eager PyTorch on this CPU (measured
in benchmarks/station.py). Features match PyTorch's to ~1e-5, so knowledge is shared across runtimes.
"""

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgelearn.errors import EdgelearnError
from edgelearn.files import atomic_write_bytes


def export_onnx(model: nn.Module, input_size: int, path: str | os.PathLike) -> Path:
    """Export ``model`` (image batch -> features) to ONNX with a dynamic batch dimension, atomically."""
    path = Path(path)
    example = torch.zeros(2, 3, input_size, input_size)  # batch 2: a batch of 1 would be specialised
    model = model.to(memory_format=torch.contiguous_format)
    name = next(iter(_forward_args(model)), "input")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        try:
            torch.onnx.export(model, (example,), Path(tmp) / "m.onnx", input_names=["image"],
                              output_names=["features"], dynamic_shapes={name: {0: torch.export.Dim("batch")}},
                              dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many kinds; the user needs to know which model failed
            raise EdgelearnError(f"could not export the backbone to ONNX: {exc}") from exc
        finally:
            model.to(memory_format=torch.channels_last)
        atomic_write_bytes(path, (Path(tmp) / "m.onnx").read_bytes())
    return path


def add_feature_map_output(path: str | os.PathLike) -> Path:
    """Give an exported backbone graph a second output, ``feature_map``: the tensor its features are the spatial
    average of (the input of its last ReduceMean / GlobalAveragePool), for heat maps. Done on the graph, not by
    a hook during export: with a hook, torch.export dropped MobileNetV2's in-place ReLU6 (features off by 0.11)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    pool = next((n for n in reversed(model.graph.node) if n.op_type in ("ReduceMean", "GlobalAveragePool")), None)
    if pool is None:
        raise EdgelearnError(f"{path}: no average pooling at the end of the graph, so no feature map to explain")
    model.graph.node.append(onnx.helper.make_node("Identity", [pool.input[0]], ["feature_map"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("feature_map", onnx.TensorProto.FLOAT, None))
    atomic_write_bytes(path, model.SerializeToString())
    return path


def _forward_args(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]


class OnnxRunner:
    """Runs an exported model: ``(n, 3, s, s)`` tensor -> ``(n, d)`` tensor (:meth:`run`: every output), no autograd."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # no busy-waiting between runs: on a small CPU the HTTP stack and the learner need those cycles
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = False  # what a large batch takes returns (see BundleBackbone)
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EdgelearnError(f"{path}: not a model ONNX Runtime can run ({exc})") from exc
        self.input = self.session.get_inputs()[0].name
        self.first_output = self.session.get_outputs()[0].name

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All of the model's outputs (a detector has two: class scores and box offsets)."""
        x = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        return tuple(torch.from_numpy(out) for out in self.session.run(None, {self.input: x}))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """The first output only (a backbone's features; its feature map is not copied out)."""
        x = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([self.first_output], {self.input: x})[0]).reshape(len(batch), -1)
