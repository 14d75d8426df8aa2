"""Uploaded images, read under limits: nothing a client sends can make the server hold unbounded data.

A ``multipart/form-data`` body is parsed as it streams in (python-multipart's streaming parser), and each
``files`` part goes straight to a file in a per-request temporary folder, so memory holds one network chunk
at a time. Refused as soon as the bytes show it: a body that is not multipart (415), empty (400), malformed
(400), a part that is not a file or not an image type (400 / 415), more files than ``max_files`` (413), a file
over ``max_file_bytes`` (413, counted while it arrives, before it is all there). A refused body is read on and
discarded up to one more body's worth, so that the client gets its answer instead of a reset connection
(a body whose Content-Length is over the cap is refused before any of it is read).
Decoding (``decode_uploads``) checks the pixel and aspect caps from each header before any pixel is decoded
(``ImageLimits``: 413) and turns an undecodable or truncated file into 422.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import anyio.to_thread
import torch
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from medimg.data.readers import (
    DICOM_SUFFIXES,
    ImageLimits,
    ImageTooLargeError,
    UnreadableImageError,
    read_image,
)
from medimg.errors import UserError

FIELD = "files"                      # the form field every image is sent in
PART_OVERHEAD = 64 * 1024            # headers and boundary of one part, on top of its file's bytes
IMAGE_TYPES = ("application/dicom", "application/octet-stream")  # besides image/*; octet-stream: type unknown


class RequestError(UserError):
    """A request the server refuses; ``status`` is its HTTP status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_files: int
    max_file_bytes: int
    image: ImageLimits

    @property
    def max_body_bytes(self) -> int:
        return self.max_files * (self.max_file_bytes + PART_OVERHEAD) + PART_OVERHEAD


@dataclass
class Upload:
    """One uploaded file on disk."""

    filename: str
    content_type: str
    path: Path
    size: int = 0


def display_name(raw: bytes | None, index: int) -> str:
    """The client's file name without folders or control characters (at most 120 characters)."""
    name = (raw or b"").decode("utf-8", "replace").replace("\\", "/")
    name = "".join(c for c in PurePosixPath(name).name if c.isprintable())[:120]
    return name or f"file {index + 1}"


@dataclass
class _PartReader:
    """python-multipart callbacks: each ``files`` part into its own file under ``folder``, checked as it comes."""

    folder: Path
    limits: UploadLimits
    files: list[Upload] = field(default_factory=list)
    pending: list[tuple[BinaryIO, bytes | None]] = field(default_factory=list)  # writes (None: close) to flush
    handles: list[BinaryIO] = field(default_factory=list)
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _name: bytes = b""
    _value: bytes = b""
    _out: BinaryIO | None = None
    open_part: bool = False

    def callbacks(self) -> dict[str, Callable]:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field, "on_header_value":
                self.header_value, "on_header_end": self.header_end, "on_headers_finished": self.headers_done,
                "on_part_data": self.data, "on_part_end": self.end}

    def begin(self) -> None:
        self._headers, self.open_part = {}, True

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != FIELD:
            raise RequestError(400, f"unexpected form field {name[:60]!r}: send each image as a file in a "
                                    f"'{FIELD}' part of a multipart/form-data body")
        index = len(self.files)
        filename = display_name(options.get(b"filename"), index)
        if b"filename" not in options:
            raise RequestError(400, f"the '{FIELD}' part {index + 1} is not a file (it has no filename); "
                                    "send images as file uploads")
        if index >= self.limits.max_files:
            raise RequestError(413, f"too many files: at most {self.limits.max_files} image(s) per request here")
        ctype = parse_options_header(self._headers.get(b"content-type"))[0].decode("latin-1").lower()
        if ctype and not (ctype.startswith("image/") or ctype in IMAGE_TYPES):
            raise RequestError(415, f"file {filename!r} has Content-Type {ctype}; send images (image/*, "
                                    "application/dicom, or application/octet-stream when the type is unknown)")
        path = self.folder / f"{index:03d}.upload"
        self.files.append(Upload(filename, ctype or "unknown", path))
        self._out = open(path, "wb")  # closed by flush() after the part's last write, or by close_all()
        self.handles.append(self._out)

    def data(self, data: bytes, start: int, end: int) -> None:
        upload = self.files[-1]
        upload.size += end - start
        if upload.size > self.limits.max_file_bytes:
            raise RequestError(413, f"file {upload.filename!r} is larger than the cap of "
                                    f"{self.limits.max_file_bytes:,} bytes per file")
        self.pending.append((self._out, data[start:end]))

    def end(self) -> None:
        self.open_part = False
        upload = self.files[-1]
        self.pending.append((self._out, None))
        if upload.size == 0:
            raise RequestError(400, f"file {upload.filename!r} is empty (0 bytes)")

    def flush(self) -> None:
        """Write what the last chunk brought (in a worker thread: disk writes stay off the event loop)."""
        for out, chunk in self.pending:
            if chunk is None:
                out.close()
            else:
                out.write(chunk)
        self.pending.clear()

    def close_all(self) -> None:
        self.pending.clear()
        for handle in self.handles:
            handle.close()


