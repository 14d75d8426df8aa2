"""Image readers: any supported file -> RGB uint8 PIL image.

JPEG/PNG/TIFF/BMP/WebP through Pillow, with EXIF orientation honoured, 16-bit and float images rescaled to
8 bits by their own range, grayscale/palette/CMYK converted to RGB and transparency composited on black.
DICOM through pydicom: modality LUT (rescale slope/intercept), the first VOI window (centre/width, with its
LINEAR/LINEAR_EXACT/SIGMOID function) or VOI LUT when present, MONOCHROME1 inverted, first frame only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


class UnreadableImageError(ValueError):
    """An image file that exists but cannot be decoded."""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Rescale a high-bit-depth or float array to 0..255 by its (finite) min/max."""
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0).round().astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image mode -> RGB (8-bit)."""
    if img.mode.startswith("I") or img.mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F: high bit depth
        img = Image.fromarray(_to_uint8(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------- DICOM
def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): its first entry as a float."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return float(value[0])
    return float(value)


def dicom_window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing of modality values to 0..255."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / max(width, 1e-6)))
    elif function == "LINEAR_EXACT":
        out = (arr - center) / max(width, 1e-6) + 0.5
    else:  # LINEAR: the standard's -0.5 / -1 offsets
        out = (arr - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def read_dicom(path: str | Path) -> Image.Image:
    """DICOM through pydicom -> RGB uint8 (see the module docstring for the steps)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as e:  # pragma: no cover - pydicom is a dependency
        raise ImportError("reading DICOM needs pydicom: pip install pydicom") from e
    ds = pydicom.dcmread(str(path))
    try:
        arr = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = ("; compressed DICOM needs a decoder plugin: pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg") if ts is not None and ts.is_compressed else ""
        raise UnreadableImageError(f"cannot decode the pixels of {path}: {e}{hint}") from e
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples == 3:  # colour: pydicom already converted YBR to RGB
        if arr.dtype != np.uint8:
            bits = int(getattr(ds, "BitsStored", 16) or 16)
            arr = np.clip(arr.astype(np.float32) / (2.0 ** bits - 1) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    values = apply_modality_lut(arr, ds).astype(np.float32)
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        out = dicom_window(values, _first(center), _first(width), str(getattr(ds, "VOILUTFunction", "LINEAR")))
    elif "VOILUTSequence" in ds:
        out = _to_uint8(apply_voi_lut(values, ds))
    else:
        out = _to_uint8(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return Image.fromarray(out).convert("RGB")


# ---------------------------------------------------------------------------------------------------- all
def _draft(img: Image.Image, min_side: int | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when its shorter side stays >= ``min_side`` (much faster)."""
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min_side / min(w, h)
        if scale < 0.5:
            img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))


def read_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` into an RGB uint8 image; raises UnreadableImageError naming the file.

    ``min_side``: the caller only needs the shorter side this large, so a JPEG may be decoded at a reduced
    scale (never below it); the size of other images is unchanged.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return read_dicom(path)
        with Image.open(path) as img:
            _draft(img, min_side)
            img.load()
            img = ImageOps.exif_transpose(img)
            return pil_to_rgb(img)
    except (FileNotFoundError, UnreadableImageError):
        raise
    except Exception as e:  # Pillow and pydicom raise many types for bad files
        raise UnreadableImageError(f"cannot read image {path}: {e}") from e
