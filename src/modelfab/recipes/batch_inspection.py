"""`batch-inspection`: run a registered model version over a folder (or a list file) of
images of any size as a scheduled job, streaming one result row per image to Parquet or
CSV, with heatmaps of anomalies, a summary and an HTML report of the top-scoring images.

    modelfab jobs create --recipe batch-inspection --param model=castings \\
        --param input=/archive --param output=/results [--gpus 1] --wait

A run is resumable: rerun (or let the job retry) into the same output folder and finished
images are skipped. This module is the light half the control plane imports; the work is
the inspection application's (`modelfab.apps.inspection.batch`, torch-free), which only the
worker imports, through the entrypoint string.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from modelfab.recipes.base import RecipeSpec

Auto = Literal["auto"]


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    model: str = Field(
        min_length=1,
        description="The registered model to run: NAME, NAME:VERSION or NAME@ALIAS.",
    )
    model_version_id: str | None = Field(
        default=None,
        description="Set by the control plane at create: the version `model` named then, so "
        "every attempt (and a resume) runs the same one.",
    )
    input: str = Field(
        description="Absolute path on the node: a folder of images (walked recursively) or a "
        "text file with one image path per line (relative to the file).",
    )
    output: str = Field(
        description="Absolute path of the results folder on the node (created; rerun into "
        "it to resume).",
    )
    format: Literal["parquet", "csv"] = Field(
        default="parquet", description="Results file: results.parquet or results.csv."
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto = Field(
        default="auto", description="Images per ONNX run (auto: 32 on GPU, 8 on CPU)."
    )
    decode_workers: Annotated[int, Field(ge=1, le=64)] | Auto = Field(
        default="auto",
        description="Threads decoding images ahead of inference (auto: from the CPUs).",
    )
    part_rows: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Rows per results part (a part is also written every ~10 s); a crash "
        "redoes at most the rows not yet in a part.",
    )
    save_heatmaps: Literal["none", "anomalies", "all"] = Field(
        default="anomalies",
        description="Which detector heatmaps to save as PNGs under output/heatmaps/.",
    )
    report_top: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="The highest-scoring images shown, with overlays, in report.html.",
    )
    threshold: float | None = Field(
        default=None,
        description="Anomaly threshold overriding the model's calibrated one.",
    )

    @field_validator("input", "output")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError(f"must be an absolute path on the server, got {value!r}")
        return os.path.normpath(value)

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


RECIPE = RecipeSpec(
    name="batch-inspection",
    version="1",
    description="Run a registered model over a folder of images; results to Parquet/CSV, "
    "heatmaps, summary and report; resumable.",
    params=Params,
    entrypoint="modelfab.apps.inspection.batch.job:run",
    needs_model=True,
    server_paths=("input", "output"),
)
