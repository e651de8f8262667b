"""Request bodies to inputs: read a body within a size limit, split it into named files
(multipart/form-data or JSON with base64), and decode each file: into an RGB image
(`decode_image`, the default) or, for kinds that serve text, UTF-8 text (`decode_text`).

Every problem is a ModelfabError a client can act on: 415 for a content type we do not
read, 413 for a body over the limit, 422 naming the offending image otherwise.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from modelfab.errors import InvalidRequest, ModelfabError, PayloadTooLarge, UnsupportedMediaType
from modelfab.imaging import to_rgb

ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")
"""Pillow formats a replica decodes; fewer decoders is less attack surface. TIFF is what
industrial cameras write (often 16-bit greyscale)."""

_ACCEPTED = "PNG, JPEG, BMP, WEBP or TIFF"
_USAGE = (
    "send multipart/form-data with one file part per image, or application/json with "
    '{"images": ["<base64>", ...]}'
)

NamedBytes = tuple[str, bytes]
"""(name, file bytes): the name is the part's filename, or "image-<index>"."""


def check_content_length(header: str | None, *, max_body_bytes: int) -> None:
    """Refuse a declared Content-Length over the limit before reading anything.
    Raises PayloadTooLarge (param "body")."""
    if header is not None and header.strip().isdigit() and int(header) > max_body_bytes:
        raise _too_large(max_body_bytes)


async def read_body(chunks: AsyncIterator[bytes], *, max_body_bytes: int) -> bytes:
    """Join the body's chunks, raising PayloadTooLarge as soon as they pass the limit (a
    missing or false Content-Length does not get a larger body through)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body_bytes:
            raise _too_large(max_body_bytes)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is over {limit} bytes; send fewer or smaller images per request",
        param="body",
    )


def parse_images(content_type: str | None, body: bytes, *, max_images: int) -> list[NamedBytes]:
    """The image files in a request body, in order, as (name, bytes); not decoded yet.

    multipart/form-data: every part with a filename (any field name). application/json:
    {"images": ["<base64>" | {"name": str, "data": "<base64>"}, ...]}; data URLs are fine.

    Raises UnsupportedMediaType (415) for any other or a missing content type;
    InvalidRequest (422) codes "invalid_multipart", "invalid_json" (param "body" for any
    failure to decode the body, deep nesting and bad encodings included), "invalid_base64"
    (param "images[i]"), "no_images", "too_many_images".
    """
    media, params = parse_options_header(content_type or "")
    media_type = media.decode("latin-1").lower()
    if media_type not in _BODY_CODES:
        got = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise UnsupportedMediaType(f"cannot read a body with {got}; {_USAGE}", param="content-type")
    try:
        if media_type == "multipart/form-data":
            images = _parse_multipart(body, params.get(b"boundary"), max_images)
        else:
            images = _parse_json(body, max_images)
    except ModelfabError:
        raise
    except Exception as exc:  # decoders fail in many ways on hostile bodies; all are the body's
        # (RecursionError on deep nesting, UnicodeDecodeError, ValueError, ...)
        raise InvalidRequest(
            f"the body cannot be read as {media_type} ({type(exc).__name__}: {exc}); {_USAGE}",
            param="body",
            code=_BODY_CODES[media_type],
        ) from exc
    if not images:
        raise InvalidRequest(
            f"the request holds no images; {_USAGE}", param="images", code="no_images"
        )
    return images


_BODY_CODES = {"multipart/form-data": "invalid_multipart", "application/json": "invalid_json"}
"""The media types a body may have -> the error code when it cannot be decoded."""


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise InvalidRequest(
            f"a request may hold at most {max_images} images; split them over several requests",
            param="images",
            code="too_many_images",
        )


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    filename: str | None = None
    chunks: list[bytes] = field(default_factory=list)


class _MultipartCollector:
    """python-multipart callbacks that keep the file parts."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.files: list[NamedBytes] = []
        self.part = _Part()
        self.field = b""
        self.value = b""

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self.field.strip().lower()] = self.value.strip()
        self.field = self.value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        if b"filename" in params:
            raw = params[b"filename"].decode("utf-8", "replace")
            self.part.filename = raw.replace("\\", "/").rsplit("/", 1)[-1]  # no client paths
            _check_count(len(self.files) + 1, self.max_images)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.filename is not None:
            self.part.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self.part.filename is not None:
            name = self.part.filename or f"image-{len(self.files)}"
            self.files.append((name, b"".join(self.part.chunks)))


