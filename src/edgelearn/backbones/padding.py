"""TensorFlow 'SAME' padding for torchvision convs whose weights were trained in TensorFlow.

TensorFlow pads a stride-2 convolution 0 before and 1 after on even sizes; torchvision pads
symmetrically. Weights converted from a TF model lose about 9 points of ImageNet top-1 unless
the stride-2 convs pad the way they were trained (see shared/models/README.md).
"""

import torch
import torch.nn.functional as F
from torch import nn


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def use_tf_same_padding(model: nn.Module, *, mean, std, input_pad_pixel: float = 128.0) -> nn.Module:
    """Make every strided conv of ``model`` pad like TF 'SAME'; returns the same model.

    The first conv pads the *normalised* input with the value of pixel ``input_pad_pixel``
    (the TF model saw mid-grey there, not zero after normalisation).
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    first = convs[0] if convs else None
    fill = ((input_pad_pixel / 255 - torch.tensor(mean)) / torch.tensor(std)).view(1, -1, 1, 1)

    def hook(conv: nn.Conv2d, args):
        x = args[0]
        top, bottom = _same_pads(x.shape[2], conv.kernel_size[0], conv.stride[0])
        left, right = _same_pads(x.shape[3], conv.kernel_size[1], conv.stride[1])
        if conv is first:
            g = fill.to(x)
            return (F.pad(x - g, (left, right, top, bottom)) + g,)
        return (F.pad(x, (left, right, top, bottom)),)

    for conv in convs:
        if conv.stride != (1, 1):
            conv.padding = (0, 0)
            conv.register_forward_pre_hook(hook)
    return model