def _boundary(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.strip() == "0":
        raise RequestError(400, f"the request body is empty: send the image(s) as multipart/form-data '{FIELD}' parts")
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1")[:60] or "none"
        raise RequestError(415, f"the request's Content-Type is {shown}; send multipart/form-data with the "
                                f"image(s) as '{FIELD}' file parts")
    if not params.get(b"boundary"):
        raise RequestError(400, "the multipart/form-data Content-Type has no boundary")
    return params[b"boundary"]


async def _drain(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read and drop up to ``budget`` more bytes of a refused body, so that the client reads the answer."""
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > budget:
                return
    except ClientDisconnect:
        return


async def receive_uploads(request: Request, limits: UploadLimits, folder: Path) -> list[Upload]:
    """The ``files`` parts of ``request`` as files in ``folder``; RequestError names what breaks a limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        # answered before any of the body is read (a client that waits for "100 Continue" sends none of it)
        raise RequestError(413, f"the request body ({int(declared):,} bytes) is larger than "
                                f"{limits.max_files} file(s) of at most {limits.max_file_bytes:,} bytes")
    stream = request.stream()
    reader = _PartReader(folder, limits)
    try:
        boundary = _boundary(request)
        parser = MultipartParser(boundary, reader.callbacks())
        received = 0
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise RequestError(413, f"the request body is larger than {limits.max_files} file(s) of at most "
                                        f"{limits.max_file_bytes:,} bytes")
            parser.write(chunk)
            if reader.pending:
                await anyio.to_thread.run_sync(reader.flush)
        parser.finalize()
        if reader.pending:
            await anyio.to_thread.run_sync(reader.flush)
    except FormParserError as e:
        reader.close_all()
        await _drain(stream, limits.max_body_bytes)
        raise RequestError(400, f"malformed multipart/form-data body: {e}") from None
    except RequestError:
        reader.close_all()
        await _drain(stream, limits.max_body_bytes)
        raise
    except ClientDisconnect:
        reader.close_all()
        raise RequestError(400, "the client closed the connection before the upload ended") from None
    if reader.open_part:
        reader.close_all()
        raise RequestError(400, "the multipart/form-data body ends inside a part (truncated upload)")
    if not reader.files:
        raise RequestError(400, f"no image in the request: send the image(s) as multipart/form-data '{FIELD}' parts")
    return reader.files


def _readable_path(upload: Upload) -> Path:
    """DICOM is read by suffix: a file named .dcm/.dicom, sent as application/dicom, or with DICM at byte 128."""
    with open(upload.path, "rb") as f:
        head = f.read(132)
    dicom = (head[128:132] == b"DICM" or upload.content_type == "application/dicom"
             or PurePosixPath(upload.filename).suffix.lower() in DICOM_SUFFIXES)
    return upload.path.rename(upload.path.with_suffix(".dcm")) if dicom else upload.path


def _named(e: Exception, path: Path, filename: str) -> str:
    """The reader's message with the client's file name where it names the temporary file."""
    return str(e).replace(f"'{path}'", repr(filename)).replace(str(path), repr(filename))


def decode_uploads(uploads: list[Upload], transform: Callable, limits: ImageLimits) -> torch.Tensor:
    """The prepared batch ``(N, 3, H, W)``; caps from the header first (413), undecodable files 422."""
    images = []
    for upload in uploads:
        path = _readable_path(upload)
        try:
            images.append(transform(read_image(path, limits=limits)))
        except ImageTooLargeError as e:
            raise RequestError(413, _named(e, path, upload.filename)) from None
        except UnreadableImageError as e:
            raise RequestError(422, _named(e, path, upload.filename)) from None
        finally:
            path.unlink(missing_ok=True)
    return torch.stack(images)
