"""Patch features for PatchCore: mid-level maps of a frozen, pretrained hub backbone.

Built offline through `modelfab.hub.loading.create_model` (the efficientnet-lite0 package
weights by default); the layers past the deepest one used are pruned away, so a forward
pass costs only what the features need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from modelfab.errors import ModelfabError
from modelfab.hub.catalog import get_entry
from modelfab.hub.loading import create_model

IMAGENET_CLASSES = 1000
"""Head size the backbone is built with, so that packaged ImageNet weights load strictly;
the head is pruned right after."""


class PatchFeatureExtractor(nn.Module):
    """Normalised images (N, 3, S, S) -> patch features (N, D, H', W').

    The maps of `layers` (timm `feature_info` indices) are each upsampled (bilinear) to the
    size of the largest, concatenated, averaged over `aggregation` x `aggregation`
    neighbourhoods (PatchCore's local aggregation, borders averaging only real pixels; 1
    skips it) and, with a `projection` (C, D), mapped to D dimensions. For efficientnet-lite0
    layers (2, 3): C = 40 + 112 = 152 and H' = S / 8. A 1-channel input is repeated to 3
    channels, which is exact when the normalisation is the same for every channel (as for
    efficientnet-lite0).
    """

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[int],
        projection: torch.Tensor | None,
        aggregation: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)
        self.aggregation = aggregation
        self.projection: torch.Tensor | None
        self.register_buffer("projection", projection)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        intermediates = cast(Callable[..., list[torch.Tensor]], self.backbone.forward_intermediates)
        maps = intermediates(images, indices=self.layers, intermediates_only=True)
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        resized = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear")
            for m in maps
        ]
        feats = torch.cat(resized, dim=1)
        if self.aggregation > 1:
            feats = F.avg_pool2d(
                feats,
                self.aggregation,
                stride=1,
                padding=self.aggregation // 2,
                count_include_pad=False,
            )
        if self.projection is not None:
            feats = torch.einsum("nchw,cd->ndhw", feats, self.projection)
        return feats


def random_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian matrix (in_dim, out_dim) scaled by 1/sqrt(out_dim), which keeps
    Euclidean distances in expectation (Johnson-Lindenstrauss)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=generator) / math.sqrt(out_dim)


def build_extractor(
    backbone: str,
    layers: Sequence[int],
    *,
    feature_dim: int | None = None,
    aggregation: int = 1,
    seed: int = 0,
    weights: Path | None = None,
    projection: torch.Tensor | None = None,
) -> PatchFeatureExtractor:
    """A frozen extractor on the CPU in eval mode, over hub model `backbone`.

    `projection` (as saved with a detector) wins over `feature_dim`; otherwise a
    `feature_dim` below the backbone's width draws `random_projection(C, feature_dim, seed)`.
    `seed` also fixes the random init of a backbone that has no weights (source "scratch",
    for tests), without touching the global torch RNG.
    Blocks while loading the weights (well under a second for efficientnet-lite0).

    Raises:
        NotFound: `backbone` is not in the hub catalog (param "backbone").
        ModelfabError: "backbone_unsupported" (param "backbone") when the architecture has
            no multi-scale feature maps, (param "layers") when `layers` are out of range;
            "detector_invalid" when `projection` does not fit the layers; the hub's errors
            (base_model_unavailable, hub_weights_mismatch) when the weights are missing.
    """
    entry = get_entry(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a backbone without weights ("scratch") is then rebuilt alike
        model = create_model(entry, num_classes=IMAGENET_CLASSES, weights=weights)
    width = _prune_to(model, backbone, layers)
    if projection is None and feature_dim is not None and feature_dim < width:
        projection = random_projection(width, feature_dim, seed)
    if projection is not None and projection.shape[0] != width:
        raise ModelfabError(
            f"the saved projection expects {projection.shape[0]} channels but {backbone} "
            f"layers {list(layers)} give {width}",
            code="detector_invalid",
            param="backbone",
        )
    model.eval().requires_grad_(False)
    return PatchFeatureExtractor(model, layers, projection, aggregation).eval()


def _prune_to(model: nn.Module, backbone: str, layers: Sequence[int]) -> int:
    """Drop what `model` computes past the deepest of `layers`; returns their total width.
    Raises ModelfabError "backbone_unsupported" (see `build_extractor`)."""
    info = getattr(model, "feature_info", None)
    if not hasattr(model, "forward_intermediates") or info is None:
        raise ModelfabError(
            f"{backbone} has no multi-scale feature maps; choose another backbone",
            code="backbone_unsupported",
            param="backbone",
        )
    channels = [d["num_chs"] for d in info]
    if not layers or min(layers) < 0 or max(layers) >= len(channels):
        raise ModelfabError(
            f"layers {list(layers)} are out of range for {backbone}, which has feature "
            f"levels 0..{len(channels) - 1}; pick from those (default (2, 3))",
            code="backbone_unsupported",
            param="layers",
        )
    prune = cast(Callable[..., list[int]], model.prune_intermediate_layers)
    prune(indices=list(layers), prune_head=True)
    return sum(channels[i] for i in layers)
