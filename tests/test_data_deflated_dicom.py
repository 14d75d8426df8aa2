"""Deflated DICOM: a small file that inflates past the pixel cap is refused while its stream is inflated in
steps (memory stays small), before pydicom reads it whole; a deflated file within the cap reads as usual."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

from medimg.data.deflated_dicom import DEFLATED, check_inflated_size, inflated_cap
from medimg.data.readers import ImageLimits, UnreadableImageError, read_image


def _deflated(path, pixels: np.ndarray):
    """A real deflated-transfer-syntax DICOM of ``pixels`` (16-bit grey), written by pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DEFLATED
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _bomb(path, inflated_mib: int):
    """A deflated DICOM of 16x16 px whose stream inflates to ``inflated_mib`` MiB (a private element of
    zeros), written piecewise: the file is a fraction of a MiB."""
    head = _deflated(path.with_name("head.dcm"), np.zeros((16, 16), np.uint16)).read_bytes()
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path.with_name("head.dcm"), "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        body_at = fp.tell()
    size = inflated_mib << 20
    element = b"\x09\x00\x10\x10" + b"OB\x00\x00" + size.to_bytes(4, "little")  # (0009,1010) OB, explicit VR
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as out:
        out.write(head[:body_at])
        out.write(packer.compress(element))
        zeros = bytes(1 << 20)
        for _ in range(inflated_mib):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    return path


def test_a_deflated_dicom_within_the_cap_reads(tmp_path):
    pixels = (np.arange(64 * 48).reshape(64, 48) * 13 % 4096).astype(np.uint16)
    img = read_image(_deflated(tmp_path / "ok.dcm", pixels), limits=ImageLimits(10_000, 10))
    assert img.size == (48, 64) and img.mode == "RGB"


def test_a_deflate_bomb_is_refused_with_little_memory(tmp_path):
    bomb = _bomb(tmp_path / "bomb.dcm", inflated_mib=200)
    assert bomb.stat().st_size < 1 << 20  # under 1 MiB on disk
    tracemalloc.start()
    with pytest.raises(UnreadableImageError, match=r"deflated DICOM that inflates past 16 MiB.*max_image_pixels"):
        read_image(bomb, limits=ImageLimits(1000, 10, key_prefix="dataset."))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB while refusing"


def test_the_cap_follows_the_pixel_cap():
    assert inflated_cap(None) is None
    assert inflated_cap(1_000_000) == 6_000_000 + (16 << 20)


def test_files_that_are_not_deflated_pass_untouched(tmp_path):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert check_inflated_size(png, 1000, "max_image_pixels") is None  # not DICOM: the reader's own message
    plain = tmp_path / "plain.dcm"
    from tests.test_data_readers import _dicom

    _dicom(plain, np.zeros((600, 600), np.uint16))  # 720 KB uncompressed, over a 16 KB cap: not deflated, passes
    assert check_inflated_size(plain, 16_000, "max_image_pixels") is None