def _parse_multipart(body: bytes, boundary: bytes | None, max_images: int) -> list[NamedBytes]:
    if not boundary:
        raise InvalidRequest(
            "Content-Type multipart/form-data needs a boundary parameter; let your HTTP "
            "client build the multipart body",
            param="content-type",
            code="invalid_multipart",
        )
    collector = _MultipartCollector(max_images)
    parser = MultipartParser(boundary, collector.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise _bad_multipart(str(exc)) from exc
    if parser.state != MultipartState.END:
        raise _bad_multipart("the body ends before the closing boundary")
    return collector.files


def _bad_multipart(why: str) -> InvalidRequest:
    return InvalidRequest(
        f"the multipart body is malformed ({why}); {_USAGE}", param="body", code="invalid_multipart"
    )


def _parse_json(body: bytes, max_images: int) -> list[NamedBytes]:
    try:
        doc = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise InvalidRequest(
            f"the body is not valid JSON ({exc}); {_USAGE}", param="body", code="invalid_json"
        ) from exc
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise InvalidRequest(
            f'the JSON body needs an "images" list; {_USAGE}', param="images", code="invalid_json"
        )
    _check_count(len(images), max_images)
    return [_json_image(i, item) for i, item in enumerate(images)]


def _json_image(i: int, item: object) -> NamedBytes:
    name, data = f"image-{i}", item
    if isinstance(item, dict):
        name, data = str(item.get("name") or name), item.get("data")
    if not isinstance(data, str):
        raise InvalidRequest(
            f'images[{i}] must be a base64 string or {{"name": ..., "data": "<base64>"}}',
            param=f"images[{i}]",
            code="invalid_json",
        )
    return name, _b64(i, data)


def _b64(i: int, text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: keep what follows "base64,"
        text = text.partition(",")[2]
    if "\n" in text or "\r" in text or " " in text:  # line-wrapped output of `base64`
        text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"images[{i}] is not valid base64 ({exc}); encode the file bytes with standard base64",
            param=f"images[{i}]",
            code="invalid_base64",
        ) from exc


def decode_image(name: str, data: bytes) -> Image.Image:
    """Fully decode `data` (PNG, JPEG, BMP, WEBP or TIFF; of a multi-page TIFF the first
    page) into an 8-bit RGB image. Blocks (CPU).

    Raises InvalidRequest code "invalid_image" (param `name`) for anything else, or for a
    corrupt, truncated or oversized (decompression bomb) file.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        img.load()
        return to_rgb(img)
    except Image.UnidentifiedImageError as exc:
        why = "not a " + _ACCEPTED + " file"
        raise _invalid_image(name, why) from exc
    except Exception as exc:  # decoders fail in many ways on bad data; all are the file's
        raise _invalid_image(name, f"{type(exc).__name__}: {exc}") from exc


def _invalid_image(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name} is not a readable image ({why}); send {_ACCEPTED}",
        param=name,
        code="invalid_image",
    )


def decode_text(name: str, data: bytes) -> str:
    """`data` as UTF-8 text (a leading BOM dropped), for kinds that serve text
    (`serving.protocol.DecodesInput`). Raises InvalidRequest code "invalid_text" (param
    `name`) when it is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start}); send UTF-8",
            param=name,
            code="invalid_text",
        ) from exc
