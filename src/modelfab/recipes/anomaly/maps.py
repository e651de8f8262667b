"""Anomaly maps: upsampling, Gaussian smoothing, and overlapping tiles stitched back.

Maps are float tensors (N, H, W) of anomaly scores (distances in feature space). Tile
offsets come from `modelfab.serving.anomaly.tile_starts`, the one implementation replicas
use too (its numpy `stitch` and `gaussian_blur` reproduce the ones here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modelfab.serving.anomaly import tile_starts

__all__ = [
    "gaussian_blur",
    "gaussian_kernel",
    "split_tiles",
    "stitch",
    "tile_starts",
    "upsample",
]


def upsample(patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) patch scores -> (N, H, W), bilinear."""
    return F.interpolate(patch_scores[:, None], size=size, mode="bilinear")[:, 0]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of 2 * ceil(4 * sigma) + 1 taps."""
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W) smoothed with a separable Gaussian of `sigma` pixels; borders replicate
    the edge, so any map size works. sigma <= 0 returns `maps` unchanged."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    x = maps[:, None].float()
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def split_tiles(
    image: torch.Tensor, tile: int, overlap: float
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(C, H, W) -> (tiles (T, C, tile, tile), their (top, left) offsets), row-major."""
    _, height, width = image.shape
    offsets = [
        (top, left)
        for top in tile_starts(height, tile, overlap)
        for left in tile_starts(width, tile, overlap)
    ]
    tiles = torch.stack([image[:, y : y + tile, x : x + tile] for y, x in offsets])
    return tiles, offsets


def stitch(
    tile_maps: torch.Tensor, offsets: list[tuple[int, int]], size: tuple[int, int]
) -> torch.Tensor:
    """Tile maps (T, t, t) at `offsets` -> one (H, W) map, averaging where tiles overlap."""
    total = torch.zeros(size)
    count = torch.zeros(size)
    side = tile_maps.shape[-1]
    for tile_map, (top, left) in zip(tile_maps, offsets, strict=True):
        total[top : top + side, left : left + side] += tile_map
        count[top : top + side, left : left + side] += 1
    return total / count.clamp(min=1)
