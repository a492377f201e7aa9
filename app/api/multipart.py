"""A streaming multipart/form-data reader: the file part goes to disk as it arrives.

The body is never held in memory: the file part is written through a small buffer to the
destination file (in a worker thread, hashed on the way), and the size cap is enforced on the
declared length and again byte by byte, so an oversized upload is refused with 413 as soon as
it passes the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import BadRequest, InsufficientStorage, PayloadTooLarge, UnsupportedMediaType

FLUSH_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 1024 * 1024
MAX_FIELDS = 16


@dataclass
class UploadForm:
    """The text fields of the form and what was written for its file part."""

    fields: dict[str, str] = field(default_factory=dict)
    file_size: int = 0
    sha256: str = ""
    filename: str | None = None
    has_file: bool = False


class _FilePart:
    """The destination of the file part: buffered, hashed and written off the event loop."""

    def __init__(self, path: Path) -> None:
        self.file: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed in close()
        self.digest = hashlib.sha256()
        self.buffer = bytearray()
        self.size = 0

    def write_blocking(self, data: bytes) -> None:
        self.digest.update(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise InsufficientStorage(f"the upload could not be stored: {exc.strerror}") from None

    async def flush(self) -> None:
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            await asyncio.to_thread(self.write_blocking, data)

    def finish_blocking(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:
            raise InsufficientStorage(f"the upload could not be stored: {exc.strerror}") from None
        self.file.close()

    def close(self) -> None:
        self.file.close()


class _FormReader:
    """Callbacks for the multipart parser; the file part streams into ``destination``."""

    def __init__(
        self,
        file_field: str,
        destination: Path,
        max_file_bytes: int,
        on_file_start: Callable[[dict[str, str]], None] | None,
    ) -> None:
        self.file_field = file_field
        self.destination = destination
        self.max_file_bytes = max_file_bytes
        self.on_file_start = on_file_start
        self.form = UploadForm()
        self.file: _FilePart | None = None
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._part_name = ""
        self._in_file = False
        self._field = bytearray()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self._disposition = b""
        self._field.clear()
        self._in_file = False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise BadRequest("every form part needs Content-Disposition: form-data; name=...")
        self._part_name = raw_name.decode("utf-8", "replace")
        if self._part_name == self.file_field:
            if self.form.has_file:
                raise BadRequest(f"the form has more than one '{self.file_field}' part")
            if self.on_file_start is not None:
                self.on_file_start(self.form.fields)
            filename = options.get(b"filename")
            self.form.filename = filename.decode("utf-8", "replace") if filename else None
            self.form.has_file = True
            self.file = _FilePart(self.destination)
            self._in_file = True
        elif self._part_name in self.form.fields:
            raise BadRequest(f"form field '{self._part_name:.64}' is given twice")
        elif len(self.form.fields) >= MAX_FIELDS:
            raise BadRequest(f"the form has more than {MAX_FIELDS} fields")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.file is not None
            self.file.size += end - start
            if self.file.size > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"the model file is over the upload limit of {self.max_file_bytes} bytes"
                )
            self.file.buffer += data[start:end]
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"form field '{self._part_name:.64}' is over {MAX_FIELD_BYTES} bytes"
            )

    def part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            return
        try:
            self.form.fields[self._part_name] = self._field.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"form field '{self._part_name:.64}' is not UTF-8 text") from None

    def end(self) -> None:
        self.ended = True


def _boundary(request: Request, file_field: str) -> bytes:
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise UnsupportedMediaType(
            f"send the model as multipart/form-data with a '{file_field}' part"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart Content-Type has no boundary")
    return boundary


async def read_upload_form(
    request: Request,
    file_field: str,
    destination: Path,
    *,
    max_file_bytes: int,
    on_file_start: Callable[[dict[str, str]], None] | None = None,
) -> UploadForm:
    """Parse the multipart body, writing the ``file_field`` part (if any) to ``destination``.

    ``on_file_start`` sees the fields sent before the file, so that a bad name or an
    existing version is refused before the file is received.
    """
    boundary = _boundary(request, file_field)
    max_body = max_file_bytes + MAX_FIELDS * MAX_FIELD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the upload limit of {max_file_bytes}"
        )
    reader = _FormReader(file_field, destination, max_file_bytes, on_file_start)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if reader.file is not None and len(reader.file.buffer) >= FLUSH_BYTES:
                await reader.file.flush()
        parser.finalize()
        if not reader.ended:
            raise BadRequest("the multipart body ended before its closing boundary")
        if reader.file is not None:
            await reader.file.flush()
            await asyncio.to_thread(reader.file.finish_blocking)
    except FormParserError as exc:
        raise BadRequest(f"invalid multipart body: {exc}") from None
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the upload was complete") from None
    finally:
        if reader.file is not None:
            reader.file.close()
    if reader.file is not None:
        reader.form.file_size = reader.file.size
        reader.form.sha256 = reader.file.digest.hexdigest()
    return reader.form
