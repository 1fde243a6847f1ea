import numpy as np
import pytest
from PIL import Image

from edgelearn.backbones import build_backbone
from edgelearn.errors import EdgelearnError, IncompatibleError, ParameterError
from edgelearn.recognizer import Recognizer
from edgelearn.runtime.quantize import quantize
from tests.unit.test_station import colour_image


def textures(n, seed=0, size=40):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("precision, min_cosine", [("fp16", 0.999), ("int8", 0.95)])
def test_reduced_precisions_stay_close_to_fp32_and_enter_the_fingerprint(precision, min_cosine):
    reference = build_backbone("tiny", weights="random", input_size=32)
    calibration = textures(24, seed=1) if precision == "int8" else None
    variant = build_backbone("tiny", weights="random", input_size=32, runtime="onnx", precision=precision,
                             calibration=calibration)
    images = textures(8, seed=2)
    a, b = reference.embed(images), variant.embed(images)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > min_cosine
    assert variant.fingerprint["precision"].startswith(precision)
    assert variant.onnx_path.stat().st_size < build_backbone("tiny", weights="random", input_size=32,
                                                             runtime="onnx").onnx_path.stat().st_size


def test_int8_calibration_sets_are_checked(tmp_path):
    with pytest.raises(EdgelearnError, match="needs a calibration set"):
        build_backbone("tiny", weights="random", input_size=32, runtime="onnx", precision="int8", calibration=[])
    fp32 = build_backbone("tiny", weights="random", input_size=32, runtime="onnx").onnx_path
    with pytest.raises(EdgelearnError, match="must be \\(n, 3, s, s\\)"):
        quantize(fp32, tmp_path / "q.onnx", "int8", [np.zeros((4, 32, 32), np.float32)])
    with pytest.raises(ValueError, match="precision must be"):
        quantize(fp32, tmp_path / "q.onnx", "int4")
    with pytest.raises(ParameterError, match="add --runtime onnx"):
        build_backbone("tiny", weights="random", precision="int8")


def test_knowledge_learned_at_one_precision_is_refused_at_another_unless_allowed():
    fp32 = Recognizer.create("tiny", learner="ncm", weights="random", input_size=32)
    fp32.learn([colour_image("red"), colour_image("blue")], ["red", "blue"])
    int8 = build_backbone("tiny", weights="random", input_size=32, runtime="onnx", precision="int8",
                          calibration=textures(16))
    with pytest.raises(IncompatibleError, match="precision"):
        Recognizer.from_bytes(fp32.to_bytes(), backbone=int8)
    forced = Recognizer.from_bytes(fp32.to_bytes(), backbone=int8, allow_other_precision=True)
    assert forced.predict([colour_image("red", 5)])[0].label == "red"


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_every_export_runs_through_the_same_runner_api(tmp_path, suffix):
    import torch

    from edgelearn.runtime import load_runner
    from edgelearn.runtime.onnx import export_onnx
    from edgelearn.runtime.program import export_program

    model = build_backbone("tiny", weights="random", input_size=32).model
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x).flatten(1)
    path = tmp_path / f"m{suffix}"
    (export_onnx if suffix == ".onnx" else export_program)(model, 32, path)
    runner = load_runner(path)
    (first, *rest) = runner.run(x)
    assert rest == [] and torch.allclose(runner(x), expected, atol=1e-5) and first.shape[0] == 3
    with pytest.raises(EdgelearnError, match="export is a"):
        load_runner(tmp_path / "m.bin")
