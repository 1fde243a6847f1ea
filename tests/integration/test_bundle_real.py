"""The real ImageNet MobileNetV2 as a bundle: the same fingerprint and features as on PyTorch."""

import numpy as np
import pytest
import torch

from edgelearn.backbones import BundleBackbone, build_backbone, export_bundle
from edgelearn.data import FolderDataset, load_image
from tests.conftest import SHARED

WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet.pt"
IMAGENETTE = SHARED / "data" / "imagenette"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs ../shared/models and ../shared/data")]


def test_the_real_backbone_and_its_bundle_give_the_same_features(tmp_path):
    torch_bb = build_backbone("mobilenet_v2", weights=WEIGHTS)
    path = export_bundle(build_backbone("mobilenet_v2", weights=WEIGHTS), tmp_path / "mobilenet_v2.edgebundle")
    bundle_bb = build_backbone("mobilenet_v2", weights=path)
    test = FolderDataset.scan(IMAGENETTE, "test")
    photos = [load_image(test.paths[i]) for i in np.linspace(0, len(test.paths) - 1, 4).astype(int)]
    same_input = torch.stack([torch_bb.transform(p) for p in photos]).numpy()

    expected = torch_bb.embed(photos)

    assert isinstance(bundle_bb, BundleBackbone) and bundle_bb.fingerprint == torch_bb.fingerprint
    # measured 1.1e-5 on features up to 5.6: ONNX Runtime's and PyTorch's fp32 kernels, as runtime="onnx"
    assert np.abs(bundle_bb.embed_tensor(same_input) - expected).max() < 1e-4
    # these photos are upscaled (160 -> 256 px), where Pillow's resize equals torchvision's exactly
    assert np.array_equal(np.stack([bundle_bb.transform(p) for p in photos]), same_input)
    assert np.abs(bundle_bb.embed(photos) - expected).max() < 1e-4
