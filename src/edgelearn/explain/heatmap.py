"""Heat maps: where in the image the evidence for a class lies (Grad-CAM through the backbone).

The learner is not a torch module, so the class logit is linearised at the image's features:
``logit(f) ~ logit(f0) + g . (f - f0)`` with ``g = learner.logit_gradient(f0, label)``. Grad-CAM
(Captum's ``LayerGradCam``) of ``g . backbone(x)`` then has exactly the gradient of the learner's
logit, back-propagated to the backbone's last feature map. Faithfulness is checked, not assumed:
:func:`deletion_curve` removes the most salient pixels first and tracks the class probability.
"""

import io
from collections.abc import Callable

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib import colormaps
from PIL import Image
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from edgelearn.backbones import Backbone


def last_feature_map(model: nn.Module, input_size: int) -> nn.Module:
    """The last module whose output is a spatial feature map (4-d, more than 1x1): Grad-CAM's layer."""
    found: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(m) if torch.is_tensor(o) and o.dim() == 4
                                     and o.shape[-1] > 1 else None)
             for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ValueError("the backbone has no spatial feature map to explain")
    return found[-1]


class HeatMapper:
    """Grad-CAM heat maps of a learner's classes through a backbone."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.layer = last_feature_map(backbone.model, backbone.preprocessing.input_size)

    def heat(self, image: Image.Image, gradient: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``(s, s)`` map in [0, 1] over the backbone's centre crop: evidence for a class, given the
        gradient of its logit at the image's features (e.g. ``lambda f: learner.logit_gradient(f, label)``)."""
        x = self.backbone.transform(image).unsqueeze(0)
        with torch.inference_mode():
            f0 = self.backbone.embed_tensor(x).numpy()
        g = torch.from_numpy(np.asarray(gradient(f0), np.float32))

        def linearised_logit(inp: torch.Tensor) -> torch.Tensor:
            return (self.backbone.embed_tensor(inp) * g).sum(dim=1)

        x.requires_grad_(True)  # the backbone's weights are frozen; gradients must flow from the input
        with torch.enable_grad():
            cam = LayerGradCam(linearised_logit, self.layer).attribute(x, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        cam = cam[0, 0].clamp_min(0).numpy()
        return cam / cam.max() if cam.max() > 0 else cam

    def crop(self, image: Image.Image) -> Image.Image:
        """The part of ``image`` the backbone sees (resize + centre crop), as RGB."""
        return self.backbone.preprocessing.crop(image)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heat map in the 'jet' colours over the (cropped) image."""
    colours = (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    heat_image = Image.fromarray(colours).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat_image, alpha)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def deletion_curve(score, x: torch.Tensor, heat: np.ndarray, steps: int = 10,
                   order: np.ndarray | None = None) -> np.ndarray:
    """The class score as the most salient pixels of the preprocessed ``(1, 3, s, s)`` input ``x`` are
    replaced by a blurred copy (fractions 0, 1/steps, ..., 1). A faithful map makes it fall fast:
    a small area under the curve, smaller than a random ``order``'s (the baseline).

    ``score`` maps a ``(n, 3, s, s)`` batch to the ``(n,)`` probabilities of the explained class.
    """
    s = x.shape[-1]
    blurred = gaussian_blur(x, kernel_size=2 * (s // 8) + 1, sigma=s / 16)
    if order is None:
        order = np.argsort(-heat.ravel(), kind="stable")
    frames = []
    for k in range(steps + 1):
        mask = torch.zeros(order.size, dtype=torch.bool)
        mask[torch.from_numpy(order[: round(order.size * k / steps)])] = True
        frames.append(torch.where(mask.reshape(1, 1, s, s), blurred, x))
    with torch.inference_mode():
        return np.asarray(score(torch.cat(frames)))
