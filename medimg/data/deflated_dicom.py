"""Deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99): the whole data set after the file meta is one zlib
stream, and pydicom inflates all of it into memory before reading a single element, so 1 MB of file can
demand 1 GB. ``check_inflated_size`` inflates the stream once in 1 MiB steps, keeping nothing, and refuses the
file as soon as it grows past what an image within the pixel cap can hold; only then does pydicom read it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from medimg.errors import DataError

DEFLATED = "1.2.840.10008.1.2.1.99"
STEP = 1 << 20          # bytes inflated at a time
HEADER_ALLOWANCE = 16 << 20  # non-pixel elements a deflated file may carry besides its pixels


def inflated_cap(max_pixels: int | None) -> int | None:
    """The most bytes a deflated data set may inflate to: 3 samples of 16 bits for every admitted pixel, plus
    ``HEADER_ALLOWANCE``; None (no pixel cap) admits any size."""
    return None if max_pixels is None else int(max_pixels) * 6 + HEADER_ALLOWANCE


def check_inflated_size(path: str | Path, cap: int | None, key: str) -> None:
    """Raise a DataError naming ``path`` and ``key`` (the pixel cap's config key) when the file is deflated DICOM
    whose data set inflates past ``cap`` bytes; other files pass untouched (only their file meta is read)."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble

    if cap is None:
        return
    with open(path, "rb") as fp:
        try:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            return  # not a DICOM file medimg can parse: the reader says so with its own message
        if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
            return
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := fp.read(STEP):
            pending = chunk
            while pending:
                try:
                    total += len(inflater.decompress(pending, STEP))
                except zlib.error as e:
                    raise DataError(f"{path}: its deflated DICOM data cannot be inflated ({e})") from None
                if total > cap:
                    raise DataError(f"{path} is deflated DICOM that inflates past {cap / 2**20:.0f} MiB, more than "
                                    f"an image within {key} holds; refused before reading (raise {key} to admit it)")
                pending = inflater.unconsumed_tail
