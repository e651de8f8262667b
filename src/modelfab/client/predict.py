"""The SDK's predict helpers: images split into requests of bounded count and size, each
image as its multipart part, and the answers merged back into one Prediction."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from pathlib import Path

from modelfab.schemas.endpoints import Prediction


def _size(image: Path | tuple[str, bytes]) -> int:
    return image.stat().st_size if isinstance(image, Path) else len(image[1])


def chunks(
    images: list[Path | tuple[str, bytes]], *, max_images: int, max_bytes: int
) -> Iterator[list[Path | tuple[str, bytes]]]:
    """`images` in order, in runs of at most `max_images` and `max_bytes` (an image larger
    than `max_bytes` alone); nothing for no images."""
    chunk: list[Path | tuple[str, bytes]] = []
    size = 0
    for image in images:
        n = _size(image)
        if chunk and (len(chunk) >= max_images or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(image)
        size += n
    if chunk or not images:
        yield chunk


def image_part(image: Path | tuple[str, bytes]) -> tuple[str, bytes, str]:
    if isinstance(image, Path):
        return image.name, image.read_bytes(), _image_type(image.name)
    return image[0], image[1], _image_type(image[0])


def merged(answers: list[tuple[int, Prediction]]) -> Prediction:
    """Several answers as one: items re-indexed by each request's `offset`, usage summed."""
    if len(answers) == 1:
        return answers[0][1]
    first = answers[0][1]
    data = [
        item.model_copy(update={"index": offset + item.index})
        for offset, answer in answers
        for item in answer.data
    ]
    items = sum(answer.usage.items for _, answer in answers)
    return first.model_copy(
        update={"data": data, "usage": first.usage.model_copy(update={"items": items})}
    )


def _image_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
