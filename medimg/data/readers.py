"""Image readers: any supported file -> RGB uint8 PIL image, with caps on untrusted files.

JPEG/PNG/TIFF/BMP/WebP through Pillow, with EXIF orientation honoured, 16-bit and float images rescaled to
8 bits by their own range, grayscale/palette/CMYK converted to RGB and transparency composited on black.
DICOM through pydicom (dicom.py).

``ImageLimits`` (``max_image_pixels``, ``max_aspect_ratio`` in the config) are checked against the size in the
file's header before any pixel is decoded: a 1x200000 strip or a 12000x12000 bomb of a few KB is refused with
its size and the key that admits it. A JPEG above the pixel cap is decoded at 1/2, 1/4 or 1/8 scale when the
caller needs only ``min_side`` (Pillow's draft mode), if that brings it under the cap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medimg.errors import ConfigError, DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}
DICOM_SUFFIXES = {".dcm", ".dicom"}

# medimg checks every size against its own caps from the header, with a message naming the file and the key;
# Pillow's decompression-bomb warning (once per process, naming neither) would only repeat that.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImageError(DataError):
    """An image file that exists but cannot be decoded, or that its size caps refuse."""


class ImageTooLargeError(UnreadableImageError):
    """An image refused before decoding: its header's size breaks ``max_image_pixels`` or ``max_aspect_ratio``."""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# ---------------------------------------------------------------------------------------------------- caps
@dataclass(frozen=True)
class ImageLimits:
    """Caps on an untrusted image, checked from its header before decoding; None = no cap.

    ``key_prefix`` is where the keys live in the config (``dataset.`` for training), so that a refusal names
    the exact override that admits the image.
    """

    max_pixels: int | None
    max_aspect_ratio: float | None
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or int(self.max_pixels) < 1
                                            or int(self.max_pixels) != self.max_pixels):
            raise ConfigError(f"{self.key_prefix}max_image_pixels must be a whole number >= 1 or null (no cap), "
                              f"not {self.max_pixels!r}")
        if self.max_aspect_ratio is not None and not float(self.max_aspect_ratio) >= 1.0:
            raise ConfigError(f"{self.key_prefix}max_aspect_ratio must be >= 1 (long side / short side) or null "
                              f"(no cap), not {self.max_aspect_ratio!r}")

    @classmethod
    def from_config(cls, cfg: Mapping, key_prefix: str = "") -> ImageLimits:
        """From a config holding ``max_image_pixels`` and ``max_aspect_ratio`` (a missing or null key: no cap)."""
        return cls(cfg.get("max_image_pixels"), cfg.get("max_aspect_ratio"), key_prefix)

    def check(self, path: str | Path, size: tuple[int, int], decoded: tuple[int, int] | None = None) -> None:
        """Raise ImageTooLargeError unless ``size`` (width, height from the header) is within the caps;
        ``decoded``: the reduced size a JPEG will be decoded at, which the pixel cap applies to."""
        w, h = size
        if w < 1 or h < 1:
            raise UnreadableImageError(f"cannot read image {path}: its header gives the size {w}x{h}")
        ratio = max(w, h) / min(w, h)
        if self.max_aspect_ratio is not None and ratio > self.max_aspect_ratio:
            key = f"{self.key_prefix}max_aspect_ratio"
            raise ImageTooLargeError(
                f"image {path} is {w}x{h} pixels: its aspect ratio {ratio:,.1f}:1 is above the cap of "
                f"{self.max_aspect_ratio:g} ({key}); refused before decoding. If the image is genuine, raise {key}.")
        dw, dh = decoded or size
        if self.max_pixels is not None and dw * dh > self.max_pixels:
            key = f"{self.key_prefix}max_image_pixels"
            reduced = f" (still {dw}x{dh} decoded at reduced scale)" if (dw, dh) != (w, h) else ""
            raise ImageTooLargeError(
                f"image {path} is {w}x{h} = {w * h:,} pixels{reduced}, above the cap of {self.max_pixels:,} "
                f"({key}); refused before decoding. If the image is genuine, raise {key}.")


def _open_lazily(path: Path, limits: ImageLimits | None) -> Image.Image:
    """``Image.open`` reads the header only. Pillow's own bomb check stays on as a backstop, moved up to
    medimg's cap where that is higher, so that medimg's check (with its message) is the one that decides."""
    cap = limits.max_pixels if limits is not None else None
    if cap is not None and Image.MAX_IMAGE_PIXELS is not None and cap > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = cap
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        key = f"{limits.key_prefix if limits else ''}max_image_pixels"
        raise ImageTooLargeError(f"image {path} is refused before decoding: {e} (Pillow's limit follows {key} "
                                 f"where that is higher)") from e


# ---------------------------------------------------------------------------------------------------- pixels
def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Rescale a high-bit-depth or float array to 0..255 by its (finite) min/max."""
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0).round().astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image mode -> RGB (8-bit)."""
    if img.mode.startswith("I") or img.mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F: high bit depth
        img = Image.fromarray(to_uint8(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------- all
def _draft(img: Image.Image, min_side: int | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when its shorter side stays >= ``min_side`` (much faster)."""
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min_side / min(w, h)
        if scale < 0.5:
            img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))


def read_image(path: str | Path, min_side: int | None = None, limits: ImageLimits | None = None) -> Image.Image:
    """Decode ``path`` into an RGB uint8 image; raises UnreadableImageError naming the file.

    ``min_side``: the caller only needs the shorter side this large, so a JPEG may be decoded at a reduced
    scale (never below it); the size of other images is unchanged. ``limits``: size caps checked from the
    header before decoding (ImageTooLargeError); None only for images medimg made itself.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            from medimg.data.dicom import read_dicom  # dicom.py builds on this module's caps and pixels

            return read_dicom(path, limits)
        with _open_lazily(path, limits) as img:
            size = img.size
            _draft(img, min_side)
            if limits is not None:
                limits.check(path, size, img.size)
            img.load()
            img = ImageOps.exif_transpose(img)
            return pil_to_rgb(img)
    except (FileNotFoundError, UnreadableImageError):
        raise
    except Exception as e:  # Pillow and pydicom raise many types for bad files
        raise UnreadableImageError(f"cannot read image {path}: {e}") from e
