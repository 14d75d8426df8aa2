"""Readers: every supported kind of file becomes an RGB uint8 image with the right pixels."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg.data.dicom import dicom_window
from medimg.data.readers import ImageLimits, UnreadableImageError, read_image

LIMITS = ImageLimits(50_000_000, 10)


def _rgb(img) -> np.ndarray:
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def _png_rgb16(path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_jpeg_and_8bit_png(tmp_path):
    arr = np.zeros((12, 16, 3), np.uint8)
    arr[:, :8] = (200, 30, 30)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.abs(_rgb(read_image(tmp_path / "a.jpg")).astype(int) - arr).max() < 40
    assert (_rgb(read_image(tmp_path / "a.png")) == arr).all()


def test_grayscale_png_and_jpeg_become_three_equal_channels(tmp_path):
    g = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (10, 1))
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    Image.fromarray(g, "L").save(tmp_path / "g.jpeg")
    out = _rgb(read_image(tmp_path / "g.png"))
    assert (out[..., 0] == g).all() and (out[..., 1] == g).all() and (out[..., 2] == g).all()
    out = _rgb(read_image(tmp_path / "g.jpeg"))
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_grayscale_png_is_rescaled_by_its_range(tmp_path):
    g = np.linspace(1000, 4095, 64).reshape(8, 8).astype(np.uint16)  # 12-bit data in 16 bits
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = _rgb(read_image(tmp_path / "g16.png"))
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out[..., 0].reshape(-1).astype(int)) >= 0).all()  # order kept


def test_16bit_rgb_png(tmp_path):
    arr = np.zeros((6, 5, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32768, 0
    _png_rgb16(tmp_path / "rgb16.png", arr)
    out = _rgb(read_image(tmp_path / "rgb16.png"))
    assert (out[..., 0] == 255).all() and (np.abs(out[..., 1].astype(int) - 128) <= 1).all() and (out[..., 2] == 0).all()


def test_rgba_and_palette_with_transparency_are_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (100, 150, 200)
    rgba[:2, ..., 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = _rgb(read_image(tmp_path / "a.png"))
    assert (out[:2] == (100, 150, 200)).all() and (out[2:] == 0).all()

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    pal.putpixel((0, 0), 2)
    pal.save(tmp_path / "p.png")
    out = _rgb(read_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (0, 255, 0) and tuple(out[1, 1]) == (255, 0, 0)
    pal.save(tmp_path / "pt.png", transparency=1)  # index 1 (red) transparent
    out = _rgb(read_image(tmp_path / "pt.png"))
    assert tuple(out[1, 1]) == (0, 0, 0) and tuple(out[0, 0]) == (0, 255, 0)


@pytest.mark.parametrize("kind", ["rgb8", "gray16", "float32"])
def test_tiff(tmp_path, kind):
    if kind == "rgb8":
        arr = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "t.tif")
        assert (_rgb(read_image(tmp_path / "t.tif")) == arr).all()
        return
    arr = np.linspace(0, 1, 42).reshape(6, 7)
    img = Image.fromarray((arr * 50000).astype(np.uint16)) if kind == "gray16" else \
        Image.fromarray(arr.astype(np.float32) - 0.5)
    img.save(tmp_path / "t.tiff")
    out = _rgb(read_image(tmp_path / "t.tiff"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.abs(out[..., 0].astype(float) / 255 - arr).max() < 0.01


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high, red on the left
    arr[:, :10] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = _rgb(read_image(tmp_path / "o.jpg"))
    assert out.shape[:2] == (20, 10)  # displayed upright: 10 wide, 20 high
    assert out[2, 5, 0] > 200 and out[-3, 5, 0] < 60  # the red half is now on top


def test_jpeg_draft_keeps_at_least_the_requested_side(tmp_path):
    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(tmp_path / "big.jpg")
    assert read_image(tmp_path / "big.jpg").size == (640, 480)
    small = read_image(tmp_path / "big.jpg", min_side=100)
    assert min(small.size) >= 100 and small.size[0] < 640


def _dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", **attrs):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    signed = pixels.dtype.kind == "i"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, int(signed)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_rescale_and_window(tmp_path):
    stored = np.array([[0, 1000], [1040, 2000]], np.uint16)  # HU = stored - 1024: -1024, -24, 16, 976
    path = _dicom(tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024,
                  WindowCenter=40, WindowWidth=400)  # soft-tissue window: -160..240 HU
    out = _rgb(read_image(path))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255  # air black, bone white
    expected = np.round(np.clip(((np.array([-24, 16]) - 39.5) / 399 + 0.5), 0, 1) * 255)
    assert abs(int(out[0, 1, 0]) - expected[0]) <= 1 and abs(int(out[1, 0, 0]) - expected[1]) <= 1
    assert (out[..., 0] == out[..., 2]).all()


def test_dicom_multivalued_window_uses_the_first(tmp_path):
    stored = np.array([[0, 100], [200, 300]], np.uint16)
    path = _dicom(tmp_path / "mv.dcm", stored, WindowCenter=[150, 1000], WindowWidth=[301, 10])
    out = _rgb(read_image(path))[..., 0]
    assert out[0, 0] == 0 and out[1, 1] == 255 and 0 < out[0, 1] < out[1, 0] < 255


def test_dicom_monochrome1_is_inverted_and_no_window_uses_the_range(tmp_path):
    stored = np.array([[0, 500], [1000, 4000]], np.uint16)
    out2 = _rgb(read_image(_dicom(tmp_path / "m2.dcm", stored)))[..., 0]
    out1 = _rgb(read_image(_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")))[..., 0]
    assert out2[0, 0] == 0 and out2[1, 1] == 255
    assert (out1.astype(int) == 255 - out2.astype(int)).all()


def test_dicom_window_functions():
    x = np.array([-1000.0, 40.0, 1000.0])
    assert dicom_window(x, 40, 400).tolist() == [0, 128, 255]
    assert dicom_window(x, 40, 400, "LINEAR_EXACT").tolist() == [0, 128, 255]
    sig = dicom_window(x, 40, 400, "SIGMOID")
    assert sig[0] < 5 and sig[1] == 128 and sig[2] > 250


def test_unreadable_files_name_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.png").write_text("not an image")
    for bad in (truncated, tmp_path / "text.png"):
        with pytest.raises(UnreadableImageError, match=bad.name):
            read_image(bad)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_dicom_palette_colour_goes_through_its_lut(tmp_path):
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    red, green, blue = ([0, 65535, 0, 32768], [0, 0, 65535, 32768], [0, 0, 0, 65535])
    path = _dicom(tmp_path / "palette.dcm", indices.astype(np.uint16), photometric="PALETTE COLOR")
    import pydicom

    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = indices.tobytes()
    for name, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [4, 0, 16])  # 4 entries from index 0, 16 bits
        ds[f"{name}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{name}PaletteColorLookupTableData", np.array(lut, "<u2").tobytes())
        ds[f"{name}PaletteColorLookupTableData"].VR = "OW"
    ds.save_as(path)
    out = np.asarray(read_image(path, limits=LIMITS))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 0, 0]
    assert out[1, 0].tolist() == [0, 255, 0] and out[1, 1].tolist() == [128, 128, 255]


def _compressed_dicom(path: Path, transfer_syntax, frame: bytes) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate

    _dicom(path, np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_undecodable_compressed_dicom_names_the_plugin_and_keeps_pydicom_quiet(tmp_path, caplog):
    from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless

    jpeg_ls = _compressed_dicom(tmp_path / "ls.dcm", JPEGLSLossless, b"\xff\xd8 not really \xff\xd9")
    broken = _compressed_dicom(tmp_path / "jpeg.dcm", JPEGBaseline8Bit, b"\xff\xd8 truncated")
    level = logging.getLogger("pydicom").level
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UnreadableImageError) as err:
        read_image(jpeg_ls, limits=LIMITS)
    assert "JPEG-LS" in str(err.value) and "pip install 'pylibjpeg>=2.0' 'pylibjpeg-libjpeg>=2.1'" in str(err.value)
    with pytest.raises(UnreadableImageError, match="pylibjpeg-libjpeg"):
        read_image(broken, limits=LIMITS)  # Pillow tries and fails: pydicom logs a traceback at ERROR
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []
    assert logging.getLogger("pydicom").level == level  # restored after the decode
    good = read_image(_compressed_dicom(tmp_path / "good.dcm", JPEGBaseline8Bit, _grey_jpeg(8)), limits=LIMITS)
    grey = np.asarray(good)[..., 0]
    assert good.size == (8, 8) and grey[0, 0] < 10 and grey[0, -1] > 245  # a good frame still decodes


def _grey_jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 255, side).astype(np.uint8), (side, 1)), "L").save(buf, "JPEG", quality=95)
    return buf.getvalue()
