"""One input file -> the model's input units, or the reason it cannot be read.

Runs in decode threads: Pillow releases the GIL while it decodes, so several files decode
at once beside the ONNX runs. Every failure (missing file, not an image, truncated, over
Pillow's decompression-bomb limit, a model that cannot prepare it) becomes a reason
string on the result, never an exception, so one bad file never stops a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from modelfab.imaging import to_rgb

READ_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")
"""Pillow formats read: the serving formats plus TIFF, common for industrial cameras."""

Prepare = Callable[[Image.Image], np.ndarray]
"""`model.prepare`: an RGB image -> float32 units (U, 3, S, S)."""


@dataclass
class Decoded:
    """A file read for inference: `units` set, or `error` saying why not."""

    path: str
    width: int | None = None
    height: int | None = None
    units: np.ndarray | None = None
    error: str | None = None


def read_image(path: str) -> Image.Image:
    """The file at `path` fully decoded as 8-bit RGB. Blocks (disk, CPU). Raises OSError,
    Pillow's errors (UnidentifiedImageError, DecompressionBombError) or ValueError."""
    with Image.open(path, formats=READ_FORMATS) as img:
        img.load()
        return to_rgb(img)


def decode(path: str, prepare: Prepare) -> Decoded:
    """Read and prepare `path`; never raises (see the module docstring)."""
    try:
        image = read_image(path)
    except Exception as exc:  # a file fails in many ways; each is that file's error row
        return Decoded(path, error=reason(exc))
    width, height = image.size
    try:
        units = prepare(image)
    except Exception as exc:
        return Decoded(path, width, height, error=f"cannot prepare it for the model: {exc}")
    return Decoded(path, width, height, units)


def reason(exc: Exception) -> str:
    """A short, stable explanation of why a file could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large to decode ({exc})"
    if isinstance(exc, Image.UnidentifiedImageError):
        return f"not a {', '.join(READ_FORMATS[:-1])} or {READ_FORMATS[-1]} image"
    return f"unreadable image ({type(exc).__name__}: {exc})"
