"""Image helpers every layer shares (Pillow and numpy only: no torch, no web stack):
reading pixels the one way, and colouring a heatmap onto an image."""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)
"""Lower-case suffixes of the files modelfab treats as images; compare with
`Path(name).suffix.lower()`."""

# A jet-like colour map: dark blue (cold) -> cyan -> yellow -> red (hot).
_STOPS = (0.0, 0.11, 0.36, 0.62, 0.87, 1.0)
_COLOURS = ((0, 0, 0.5), (0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0), (0.8, 0, 0))


def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(x, _STOPS, [c[i] for c in _COLOURS]) for i in range(3)]
    return (np.stack(channels, axis=1) * 255).astype(np.float32)


JET_LUT = _jet_lut()
"""(256, 3) float32 RGB in 0..255: row i is the colour of heat i/255."""


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


def overlay(
    image: Image.Image, heat: np.ndarray, *, alpha_min: float = 0.1, alpha_max: float = 0.65
) -> Image.Image:
    """`heat` (2-D, 0..1, any size: resized bilinearly to the image) coloured with `JET_LUT`
    and blended onto `image` with an alpha growing from `alpha_min` (cold) to `alpha_max`
    (hot), so good regions stay readable. Returns a new RGB image of `image`'s size.

    Raises ValueError when `heat` is not 2-D. NaN counts as cold, values are clipped to 0..1.
    """
    rgb = to_rgb(image)
    h = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if h.ndim != 2:
        raise ValueError(f"heat must be 2-D, not of shape {h.shape}")
    if h.shape != (rgb.height, rgb.width):
        h = np.asarray(Image.fromarray(h).resize(rgb.size, Image.Resampling.BILINEAR))
    h = np.clip(h, 0.0, 1.0)
    colour = JET_LUT[np.round(h * 255).astype(np.uint8)]
    alpha = (alpha_min + (alpha_max - alpha_min) * h)[..., None]
    out = np.asarray(rgb, dtype=np.float32) * (1.0 - alpha) + colour * alpha
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
