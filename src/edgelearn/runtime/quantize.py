"""Lower-precision variants of an exported ONNX model (Rieder et al., section 4: float16, int8, int8
with a representative data set), made with ONNX Runtime's own tools.

- ``fp16``: weights and activations in float16 (inputs and outputs stay float32);
- ``int8-dynamic``: int8 weights, activations quantised on the fly per batch;
- ``int8``: static QDQ quantisation, per-channel int8 weights, uint8 activations whose ranges come
  from a representative calibration set (the paper's "quantized dataset" variant).
"""

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgelearn.errors import EdgelearnError
from edgelearn.files import atomic_write_bytes
from edgelearn.runtime import Precision


def quantize(source: str | os.PathLike, target: str | os.PathLike, precision: str,
             calibration: Iterable[np.ndarray] | None = None) -> Path:
    """Write ``source`` (an fp32 ONNX model) at ``precision`` to ``target``, atomically.

    ``calibration``: ``(n, 3, s, s)`` float32 batches of preprocessed images (``int8`` only).
    """
    precision = Precision.parse(precision)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.onnx"
        if precision is Precision.FP32:
            out.write_bytes(Path(source).read_bytes())
        elif precision is Precision.FP16:
            _fp16(source, out)
        elif precision is Precision.INT8_DYNAMIC:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True)
        else:
            _int8_static(source, out, Path(tmp), calibration)
        atomic_write_bytes(target, out.read_bytes())
    return Path(target)


def _fp16(source, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(out))


def _int8_static(source, out: Path, tmp: Path, calibration) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [np.ascontiguousarray(b, np.float32) for b in (calibration or [])]
    if not batches or not sum(len(b) for b in batches):
        raise EdgelearnError("int8 needs a calibration set: representative images of the kind the model "
                             "will see (--calibration DATASET)")
    shapes = {b.shape[1:] for b in batches}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 3:
        raise EdgelearnError(f"calibration batches must be (n, 3, s, s) preprocessed images, got {sorted(shapes)}")
    import onnx

    name = onnx.load(str(source)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: b[i:i + 1]} for b in batches for i in range(len(b))])

        def get_next(self):
            return next(self.items, None)

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(source), str(prepared))  # shape inference + graph clean-up, as ORT advises
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
