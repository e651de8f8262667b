"""Sample data sets made on the spot from real textures that ship with scikit-image
(brick, grass, gravel): surface crops, some with drawn defects (scratches, spots, cracks).
Used by `modelfab quickstart`, the benchmarks and tests; nothing is downloaded."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "spot", "crack")


def texture(name: str) -> np.ndarray:
    """A 512x512 uint8 grayscale texture from scikit-image's bundled data."""
    from skimage import data

    image: np.ndarray = getattr(data, name)()
    return image


def surface(rng: random.Random, size: int) -> Image.Image:
    """A random crop of a random texture, tinted, as an RGB image of `size` pixels."""
    source = texture(rng.choice(TEXTURES))
    crop = rng.randint(size, min(source.shape) // 2)
    y, x = rng.randint(0, source.shape[0] - crop), rng.randint(0, source.shape[1] - crop)
    gray = Image.fromarray(source[y : y + crop, x : x + crop]).resize((size, size))
    tint = [rng.uniform(0.8, 1.15) for _ in range(3)]
    rgb = np.stack([np.asarray(gray, dtype=np.float32) * t for t in tint], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def draw_defect(image: Image.Image, rng: random.Random) -> Image.Image:
    """Draw one defect: a dark or bright scratch, a stain-like spot, or a branching crack."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    s = out.size[0]
    kind = rng.choice(DEFECTS)
    shade = rng.choice([(20, 20, 20), (240, 240, 235)])
    if kind == "scratch":
        x0, y0 = rng.uniform(0.1, 0.9) * s, rng.uniform(0.05, 0.3) * s
        x1, y1 = rng.uniform(0.1, 0.9) * s, rng.uniform(0.7, 0.95) * s
        draw.line((x0, y0, x1, y1), fill=shade, width=max(3, s // 24))
    elif kind == "spot":
        r = rng.uniform(0.08, 0.16) * s
        cx, cy = rng.uniform(0.25, 0.75) * s, rng.uniform(0.25, 0.75) * s
        draw.ellipse((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=shade)
    else:
        x, y = rng.uniform(0.2, 0.8) * s, rng.uniform(0.1, 0.2) * s
        for _ in range(6):
            nx, ny = x + rng.uniform(-0.12, 0.12) * s, y + rng.uniform(0.08, 0.16) * s
            draw.line((x, y, nx, ny), fill=(15, 15, 15), width=max(3, s // 32))
            x, y = nx, ny
    return out.filter(ImageFilter.GaussianBlur(0.6))


def make_surface_dataset(root: Path, *, per_class: int, size: int = 96, seed: int = 0) -> Path:
    """Write an image-classification folder `root/{ok,defect}/NNN.png`; returns `root`."""
    rng = random.Random(seed)
    for label in ("ok", "defect"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = surface(rng, size)
            if label == "defect":
                image = draw_defect(image, rng)
            image.save(root / label / f"{i:03d}.png")
    return root
