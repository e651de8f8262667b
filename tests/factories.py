"""Factories shared across test packages: tiny deterministic images (Pillow only)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(
    path: Path,
    size: tuple[int, int] = (8, 6),
    mode: str = "RGB",
    seed: int = 0,
    fmt: str | None = None,
) -> Path:
    """Write a small image whose pixels depend on `seed`; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size)
    w, h = size
    for i in range(w * h):
        v = (seed * 37 + i * 11) % 256
        img.putpixel((i % w, i // w), v if mode == "L" else (v, 255 - v, seed % 256))
    img.save(path, format=fmt)
    return path
