"""The model registry: models, their immutable versions, artifacts, aliases and lineage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelfab.schemas import limits
from modelfab.schemas.common import RequestModel, WireModel


class AliasSet(RequestModel):
    alias: str = Field(description="Lower-case slug, e.g. production.")
    version: int = Field(ge=1, le=limits.MAX_VERSION)


class Artifact(WireModel):
    name: str = Field(description="File name, e.g. model.onnx.")
    format: str = Field(description="pytorch, onnx, json, numpy or png.")
    sha256: str
    size_bytes: int


class ModelVersion(WireModel):
    id: str
    object: Literal["model.version"] = "model.version"
    name: str
    ref: str = Field(description="NAME:VERSION")
    task: str
    version: int
    aliases: list[str] = Field(description="The aliases pointing at this version.")
    job_id: str | None
    dataset_version_id: str | None
    recipe: str
    recipe_version: str
    base_model: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    extra: dict[str, Any] = Field(description="What serving needs: labels, input size...")
    artifacts: list[Artifact]
    lineage: dict[str, Any]
    created_at: float


class ModelVersionDetail(ModelVersion):
    versions: list[int] = Field(description="Every version number of the model.")


class Model(WireModel):
    """A registered model, in the shape of OpenAI's model list too (`id`, `object`,
    `created`, `owned_by`), so `client.models.list()` of the `openai` client reads the
    registry: `id` is the name, which `model=` takes."""

    id: str = Field(description="The model's name: what `model` takes in OpenAI's routes.")
    object: Literal["model"] = "model"
    created: int = Field(description="When it was created, UNIX seconds (OpenAI's field).")
    owned_by: str = Field(description="The tenant that owns it (OpenAI's field).")
    name: str
    task: str
    latest_version: int
    versions: int = Field(description="How many versions it has.")
    aliases: dict[str, int] = Field(description="alias -> version number.")
    created_at: float


class LineageVersion(WireModel):
    id: str
    ref: str
    name: str
    version: int
    task: str
    created_at: float


class LineageDataset(WireModel):
    id: str
    ref: str | None
    sha256: str | None


class LineageJob(WireModel):
    id: str | None
    recipe: str | None
    recipe_version: str | None
    attempt: int | None
    status: str | None = Field(description="None once the job is gone.")


class BaseModelRef(WireModel):
    id: str
    arch: str | None = None
    source: str | None = None
    licence: str | None = None


class LineageParent(WireModel):
    id: str
    ref: str = Field(description="NAME:VERSION when it was made.")


class Lineage(WireModel):
    object: Literal["model.lineage"] = "model.lineage"
    model_version: LineageVersion
    dataset: LineageDataset | None
    job: LineageJob
    base_model: BaseModelRef | None
    parent_model: LineageParent | None = Field(
        default=None,
        description="The registered version it was made from (a distilled student's teacher).",
    )
    params: dict[str, Any] | None
    code_version: str | None
    endpoints: list[Any]
