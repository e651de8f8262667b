"""What the detector is fed: images as normalised tensors at their scored size, and tiles.

Inputs are PIL images (any mode: converted to RGB with `modelfab.imaging.to_rgb`
and normalised with the backbone's mean/std) or a float tensor (N, 1 | 3, H, W) already
normalised. Without tiling every image is resized to `size` x `size` (no crop, so no
defect at the border is cut off); with tiling it keeps its resolution, its short side
raised to `size` when smaller, and is cut into overlapping `size` x `size` tiles.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modelfab.errors import InvalidRequest
from modelfab.imaging import to_rgb
from modelfab.recipes.anomaly.maps import split_tiles, tile_starts

ImageInput = Sequence[Image.Image] | torch.Tensor
"""PIL images, or normalised float images (N, 1 | 3, H, W)."""


class ImageFiles(Sequence[Image.Image]):
    """Image files opened only when an item is taken (Pillow then reads the header; pixels
    are decoded on use), so fitting on a large dataset never holds all its images."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> ImageFiles: ...

    def __getitem__(self, index: int | slice) -> Image.Image | ImageFiles:
        if isinstance(index, slice):
            return ImageFiles(self.paths[index])
        return Image.open(self.paths[index])


@dataclass(frozen=True)
class ImagePrep:
    """Turns inputs into normalised tensors and tiles (see the module docstring)."""

    size: int
    tiling: bool
    overlap: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def tensors(self, images: ImageInput) -> Iterator[torch.Tensor]:
        """Each image as a normalised float tensor (C, H, W) at its scored size.

        Raises InvalidRequest (param "images") for a tensor not shaped (N, 1 | 3, H, W).
        """
        if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] not in (1, 3)):
            raise InvalidRequest(
                f"image tensors must be (N, 1 or 3, H, W), got {tuple(images.shape)}",
                param="images",
            )
        for image in images:
            tensor = image.float() if isinstance(image, torch.Tensor) else self._from_pil(image)
            target = self.target_size(tensor.shape[-2], tensor.shape[-1])
            if tuple(tensor.shape[-2:]) != target:
                resized = F.interpolate(tensor[None], size=target, mode="bilinear", antialias=True)
                tensor = resized[0]
            yield tensor

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of this size is scored at."""
        if not self.tiling:
            return self.size, self.size
        scale = max(1.0, self.size / min(height, width))
        return max(self.size, round(height * scale)), max(self.size, round(width * scale))

    def units(self, image: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(tiles (T, C, S, S), their offsets); the image itself when not tiling."""
        if not self.tiling:
            return image[None], [(0, 0)]
        return split_tiles(image, self.size, self.overlap)

    def count_units(self, images: ImageInput) -> int:
        """How many tiles (or images) `units` gives over all `images`, from sizes only."""
        if not self.tiling:
            return len(images)
        total = 0
        for image in images:
            if isinstance(image, torch.Tensor):
                height, width = int(image.shape[-2]), int(image.shape[-1])
            else:
                width, height = image.size
            h, w = self.target_size(height, width)
            rows = tile_starts(h, self.size, self.overlap)
            total += len(rows) * len(tile_starts(w, self.size, self.overlap))
        return total

    def _from_pil(self, image: Image.Image) -> torch.Tensor:
        rgb = to_rgb(image)
        height, width = self.target_size(rgb.height, rgb.width)
        if (rgb.height, rgb.width) != (height, width):  # PIL's resize, as the replicas do
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255)
        normalised = ((pixels - mean) / std).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept indices, held-out indices), both sorted, drawn by a seeded permutation: about
    `fraction` of n held out, at least one of each when n >= 2 and fraction > 0."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[k:]), sorted(int(i) for i in order[:k])


def subset(images: ImageInput, indices: Sequence[int]) -> ImageInput:
    """The images at `indices`, of the same kind as `images`."""
    if isinstance(images, torch.Tensor):
        return images[list(indices)]
    if isinstance(images, ImageFiles):
        return ImageFiles([images.paths[i] for i in indices])
    return [images[i] for i in indices]
