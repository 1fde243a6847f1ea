"""Heat maps: where in the image the evidence for a class lies (Grad-CAM, computed without autograd).

The learner is not part of the network, so its class logit is linearised at the image's features:
``logit(f) ~ logit(f0) + g . (f - f0)`` with ``g = learner.logit_gradient(f0, label)``. The features are
the spatial average of the backbone's last feature map ``A`` (``f_k = mean(A_k)``), so Grad-CAM's channel
weights are ``g_k / (h w)`` and its map is ``relu(sum_k g_k A_k)``, up to a scale that the [0, 1]
normalisation removes: exactly Grad-CAM of the linearised logit (Selvaraju et al.), here a
class-activation map from one forward pass. ONNX Runtime returns ``A`` beside the features, so heat maps
need no PyTorch. Faithfulness is checked, not assumed: :func:`deletion_curve` removes the most salient
pixels first and tracks the class probability.
"""

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image


class HeatMapper:
    """Heat maps of a learner's classes over a backbone (PyTorch or a bundle: anything with
    ``preprocessing`` and ``features_and_map``)."""

    def __init__(self, backbone):
        self.backbone = backbone

    def heat(self, image: Image.Image, gradient: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``(s, s)`` map in [0, 1] over the backbone's centre crop: evidence for a class, given the
        gradient of its logit at the image's features (e.g. ``lambda f: learner.logit_gradient(f, label)``)."""
        x = self.backbone.preprocessing.array(image)[None]
        features, feature_map = self.backbone.features_and_map(x)
        g = np.asarray(gradient(features), np.float32).reshape(-1)
        cam = np.maximum(np.tensordot(g, feature_map[0], axes=1), 0).astype(np.float32)
        size = x.shape[-1]
        # bilinear with half-pixel centres, as torch's interpolate(align_corners=False); upsampling can't go < 0
        cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
        return cam / cam.max() if cam.max() > 0 else cam

    def crop(self, image: Image.Image) -> Image.Image:
        """The part of ``image`` the backbone sees (resize + centre crop), as RGB."""
        return self.backbone.preprocessing.crop(image)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heat map in the 'jet' colours over the (cropped) image."""
    bgr = cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat_image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat_image, alpha)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def deletion_curve(score: Callable[[np.ndarray], np.ndarray], x: np.ndarray, heat: np.ndarray, steps: int = 10,
                   order: np.ndarray | None = None) -> np.ndarray:
    """The class score as the most salient pixels of the preprocessed ``(1, 3, s, s)`` input ``x`` are
    replaced by a blurred copy (fractions 0, 1/steps, ..., 1). A faithful map makes it fall fast:
    a small area under the curve, smaller than a random ``order``'s (the baseline).

    ``score`` maps a ``(n, 3, s, s)`` batch to the ``(n,)`` probabilities of the explained class.
    """
    x = np.asarray(x, np.float32)
    s = x.shape[-1]
    kernel = 2 * (s // 8) + 1
    blurred = np.stack([cv2.GaussianBlur(channel, (kernel, kernel), s / 16, borderType=cv2.BORDER_REFLECT_101)
                        for channel in x[0]])[None]
    if order is None:
        order = np.argsort(-heat.ravel(), kind="stable")
    frames = []
    for k in range(steps + 1):
        mask = np.zeros(order.size, dtype=bool)
        mask[order[: round(order.size * k / steps)]] = True
        frames.append(np.where(mask.reshape(1, 1, s, s), blurred, x))
    return np.asarray(score(np.concatenate(frames)))
