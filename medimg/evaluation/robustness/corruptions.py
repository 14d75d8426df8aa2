"""Common image corruptions at five severities (the ImageNet-C families; Hendrycks & Dietterich 2019,
"Benchmarking neural network robustness to common corruptions and perturbations", and MedMNIST-C, Di Salvo
et al. 2024), on uint8 RGB arrays ``(H, W, 3)``.

Written here, with ImageNet-C's severity parameters, rather than taken from a package: ``imagecorruptions``
(last release 2020) calls scikit-image with the ``multichannel`` argument that current scikit-image no longer
has, draws from numpy's global random state and requires ``opencv-python`` beside our
``opencv-python-headless``; ``medmnistc`` pins ``scikit-image==0.23.2`` and ``medmnist==3.0.1`` and needs
Wand (ImageMagick); ``corrupt-tta`` also uses the global random state and needs ``opencv-python`` and
scikit-image. The six families below need only numpy, scipy and Pillow.

Severity 0 returns the image unchanged; severities 1..5 use ImageNet-C's parameters:

* ``gaussian_noise``: x + N(0, sigma^2) on [0, 1], sigma = .08, .12, .18, .26, .38;
* ``gaussian_blur``: Gaussian filter, sigma = 1, 2, 3, 4, 6 pixels at 224 px, scaled to the image's shorter
  side (sigma * side / 224), so a 96 px image is blurred as much relative to its size as a 224 px one;
* ``contrast``: (x - mean) * c + mean per channel, c = .4, .3, .2, .1, .05;
* ``brightness``: HSV value + c, c = .1, .2, .3, .4, .5 (hue and saturation kept);
* ``jpeg_compression``: JPEG at quality 25, 18, 15, 10, 7 (Pillow);
* ``pixelate``: box-downsample to a factor .6, .5, .4, .3, .25 of the size and box-upsample back.

The noise comes from ``numpy.random.default_rng((seed, index))``: the same seed and image index give the same
corrupted image, and the severities of one image share one noise draw, so its distortion grows with severity.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from medimg.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
}
REFERENCE_SIDE = 224  # ImageNet-C's image size, the scale of its blur parameters


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(img: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(img / 255.0 + rng.standard_normal(img.shape) * c)


def gaussian_blur(img: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    sigma = c * min(img.shape[:2]) / REFERENCE_SIDE
    return _to_uint8(gaussian_filter(img / 255.0, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0))


def contrast(img: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = img / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def brightness(img: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c with hue and saturation unchanged: with those fixed, RGB is proportional to the value
    (V = max channel), so each pixel is scaled by V'/V; a black pixel (V = 0, no hue) becomes grey V'."""
    x = img / 255.0
    v = x.max(axis=2, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    scaled = np.where(v > 0, x * v_new / np.where(v > 0, v, 1), v_new)
    return _to_uint8(scaled)


def jpeg_compression(img: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(c))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def pixelate(img: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


CORRUPTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
}


def check_corruptions(names, severities) -> None:
    """A ConfigError naming the choices for an unknown corruption or a severity outside 0..5."""
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruptions {unknown} (corruptions.names); choose among {sorted(CORRUPTIONS)}")
    bad = [s for s in severities if not (isinstance(s, int) and 0 <= s <= len(SEVERITIES))]
    if bad:
        raise ConfigError(f"corruption severities {bad} (corruptions.severities) are not integers in 0..5")


def corrupt(img: np.ndarray, name: str, severity: int, seed: int = 0, index: int = 0) -> np.ndarray:
    """``img`` (uint8 ``(H, W, 3)``) under corruption ``name`` at ``severity`` (0 = unchanged, 1..5);
    deterministic for a given ``seed`` and image ``index``."""
    check_corruptions([name], [severity])
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"corrupt expects a uint8 (H, W, 3) RGB array, got {img.dtype} {img.shape}")
    if severity == 0:
        return img.copy()
    rng = np.random.default_rng((int(seed), int(index)))
    return CORRUPTIONS[name](img, PARAMETERS[name][severity - 1], rng)
