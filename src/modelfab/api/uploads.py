"""Multipart uploads read as a stream, only after the route's authentication passed.

FastAPI parses `UploadFile`/`Form` parameters before it resolves dependencies, so a body
declared that way is spooled to disk before a stranger gets the 401. Routes taking large
bodies therefore declare no body parameters (their form is documented with
`multipart_body`) and call `read_multipart` in the route, after their auth dependencies
ran. File parts go straight into the scratch folder, counted against their limit as they
arrive; the files are removed when the `async with` block ends, whatever happened.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from modelfab.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from modelfab.schemas.common import ErrorResponse

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 64 * 2**10
"""Largest value of a plain (non-file) form field."""

UNSUPPORTED: dict[int | str, dict[str, Any]] = {
    415: {"model": ErrorResponse, "description": "Not multipart/form-data"}
}
"""The extra response a streamed multipart route documents."""

_WRITE_BATCH = 2**20


def multipart_body(
    title: str, *, fields: Mapping[str, str], files: Mapping[str, str]
) -> dict[str, Any]:
    """`openapi_extra` documenting a required multipart body: `fields` and `files` map each
    part's name to its description (an empty one is left out), all required."""

    def prop(name: str, description: str, binary: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"title": name.title(), "type": "string"}
        if binary:
            out["contentMediaType"] = "application/octet-stream"
        if description:
            out["description"] = description
        return out

    props = {n: prop(n, d, False) for n, d in fields.items()}
    props.update({n: prop(n, d, True) for n, d in files.items()})
    schema = {"title": title, "type": "object", "properties": props, "required": list(props)}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


@dataclass
class FilePart:
    """A file part written to `path` (removed when the upload's block ends)."""

    path: Path
    filename: str
    size: int = 0


@dataclass
class Multipart:
    """The parts of one multipart body that the route asked for."""

    fields: dict[str, str] = dataclass_field(default_factory=dict)
    files: dict[str, FilePart] = dataclass_field(default_factory=dict)

    def field(self, name: str) -> str:
        """The value of form field `name`. Raises InvalidRequest (param `name`) when absent."""
        if name not in self.fields:
            raise InvalidRequest(f"form field {name!r} is missing; send it", param=name)
        return self.fields[name]

    def file(self, name: str) -> FilePart:
        """File part `name`. Raises InvalidRequest (param `name`) when absent."""
        if name not in self.files:
            raise InvalidRequest(f"file part {name!r} is missing; attach the file", param=name)
        return self.files[name]


class _Reader:
    """python-multipart callbacks that keep the wanted parts within their limits."""

    def __init__(self, scratch: Path, files: Mapping[str, int], fields: Collection[str]):
        self.scratch, self.limits, self.wanted = scratch, files, fields
        self.out = Multipart()
        self._header_field = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file: FilePart | None = None
        self._sink: IO[bytes] | None = None
        self._pending: list[tuple[IO[bytes], bytes | None]] = []
        """Writes (and closes, as None) not done yet: done off the event loop by `drain`."""
        self._pending_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_data,
            "on_part_end": self._on_end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._value, self._file = {}, None, bytearray(), None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name in self.out.fields or name in self.out.files:
            raise InvalidRequest(f"form part {name!r} is sent twice; send it once", param=name)
        if name in self.limits and b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            fd, path = tempfile.mkstemp(prefix="part-", dir=self.scratch)
            self._sink = os.fdopen(fd, "wb")
            self._file = self.out.files[name] = FilePart(Path(path), filename)
        self._name = name

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        name, chunk = self._name or "", data[start:end]
        if self._file is not None and self._sink is not None:
            self._file.size += len(chunk)
            if self._file.size > self.limits[name]:
                raise PayloadTooLarge(
                    f"{name} is larger than {self.limits[name]} bytes; send a smaller file",
                    param=name,
                )
            self._pending.append((self._sink, chunk))
            self._pending_bytes += len(chunk)
        elif name in self.wanted:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes", param=name
                )

    def _on_end(self) -> None:
        if self._sink is not None:
            self._pending.append((self._sink, None))
            self._sink = None
        elif self._name is not None and self._name in self.wanted and self._file is None:
            self.out.fields[self._name] = self._value.decode("utf-8", "replace")

    @property
    def inside_part(self) -> bool:
        """Whether a file part was begun and not ended (a truncated body)."""
        return self._sink is not None

    async def drain(self, *, force: bool = False) -> None:
        """Do the pending writes in a worker thread (the event loop also serves predictions)
        once about `_WRITE_BATCH` bytes are pending, or at once with `force`."""
        if not self._pending or (self._pending_bytes < _WRITE_BATCH and not force):
            return
        ops, self._pending, self._pending_bytes = self._pending, [], 0
        await run_in_threadpool(_apply, ops)

    def close(self) -> None:
        for sink, _ in self._pending:
            sink.close()
        if self._sink is not None:
            self._sink.close()
        for part in self.out.files.values():
            with suppress(FileNotFoundError):
                part.path.unlink()


def _apply(ops: list[tuple[IO[bytes], bytes | None]]) -> None:
    for sink, data in ops:
        if data is None:
            sink.close()
        else:
            sink.write(data)


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMediaType(
            "send the body as multipart/form-data (with a boundary)", param="Content-Type"
        )
    return options[b"boundary"]


@asynccontextmanager
async def read_multipart(
    request: Request, *, scratch: Path, files: Mapping[str, int], fields: Collection[str]
) -> AsyncIterator[Multipart]:
    """Read the request's multipart body: `files` maps each file part to its largest size in
    bytes, `fields` names the plain fields kept (at most MAX_FIELD_BYTES each); other parts
    are read and dropped. Call it only once the caller is authenticated.

    Raises UnsupportedMediaType (415) for a body that is not multipart/form-data,
    PayloadTooLarge (413, param: the part) past a file's limit, InvalidRequest for a
    malformed body or a part sent twice. Written files are removed on any error and when
    the block ends.
    """
    reader = _Reader(scratch, files, fields)
    parser = MultipartParser(_boundary(request), reader.callbacks())
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                await reader.drain()
            parser.finalize()
            await reader.drain(force=True)
        except ValueError as exc:  # python-multipart's MultipartParseError
            raise InvalidRequest(f"malformed multipart body: {exc}", param="file") from exc
        if reader.inside_part:
            raise InvalidRequest("the multipart body ends inside a part", param="file")
        yield reader.out
    finally:
        reader.close()
