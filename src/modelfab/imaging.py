"""Image helpers every layer shares (Pillow only: no torch, no web stack)."""

from __future__ import annotations

from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB: greyscale, palette (with transparency), RGBA, CMYK and 16-bit
    greyscale all work (16-bit values are rescaled to 8 bits, not clipped); alpha is
    dropped. Training, replicas, batch inspection and reports all read images through it,
    so they see the same pixels. The result is decoded (an RGB `img` is returned itself,
    loaded), so it outlives the file it came from."""
    if img.mode == "RGB":
        img.load()
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = img.point(lambda v: v / 256).convert("L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")
