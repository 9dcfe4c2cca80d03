"""Common image corruptions, generated on the fly from uint8 test images (after CIFAR-10-C).

Generated here (Hendrycks & Dietterich, 2019), they need no download and keep every parameter visible; arithmetic
is on floats in [0, 1], clipped and rounded back to uint8. CIFAR-10-C's values, but brightness is an additive RGB
shift (not HSV), so it moves the mean by exactly the delta wherever nothing clips:

================  ===============================================  =====  =====  =====  =====  =====
corruption        parameter                                        1      2      3      4      5
================  ===============================================  =====  =====  =====  =====  =====
gaussian_noise    std of i.i.d. N(0, std) added per value, [0, 1]  0.04   0.06   0.08   0.09   0.10
gaussian_blur     Gaussian sigma in pixels (kernel to 4 sigma,     0.4    0.6    0.7    0.8    1.0
                  edge pixels repeated at the border)
jpeg              Pillow JPEG quality (default 4:2:0 subsampling)  80     65     58     50     40
brightness        delta added to every value, [0, 1]               0.05   0.10   0.15   0.20   0.30
contrast          factor c: x -> m + c (x - m), m = image mean     0.75   0.50   0.40   0.30   0.15
================  ===============================================  =====  =====  =====  =====  =====

Only gaussian_noise is random, drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "jpeg": (80, 65, 58, 50, 40),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    "contrast": (0.75, 0.50, 0.40, 0.30, 0.15),
}

CORRUPTIONS: tuple[str, ...] = tuple(PARAMETERS)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupted copy of uint8 images (N, H, W, 3): same shape, uint8; see the module table for parameters."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    parameter = PARAMETERS[name][severity - 1]
    if name == "jpeg":
        return _jpeg(images, int(parameter))
    x = images.astype(np.float64) / 255.0
    out = _FLOAT_CORRUPTIONS[name](x, parameter, np.random.default_rng(seed))
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, std, size=x.shape)


def _gaussian_blur(x: np.ndarray, sigma: float, _rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur over height and width, edge pixels repeated; the kernel reaches ceil(4 sigma) pixels each way
    (SciPy's default radius is one pixel shorter for sigma 0.6 and 0.8)."""
    # Imported here: every command line names these corruptions (report's options), and SciPy would add 0.2 s to each.
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma, mode="nearest", radius=math.ceil(4 * sigma), axes=(1, 2))


def _brightness(x: np.ndarray, delta: float, _rng: np.random.Generator) -> np.ndarray:
    return x + delta


def _contrast(x: np.ndarray, factor: float, _rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return mean + factor * (x - mean)


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode each image as JPEG with Pillow at ``quality``."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


_FLOAT_CORRUPTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "brightness": _brightness,
    "contrast": _contrast,
}
