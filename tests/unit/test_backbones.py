import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgelearn.backbones import build_backbone, list_backbones, register_backbone
from edgelearn.backbones.backbone import fuse_batch_norms
from edgelearn.backbones.padding import use_tf_same_padding
from edgelearn.errors import EdgelearnError, WeightsError


def test_tiny_backbone_embeds_batches_deterministically():
    bb = build_backbone("tiny", weights="random")
    images = [Image.new("RGB", (50, 40), c) for c in ("red", "blue", "green")]
    features = bb.embed(images, batch_size=2)
    assert features.shape == (3, 32) and features.dtype == np.float32
    # batched and one-by-one convolutions may take different kernels: equal to float32 rounding, not bit for bit
    again = build_backbone("tiny", weights="random").embed(images, batch_size=1)
    np.testing.assert_allclose(features, again, rtol=1e-4, atol=1e-5 * float(np.abs(features).max()))
    assert not np.allclose(features[0], features[1])


def test_fingerprint_records_weights_and_preprocessing():
    a = build_backbone("tiny", weights="random", seed=0)
    b = build_backbone("tiny", weights="random", seed=1)
    c = build_backbone("tiny", weights="random", input_size=64)
    assert a.fingerprint["weights"] == "random:seed=0" and a.fingerprint["feature_dim"] == 32
    assert len({a.fingerprint_id, b.fingerprint_id, c.fingerprint_id}) == 3


def test_torchvision_names_are_available_and_heads_removed():
    assert {"mobilenet_v2", "resnet18", "tiny"} <= set(list_backbones())
    bb = build_backbone("mobilenet_v3_small", weights="random", input_size=64)
    assert bb.feature_dim == 1024  # the pre-logit layer, not 1000 class scores
    assert bb.embed([Image.new("RGB", (64, 64))]).shape == (1, 1024)


def test_local_weights_file_with_sidecar(tmp_path):
    source = build_backbone("tiny", weights="random", seed=3)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = build_backbone("tiny", weights=path)
    image = [Image.new("RGB", (32, 32), "orange")]
    np.testing.assert_allclose(loaded.embed(image), source.embed(image), rtol=1e-5)
    assert len(loaded.fingerprint["weights"]) == 64  # sha256 of the file

    (tmp_path / "tiny.json").write_text(json.dumps({"architecture": "x.resnet18"}))
    with pytest.raises(WeightsError, match="resnet18"):
        build_backbone("tiny", weights=path)
    (tmp_path / "tiny.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="sha256"):
        build_backbone("tiny", weights=path)
    (tmp_path / "tiny.json").write_text(json.dumps({"padding": "tf_same", "input_size": 32, "resize_size": 32}))
    same = build_backbone("tiny", weights=path)
    assert same.padding == "tf_same" and same.preprocessing.resize_size == 32
    assert all(m.padding == (0, 0) for m in same.model.modules() if isinstance(m, torch.nn.Conv2d))


def test_weights_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("tiny", weights=tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        build_backbone("tiny", weights=tmp_path / "bad.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        build_backbone("tiny", weights=tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="unknown backbone"):
        build_backbone("no_such_net", weights="random")

    import torchvision

    def offline(name):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(torchvision.models, "get_model_weights", offline)
    with pytest.raises(WeightsError, match="EDGELEARN_WEIGHTS"):
        build_backbone("resnet18", weights="download")


def test_environment_variable_names_the_weights(tmp_path, monkeypatch):
    torch.save(build_backbone("tiny", weights="random", seed=5).model.state_dict(), tmp_path / "w.pt")
    monkeypatch.setenv("EDGELEARN_WEIGHTS", str(tmp_path / "w.pt"))
    assert build_backbone("tiny").weights.file == tmp_path / "w.pt"


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny")(lambda: None)


def test_tf_same_padding_pads_after_on_even_sizes():
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    torch.nn.init.ones_(conv.weight)
    model = use_tf_same_padding(torch.nn.Sequential(torch.nn.Identity(), conv), mean=[0.0], std=[1.0],
                                input_pad_pixel=0.0)
    x = torch.ones(1, 1, 4, 4)
    y = model(x)
    assert y.shape == (1, 1, 2, 2)
    # TF 'SAME': window 0 covers rows/cols 0..2 fully inside (9 ones); the last window pads after
    assert y[0, 0, 0, 0].item() == 9 and y[0, 0, 1, 1].item() == 4


def test_fusing_batch_norms_keeps_the_function_and_the_conv_hooks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1, bias=False), torch.nn.BatchNorm2d(4)))
    for bn in (model[1], model[3][1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    calls = []
    model[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    model.eval()
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        expected = model(x)
        fuse_batch_norms(model)
        got = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2  # the hook (TF padding lives in such hooks) still runs


def test_onnx_runtime_gives_the_same_features_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELEARN_CACHE", str(tmp_path))
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)) for i in range(3)]
    torch_bb = build_backbone("tiny", weights="random", input_size=32)
    onnx_bb = build_backbone("tiny", weights="random", input_size=32, runtime="onnx")
    assert onnx_bb.runtime == "onnx" and onnx_bb.fingerprint == torch_bb.fingerprint  # knowledge is shared
    np.testing.assert_allclose(onnx_bb.embed(images), torch_bb.embed(images), atol=1e-5)
    (exported,) = (tmp_path / "onnx").iterdir()
    stamp = exported.stat().st_mtime_ns
    build_backbone("tiny", weights="random", input_size=32, runtime="onnx")
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    with torch.enable_grad():  # heat maps need autograd: the PyTorch model serves them
        x = onnx_bb.transform(images[0]).unsqueeze(0).requires_grad_(True)
        onnx_bb.embed_tensor(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="runtime must be"):
        build_backbone("tiny", weights="random", runtime="tflite")


