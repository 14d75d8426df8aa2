"""Image readers: any supported file -> RGB uint8 PIL image, with caps on untrusted files.

JPEG/PNG/TIFF/BMP/WebP through Pillow, with EXIF orientation honoured, 16-bit and float images rescaled to
8 bits by their own range, grayscale/palette/CMYK converted to RGB and transparency composited on black.
DICOM through pydicom: the first frame only; palette colour through its colour LUT; else the modality LUT
(rescale slope/intercept), the first VOI window (centre/width, with its LINEAR/LINEAR_EXACT/SIGMOID function)
or VOI LUT when present, MONOCHROME1 inverted.

``ImageLimits`` (``max_image_pixels``, ``max_aspect_ratio`` in the config) are checked against the size in the
file's header before any pixel is decoded: a 1x200000 strip or a 12000x12000 bomb of a few KB is refused with
its size and the key that admits it. A JPEG above the pixel cap is decoded at 1/2, 1/4 or 1/8 scale when the
caller needs only ``min_side`` (Pillow's draft mode), if that brings it under the cap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
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


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved_level = logging.NOTSET


@contextlib.contextmanager
def _pydicom_log_quiet() -> Iterator[None]:
    """pydicom logs a traceback at ERROR level for every plugin that fails to decode; the failure reaches the
    caller as one exception anyway, so pydicom's log is held back during a decode (thread-safe, nestable)."""
    global _quiet_depth, _quiet_saved_level
    logger = logging.getLogger("pydicom")
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved_level = logger.level
            logger.setLevel(logging.CRITICAL)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                logger.setLevel(_quiet_saved_level)


def dicom_plugin_hint(transfer_syntax) -> str:
    """What to install to decode ``transfer_syntax`` (from pydicom's own list of the plugins it lacks)."""
    from pydicom.pixels import get_decoder

    try:
        missing = get_decoder(transfer_syntax).missing_dependencies
    except (NotImplementedError, ValueError):
        return f"pydicom has no decoder for the transfer syntax {transfer_syntax}"
    plugins = {}
    for line in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        name, _, needs = line.partition(" - requires ")
        plugins[name.strip()] = [p for p in needs.split(" and ") if p and p != "numpy"]
    if not plugins:
        return ""
    best = "pylibjpeg" if "pylibjpeg" in plugins else next(iter(plugins))
    others = [n for n in plugins if n != best]
    alternatives = f" (or the {' / '.join(others)} plugin)" if others else ""
    return (f"{transfer_syntax.name} pixel data needs a decoder plugin: "
            f"pip install {' '.join(shlex.quote(p) for p in plugins[best])}{alternatives}")


def _dicom_first_frame(path: Path, ds) -> np.ndarray:
    """The first frame's pixels, decoded from the file (only that frame is read)."""
    from pydicom.pixels import pixel_array

    try:
        with _pydicom_log_quiet():
            return pixel_array(str(path), index=0)
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = dicom_plugin_hint(ts) if ts is not None and ts.is_compressed else ""
        raise UnreadableImageError(f"cannot decode the pixels of {path}: {e}" + (f"; {hint}" if hint else "")) from e


def _palette_to_rgb(arr: np.ndarray, ds) -> np.ndarray:
    """PALETTE COLOR: indices through the red/green/blue LUTs, scaled from the LUT's bit depth to 8 bits."""
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(arr, ds)
    if rgb.dtype == np.uint8:
        return rgb
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) or 16
    return np.clip(rgb.astype(np.float32) / (2.0 ** bits - 1) * 255.0, 0, 255).round().astype(np.uint8)


def _dicom_grey_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

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
    return out


def read_dicom(path: str | Path, limits: ImageLimits | None = None) -> Image.Image:
    """DICOM through pydicom -> RGB uint8 (see the module docstring for the steps); the header's Rows and
    Columns are checked against ``limits`` before any pixel is read."""
    import pydicom

    path = Path(path)
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    if limits is not None:
        limits.check(path, (int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)))
    arr = _dicom_first_frame(path, ds)
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        return Image.fromarray(np.ascontiguousarray(_palette_to_rgb(arr, ds)), "RGB")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3:  # colour: pydicom already converted YBR to RGB
        if arr.dtype != np.uint8:
            bits = int(getattr(ds, "BitsStored", 16) or 16)
            arr = np.clip(arr.astype(np.float32) / (2.0 ** bits - 1) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    return Image.fromarray(_dicom_grey_to_uint8(arr, ds)).convert("RGB")


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
