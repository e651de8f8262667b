from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from modelfab.errors import InvalidRequest, PayloadTooLarge
from modelfab.serving.inputs import (
    UnsupportedMediaType,
    check_content_length,
    decode_image,
    parse_images,
    read_body,
)
from tests.serving.factories import image_bytes


def multipart(
    files: list[tuple[str, Any]], data: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """(content type, body) as httpx encodes a form upload."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse_json(doc: object, max_images: int = 8) -> list[tuple[str, bytes]]:
    return parse_images("application/json", json.dumps(doc).encode(), max_images=max_images)


# --- bodies -----------------------------------------------------------------------------


def raw_multipart(parts: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """(content type, body) from (Content-Disposition value, data) pairs, byte for byte."""
    body = b"".join(
        b"--xyz\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"
        for disposition, data in parts
    )
    return "multipart/form-data; boundary=xyz", body + b"--xyz--\r\n"


def test_multipart_keeps_every_file_part_in_order_with_its_name() -> None:
    a, b = image_bytes(seed=1), image_bytes(seed=2)
    ctype, body = multipart(
        [("file", ("a.png", a)), ("images", ("C:\\Users\\me\\b.png", b))],
        data={"note": "form fields are ignored"},
    )
    assert parse_images(ctype, body, max_images=8) == [("a.png", a), ("b.png", b)]


def test_multipart_names_a_file_without_a_filename_by_its_index() -> None:
    ctype, body = raw_multipart(
        [
            ('form-data; name="a"; filename="x.png"', b"X"),
            ('form-data; name="b"; filename=""', b"Y"),
        ]
    )
    assert parse_images(ctype, body, max_images=8) == [("x.png", b"X"), ("image-1", b"Y")]


def test_json_takes_base64_strings_objects_and_data_urls() -> None:
    a, b, c = image_bytes(seed=1), image_bytes(seed=2), image_bytes(seed=3)
    wrapped = "\n".join(b64(c)[i : i + 76] for i in range(0, len(b64(c)), 76))
    doc = {
        "images": [b64(a), {"name": "b.jpg", "data": "data:image/png;base64," + b64(b)}, wrapped]
    }
    assert parse_json(doc) == [("image-0", a), ("b.jpg", b), ("image-2", c)]


@pytest.mark.parametrize("ctype", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(ctype: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as err:
        parse_images(ctype, b"{}", max_images=8)
    assert (err.value.status, err.value.code, err.value.param) == (
        415,
        "unsupported_media_type",
        "content-type",
    )
    assert "multipart/form-data" in err.value.message


@pytest.mark.parametrize(
    ("body", "code", "param", "says"),
    [
        (b"{not json", "invalid_json", "body", "not valid JSON"),
        (b'{"image": []}', "invalid_json", "images", '"images" list'),
        (b"[1, 2]", "invalid_json", "images", '"images" list'),
        (b'{"images": ["aGk=", 3]}', "invalid_json", "images[1]", "images[1] must be"),
        (b'{"images": ["aGk=", "%%%"]}', "invalid_base64", "images[1]", "images[1] is not valid"),
        (b'{"images": [{"name": "a", "data": "abc"}]}', "invalid_base64", "images[0]", "base64"),
        (b'{"images": []}', "no_images", "images", "no images"),
    ],
)
def test_malformed_json_names_the_problem(body: bytes, code: str, param: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_images("application/json; charset=utf-8", body, max_images=8)
    assert (err.value.status, err.value.code, err.value.param) == (422, code, param)
    assert says in err.value.message


@pytest.mark.parametrize(
    ("ctype", "body", "code"),
    [
        ("application/json", b'{"images": ' + b"[" * 5000, "invalid_json"),
        (
            "application/json",
            b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "invalid_json",
        ),
        ("application/json", b'{"images": ["\xff\xfe"]}', "invalid_json"),
        ("application/json", b"\xff\xfe\x00{", "invalid_json"),
    ],
)
def test_bodies_no_decoder_can_read_are_422_naming_the_body(
    ctype: str, body: bytes, code: str
) -> None:
    """A RecursionError in the JSON decoder was a 500: any decode failure is the body's."""
    with pytest.raises(InvalidRequest) as err:
        parse_images(ctype, body, max_images=8)
    assert (err.value.status, err.value.code, err.value.param) == (422, code, "body")


def test_too_many_images_names_the_limit() -> None:
    for parse in (
        lambda: parse_json({"images": [b64(b"x")] * 3}, max_images=2),
        lambda: parse_images(
            *multipart([("f", (f"{i}.png", b"x")) for i in range(3)]), max_images=2
        ),
    ):
        with pytest.raises(InvalidRequest, match="at most 2 images") as err:
            parse()
        assert (err.value.code, err.value.param) == ("too_many_images", "images")


def test_multipart_without_files_boundary_or_end_is_422() -> None:
    ctype, body = raw_multipart([('form-data; name="only"', b"fields")])
    with pytest.raises(InvalidRequest) as err:
        parse_images(ctype, body, max_images=8)
    assert err.value.code == "no_images"
    with pytest.raises(InvalidRequest, match="boundary") as err:
        parse_images("multipart/form-data", body, max_images=8)
    assert err.value.code == "invalid_multipart"
    ctype, body = multipart([("f", ("a.png", image_bytes()))])
    with pytest.raises(InvalidRequest, match="malformed") as err:
        parse_images(ctype, body[: len(body) // 2], max_images=8)
    assert (err.value.code, err.value.param) == ("invalid_multipart", "body")


def test_bodies_over_the_limit_are_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 100

    assert asyncio.run(read_body(chunks(), max_body_bytes=500)) == b"x" * 500
    with pytest.raises(PayloadTooLarge) as err:
        asyncio.run(read_body(chunks(), max_body_bytes=499))
    assert (err.value.status, err.value.param) == (413, "body")
    check_content_length("500", max_body_bytes=500)
    check_content_length(None, max_body_bytes=500)
    with pytest.raises(PayloadTooLarge, match="over 500 bytes"):
        check_content_length("501", max_body_bytes=500)


# --- decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "TIFF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    img = decode_image("a", image_bytes(size=(20, 10), fmt=fmt))
    assert (img.mode, img.size) == ("RGB", (20, 10))


def test_greyscale_palette_alpha_and_16_bit_become_rgb_like_training() -> None:
    cases: list[tuple[str, Any]] = [("L", 7), ("P", 3), ("RGBA", (1, 2, 3, 4)), ("I;16", 65535)]
    for mode, value in cases:
        buf = io.BytesIO()
        Image.new(mode, (4, 4), value).save(buf, format="PNG")
        img = decode_image("a.png", buf.getvalue())
        assert img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]  # 16-bit white stays white


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_deflate"])
def test_16_bit_greyscale_tiff_keeps_its_range(compression: str | None) -> None:
    """Industrial cameras write 16-bit TIFF: rescaled to 8 bits (v / 256), not clipped."""
    ramp = (np.arange(64, dtype=np.uint16) * 1024).reshape(8, 8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF", compression=compression)
    img = decode_image("cam.tif", buf.getvalue())
    assert (img.mode, img.size) == ("RGB", (8, 8))
    assert np.array_equal(np.asarray(img)[..., 1], (ramp // 256).astype(np.uint8))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not a PNG, JPEG, BMP, WEBP or TIFF file"),
        (b"hello, world", "not a PNG, JPEG, BMP, WEBP or TIFF file"),
        (image_bytes(fmt="GIF"), "not a PNG, JPEG, BMP, WEBP or TIFF file"),
        (image_bytes(size=(64, 64))[:300], "truncated"),
        (image_bytes(size=(64, 64), fmt="JPEG")[:400], "truncated"),
    ],
)
def test_unreadable_images_are_422_naming_the_file(data: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        decode_image("part-3.png", data)
    assert (err.value.status, err.value.code, err.value.param) == (
        422,
        "invalid_image",
        "part-3.png",
    )
    assert err.value.message.startswith("part-3.png is not a readable image (")
    assert says.lower() in err.value.message.lower()
    assert "send PNG, JPEG, BMP, WEBP or TIFF" in err.value.message
