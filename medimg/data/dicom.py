"""DICOM through pydicom -> RGB uint8: the first frame only; palette colour through its colour LUT; else the
modality LUT (rescale slope/intercept), the first VOI window (centre/width, with its LINEAR/LINEAR_EXACT/SIGMOID
function) or VOI LUT when present, MONOCHROME1 inverted. The header's size is checked against the caps before any
pixel is read, and a deflated file's inflated size before pydicom reads it (deflated_dicom.py)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medimg.data.deflated_dicom import DEFLATED, check_inflated_size, inflated_cap
from medimg.data.readers import ImageLimits, UnreadableImageError, to_uint8


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
            if str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) == DEFLATED:
                return _deflated_first_frame(path)
            return pixel_array(str(path), index=0)
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = dicom_plugin_hint(ts) if ts is not None and ts.is_compressed else ""
        raise UnreadableImageError(f"cannot decode the pixels of {path}: {e}" + (f"; {hint}" if hint else "")) from e


def _deflated_first_frame(path: Path) -> np.ndarray:
    """A deflated file is one zlib stream that cannot be seeked into: read whole (its inflated size was checked)."""
    import pydicom

    full = pydicom.dcmread(str(path))
    arr = full.pixel_array
    return arr[0] if int(getattr(full, "NumberOfFrames", 1) or 1) > 1 else arr


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
        out = to_uint8(apply_voi_lut(values, ds))
    else:
        out = to_uint8(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out


def read_dicom(path: str | Path, limits: ImageLimits | None = None) -> Image.Image:
    """DICOM through pydicom -> RGB uint8 (see the module docstring for the steps); the header's Rows and
    Columns are checked against ``limits`` before any pixel is read."""
    import pydicom

    path = Path(path)
    if limits is not None:  # pydicom inflates a deflated file whole before reading anything
        check_inflated_size(path, inflated_cap(limits.max_pixels), f"{limits.key_prefix}max_image_pixels")
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


