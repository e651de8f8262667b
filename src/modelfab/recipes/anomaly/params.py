"""Typed parameters of a PatchCore detector. Imports neither torch nor numpy, so the
control plane can validate a job's params without the training stack."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from modelfab.errors import InvalidRequest


@dataclass(frozen=True)
class PatchCoreParams:
    """How a PatchCore detector is built. Raises InvalidRequest naming the field."""

    backbone: str = "efficientnet-lite0"
    """Hub id of the frozen, pretrained backbone (`modelfab hub list`)."""
    layers: tuple[int, ...] = (2, 3)
    """Feature levels (timm `feature_info` indices) concatenated into patch features; for
    efficientnet-lite0, 2 and 3 are the 40- and 112-channel maps at strides 8 and 16."""
    aggregation: int = 1
    """Side (odd) of the neighbourhood patch features are averaged over. PatchCore uses
    3; with efficientnet-lite0 features 1 (none) scored better on every texture tried
    (image AUROC on brick/grass/gravel at 224 px: 0.96/0.88/0.92 with 3, 0.998/0.98/0.99
    with 1), as these maps already see wide and blurring them hides thin defects."""
    image_size: int = 224
    """Side in pixels each image (or, with tiling, each tile) is scored at."""
    feature_dim: int | None = None
    """Project patch features to this many dimensions with a fixed random projection, to
    bound the bank's memory; None keeps the backbone's (152 for the default)."""
    coreset_ratio: float = 0.1
    """Share of the training patches kept in the memory bank (before `max_bank`)."""
    max_bank: int = 16_384
    """Hard cap on memory-bank patches (the bank takes max_bank x dim x 2 bytes on disk)."""
    coreset_projection_dim: int = 128
    """Dimensions of the random projection the coreset selection measures distances in."""
    sigma: float = 4.0
    """Gaussian smoothing of the anomaly map, in pixels of the scored image (0: none)."""
    tiling: bool = False
    """Score high-resolution images as overlapping `image_size` tiles at full resolution,
    for defects too small to survive resizing the whole image."""
    tile_overlap: float = 0.25
    """Overlap between neighbouring tiles, as a share of the tile side, in [0, 0.9]."""
    calibration_fraction: float = 0.1
    """Share of the good training images held out of the bank to calibrate the threshold
    (at least one when there are two or more images; 0 disables it)."""
    threshold_quantile: float = 0.99
    """Quantile of the held-out good scores the threshold starts from."""
    threshold_margin: float = 0.1
    """Added to that quantile, in units of (quantile - median) of the good scores."""
    batch_size: int = 16
    """Images (or tiles) per forward pass."""
    seed: int = 0
    """Seed of the hold-out split, the projections and the coreset's first patch."""

    def __post_init__(self) -> None:
        checks = {
            "image_size": 32 <= self.image_size <= 4096,
            "layers": len(self.layers) >= 1 and all(i >= 0 for i in self.layers),
            "aggregation": self.aggregation >= 1 and self.aggregation % 2 == 1,
            "feature_dim": self.feature_dim is None or self.feature_dim >= 1,
            "coreset_ratio": 0 < self.coreset_ratio <= 1,
            "max_bank": self.max_bank >= 1,
            "coreset_projection_dim": self.coreset_projection_dim >= 1,
            "sigma": self.sigma >= 0,
            "tile_overlap": 0 <= self.tile_overlap <= 0.9,
            "calibration_fraction": 0 <= self.calibration_fraction <= 0.5,
            "threshold_quantile": 0 < self.threshold_quantile <= 1,
            "threshold_margin": self.threshold_margin >= 0,
            "batch_size": self.batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidRequest(
                    f"{name}={getattr(self, name)!r} is out of range; see PatchCoreParams."
                    f"{name} for the allowed values",
                    param=name,
                )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchCoreParams:
        """Params from `to_dict` output; unknown keys are ignored (newer writers)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "layers" in values:
            values["layers"] = tuple(values["layers"])
        return cls(**values)
