"""`anomaly-detection`: a PatchCore detector fitted on good images only (train/good of an
anomaly-detection dataset), its threshold calibrated on held-out good images (and on the
test/ images when the dataset has defective ones), evaluated on test/, exported whole to
ONNX (parity-checked) and registered, ready to serve.

This module is the light half the control plane imports to validate params; the work lives
in `modelfab.recipes.anomaly` and is imported only by the worker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from modelfab.recipes.base import RecipeSpec, known_hub_model
from modelfab.schemas.common import Name
from modelfab.schemas.limits import MAX_SEED
from modelfab.tasks import ANOMALY_DETECTION

Auto = Literal["auto"]


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    base_model: str = Field(
        default="efficientnet-lite0",
        description="Frozen pretrained backbone from `modelfab hub list` whose mid-level "
        "features describe each patch.",
    )
    image_size: Annotated[int, Field(ge=32, le=4096)] = Field(
        default=224, description="Side in pixels each image (or tile) is scored at."
    )
    layers: list[Annotated[int, Field(ge=0, le=16)]] = Field(
        default=[2, 3],
        min_length=1,
        max_length=8,
        description="Backbone feature levels used (timm indices).",
    )
    tiling: bool = Field(
        default=False,
        description="Score high-resolution images as overlapping image_size tiles at full "
        "resolution, for defects too small to survive resizing the whole image.",
    )
    tile_overlap: float = Field(default=0.25, ge=0, le=0.9, description="Tile overlap share.")
    coreset_ratio: float = Field(
        default=0.1, gt=0, le=1, description="Share of training patches kept in the bank."
    )
    max_bank: int = Field(
        default=16_384,
        ge=1,
        le=1 << 24,
        description="Hard cap on memory-bank patches (bounds memory).",
    )
    feature_dim: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="Randomly project features to this many dimensions.",
    )
    sigma: float = Field(default=4.0, ge=0, description="Gaussian smoothing of maps, pixels.")
    calibration_fraction: Annotated[float, Field(ge=0, le=0.5)] | Auto = Field(
        default="auto",
        description="Share of the good images held out to calibrate the threshold (auto: "
        "enough for about 20 images, between 10% and 30%).",
    )
    threshold_quantile: float = Field(
        default=0.99, gt=0, le=1, description="Quantile of held-out good scores to start from."
    )
    threshold_margin: float = Field(
        default=0.1, ge=0, description="Margin over that quantile, in (quantile - median)."
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="Images per forward pass.")
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of the hold-out split and the coreset."
    )
    min_image_auroc: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Acceptance gate: with defective test images, fail the job (registering "
        "nothing) below this image AUROC.",
    )
    model_name: Name | None = Field(
        default=None, description="Registry name (default: the dataset's name)."
    )

    @field_validator("base_model")
    @classmethod
    def _known_base_model(cls, value: str) -> str:
        return known_hub_model(value)


RECIPE = RecipeSpec(
    name="anomaly-detection",
    version="1",
    description="Fit a PatchCore detector on good images; calibrate, evaluate, export, register.",
    params=Params,
    entrypoint="modelfab.recipes.anomaly.job:run",
    needs_dataset=True,
    tasks=(ANOMALY_DETECTION,),
)