def test_a_damaged_onnx_file_is_a_clear_error_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    from edgelearn.runtime.onnx import OnnxRunner

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(EdgelearnError, match="ONNX Runtime can run"):
        OnnxRunner(bad)
    monkeypatch.setenv("EDGELEARN_CACHE", str(tmp_path / "cache"))
    first = build_backbone("tiny", weights="random", input_size=32, runtime="onnx")
    first.onnx_path.write_bytes(b"truncated")  # e.g. a disk that filled up
    again = build_backbone("tiny", weights="random", input_size=32, runtime="onnx")
    image = Image.new("RGB", (32, 32), "red")
    np.testing.assert_allclose(again.embed([image]), first.embed([image]), atol=1e-5)


def test_without_weights_every_command_takes_the_shared_file_when_present(tmp_path, monkeypatch):
    import torchvision

    from edgelearn.backbones.weights import sha256_file
    from edgelearn.detection.models import build_detector

    shared = tmp_path / "shared" / "models" / "mobilenet_v2_imagenet.pt"
    shared.parent.mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), shared)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")  # the file lies at ../shared/models, as next to a checkout
    # learn/predict/evaluate (the recognizer), serve (the station) and detection all build through here
    backbone = build_backbone("mobilenet_v2", input_size=32)
    assert backbone.weights.file == shared and backbone.weights.sha256 == sha256_file(shared)
    assert build_detector(["part"], size=64).meta["weights"] == sha256_file(shared)
    assert build_backbone("tiny", input_size=32, weights="random").weights.kind == "random"  # given weights win
    monkeypatch.setenv("EDGELEARN_WEIGHTS", "random")
    assert build_backbone("mobilenet_v2", input_size=32).weights.kind == "random"  # then the environment


def test_every_input_path_preprocesses_alike():
    from edgelearn.backbones import Preprocessing
    from edgelearn.backbones.preprocessing import unit_square

    prep = Preprocessing(24, 28)
    patch = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    # distillation holds uint8 pixels and normalises them later: the same tensor as the inspector's
    torch.testing.assert_close(prep.normalise()(prep.pixels()(patch)), prep.patch_transform()(patch))
    # a detector's input is the same resize, left in [0, 1] (its trunk normalises)
    plain = Preprocessing(24, 24, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    torch.testing.assert_close(unit_square(24)(patch), plain.patch_transform()(patch))
    # the picture a heat map is drawn on is the part the network sees
    seen = prep.crop(Image.new("RGB", (40, 30), "red"))
    assert seen.size == (24, 24)


def test_the_onnx_graph_returns_the_feature_map_its_features_average(tmp_path, monkeypatch):
    """TF 'SAME' padding (pre-hooks) and an in-place ReLU6 last, as in the shared MobileNetV2: a forward hook
    during the export once changed that graph (features off by 0.11 on the real weights)."""
    from edgelearn.backbones.backbone import Backbone
    from edgelearn.backbones.preprocessing import Preprocessing
    from edgelearn.backbones.weights import Weights

    monkeypatch.setenv("EDGELEARN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU6(inplace=True),
                                torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU6(inplace=True),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with torch.no_grad():
        for conv in (model[0], model[2]):
            conv.weight.mul_(20)  # activations beyond 6: the clip matters
    use_tf_same_padding(model, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    bb = Backbone("relu6", model, Preprocessing(32, 32), Weights("random", "random:seed=0"), "tf_same")
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    on_torch, torch_map = bb.features_and_map(x)

    features, feature_map = bb.use_onnx().features_and_map(x)

    assert torch_map.min() >= 0 and torch_map.max() == pytest.approx(6) and np.mean(torch_map == 6) > 0.01
    np.testing.assert_allclose(features, on_torch, atol=1e-5)
    np.testing.assert_allclose(feature_map, torch_map, rtol=1e-5, atol=1e-5)  # values up to 6: float32 sums
    np.testing.assert_allclose(feature_map.mean(axis=(2, 3)), features, atol=1e-5)
