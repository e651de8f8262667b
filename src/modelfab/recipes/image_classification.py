"""`image-classification`: fine-tune a foundation model from the hub on a folder-per-class
dataset, evaluate it on a held-out split, export ONNX (parity-checked) and register it.

This module is the light half the control plane imports to validate params; the training
itself lives in `modelfab.recipes.vision` and is imported only by the worker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from modelfab.recipes.base import RecipeSpec, known_hub_model
from modelfab.schemas.common import Name
from modelfab.schemas.limits import MAX_SEED
from modelfab.tasks import IMAGE_CLASSIFICATION

Auto = Literal["auto"]


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    base_model: str = Field(
        default="efficientnet-lite0", description="Foundation model id from `modelfab hub list`."
    )
    epochs: Annotated[int, Field(ge=1, le=1000)] | Auto = Field(
        default="auto", description="Upper bound on epochs; early stopping usually ends sooner."
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        default="auto", description="Images per step (auto: 64 on GPU, 32 on CPU)."
    )
    lr: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        default="auto", description="AdamW peak learning rate (auto: 1e-3 x batch/64)."
    )
    image_size: Annotated[int, Field(ge=16, le=1024)] | Auto = Field(
        default="auto", description="Square input side in pixels (auto: from model and device)."
    )
    val_fraction: float = Field(
        default=0.2, gt=0, lt=0.9, description="Share held out for evaluation, per class."
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of the split, the augmentation and init."
    )
    patience: int = Field(
        default=3, ge=1, le=1000, description="Epochs without improvement to stop."
    )
    augment: bool = Field(default=True, description="Random crops, flips and colour jitter.")
    num_workers: Annotated[int, Field(ge=0, le=64)] | Auto = Field(
        default="auto", description="Data-loading processes."
    )
    min_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Acceptance gate: fail the job, registering nothing, below this accuracy.",
    )
    model_name: Name | None = Field(
        default=None, description="Registry name (default: the dataset's name)."
    )

    @field_validator("base_model")
    @classmethod
    def _known_base_model(cls, value: str) -> str:
        return known_hub_model(value, IMAGE_CLASSIFICATION)


RECIPE = RecipeSpec(
    name="image-classification",
    version="1",
    description="Fine-tune a hub model on a folder-per-class dataset; evaluate, export, register.",
    params=Params,
    entrypoint="modelfab.recipes.vision.job:run",
    needs_dataset=True,
    tasks=(IMAGE_CLASSIFICATION,),
)
