"""Sample inspection data made on the spot from real textures that ship with scikit-image
(brick, grass, gravel); nothing is downloaded. Everything is fixed by the seed or the
`random.Random` passed in.

- `make_surface_dataset`: an image-classification folder of surface crops, half with a
  drawn defect (scratch, spot, crack); `modelfab quickstart` trains its classifier on it.
- `texture_surface`, `draw_defect_with_mask`, `make_inspection_set`,
  `write_anomaly_dataset`: crops of one texture with defects drawn together with their
  ground-truth masks, in the MVTec AD layout; the quickstart's inspection station, the
  benchmarks and the anomaly detector's tests use them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTURES = ("brick", "grass", "gravel")
DEFECT_KINDS = ("scratch", "spot", "crack")
SHADES = ((20, 20, 20), (240, 240, 235))
"""A defect is drawn dark or bright, as `draw_defect` does."""

Shape = tuple[str, tuple[float, float, float, float], int]
"""One drawing primitive: ("line" | "ellipse", segment or bounding box, line width)."""


# -- surfaces of mixed textures, for a classifier ------------------------------------------
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
    kind = rng.choice(DEFECT_KINDS)
    shade = rng.choice(SHADES)
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


# -- one texture with defects and their masks, for a detector ------------------------------
@dataclass(frozen=True)
class InspectionSet:
    """Images with their labels ("good" or a defect kind) and masks (None for good ones)."""

    images: list[Image.Image]
    labels: list[str]
    masks: list[np.ndarray | None]
    """Boolean (H, W) arrays, True on the defect."""


def texture_surface(
    rng: random.Random, size: int, name: str = "brick", *, zoom: float = 1.25, tint: float = 0.05
) -> Image.Image:
    """A `size` x `size` RGB crop of texture `name` at a random place, scaled by up to
    `zoom` (crop side drawn in [size, zoom * size], at most the texture), each channel
    scaled by a factor drawn in [1 - tint, 1 + tint]."""
    source = texture(name)
    crop = min(rng.randint(size, int(size * zoom)), min(source.shape))
    y, x = rng.randint(0, source.shape[0] - crop), rng.randint(0, source.shape[1] - crop)
    gray = Image.fromarray(source[y : y + crop, x : x + crop]).resize((size, size))
    factors = [rng.uniform(1 - tint, 1 + tint) for _ in range(3)]
    rgb = np.stack([np.asarray(gray, dtype=np.float32) * f for f in factors], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def draw_defect_with_mask(
    image: Image.Image, rng: random.Random, kind: str | None = None, *, scale: float = 1.0
) -> tuple[Image.Image, np.ndarray]:
    """(image with one defect drawn, its boolean mask). `kind` is one of DEFECT_KINDS (random
    when None); `scale` shrinks the defect relative to the image side (1.0: as in
    `draw_defect`). Raises ValueError for an unknown kind."""
    kind = kind if kind is not None else rng.choice(DEFECT_KINDS)
    if kind not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; one of {DEFECT_KINDS}")
    out = image.convert("RGB")
    mask = Image.new("L", out.size, 0)
    shapes = _defect_shapes(kind, out.size, rng, scale)
    shade = rng.choice(SHADES) if kind != "crack" else (15, 15, 15)
    for target, fill in ((ImageDraw.Draw(out), shade), (ImageDraw.Draw(mask), 255)):
        for shape, xy, width in shapes:
            if shape == "line":
                target.line(xy, fill=fill, width=width)
            else:
                target.ellipse(xy, fill=fill)
    return out.filter(ImageFilter.GaussianBlur(0.6)), np.asarray(mask) > 127


def _defect_shapes(
    kind: str, size: tuple[int, int], rng: random.Random, scale: float
) -> list[Shape]:
    """The primitives of one defect: ("line" | "ellipse", xy box or segment, line width)."""
    w, h = size
    s = min(w, h) * scale
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    if kind == "scratch":
        half = rng.uniform(0.25, 0.4) * s
        angle = rng.uniform(0, np.pi)
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        return [("line", (cx - dx, cy - dy, cx + dx, cy + dy), max(3, round(s / 24)))]
    if kind == "spot":
        r = rng.uniform(0.08, 0.16) * s
        return [("ellipse", (cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), 0)]
    shapes: list[Shape] = []
    x, y = cx, cy - 0.3 * s
    for _ in range(5):
        nx, ny = x + rng.uniform(-0.12, 0.12) * s, y + rng.uniform(0.08, 0.14) * s
        shapes.append(("line", (x, y, nx, ny), max(3, round(s / 32))))
        x, y = nx, ny
    return shapes


def make_inspection_set(
    rng: random.Random,
    *,
    texture_name: str,
    good: int,
    defective: int,
    size: int,
    tint: float = 0.05,
    scale: float = 1.0,
) -> InspectionSet:
    """`good` clean surfaces then `defective` ones, cycling through DEFECT_KINDS (`tint`
    as in `texture_surface`, `scale` as in `draw_defect_with_mask`)."""
    images: list[Image.Image] = []
    labels: list[str] = []
    masks: list[np.ndarray | None] = []
    for i in range(good + defective):
        image = texture_surface(rng, size, texture_name, tint=tint)
        if i < good:
            images.append(image)
            labels.append("good")
            masks.append(None)
            continue
        kind = DEFECT_KINDS[(i - good) % len(DEFECT_KINDS)]
        image, mask = draw_defect_with_mask(image, rng, kind, scale=scale)
        images.append(image)
        labels.append(kind)
        masks.append(mask)
    return InspectionSet(images=images, labels=labels, masks=masks)


def write_anomaly_dataset(
    root: Path, train: list[Image.Image], test: InspectionSet, *, fmt: str = "png"
) -> Path:
    """Write the MVTec AD layout: train/good/NNN, test/<label>/NNN and, for each defect,
    ground_truth/<label>/NNN_mask.png. Returns `root`."""
    for i, image in enumerate(train):
        _save(image, root / "train" / "good" / f"{i:03d}.{fmt}")
    for i, (image, label, mask) in enumerate(
        zip(test.images, test.labels, test.masks, strict=True)
    ):
        _save(image, root / "test" / label / f"{i:03d}.{fmt}")
        if mask is not None:
            mask_image = Image.fromarray(mask.astype(np.uint8) * 255)
            _save(mask_image, root / "ground_truth" / label / f"{i:03d}_mask.png")
    return root


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
