"""Request bodies. Responses are the services' dicts (documented by example in README)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TenantCreate(BaseModel):
    name: str = Field(description="Lower-case slug, unique.")
    max_gpus: float | None = Field(
        default=None, ge=0, description="Concurrent GPUs (sum of fractions)."
    )
    max_cpus: float | None = Field(default=None, ge=0, description="Concurrent CPU slots.")
    gpu_hours_budget: float | None = Field(
        default=None, ge=0, description="GPU hours; new GPU jobs are refused (429) once spent."
    )
    weight: float = Field(default=1.0, gt=0, description="Fair-share weight.")
    rate_limit_rps: float | None = Field(
        default=None, gt=0, description="Endpoint requests per second per key (429 beyond)."
    )
    role: str = Field(default="member", description="Role of the first key: admin or member.")


class TenantUpdate(BaseModel):
    max_gpus: float | None = Field(default=None, ge=0)
    max_cpus: float | None = Field(default=None, ge=0)
    gpu_hours_budget: float | None = Field(default=None, ge=0)
    weight: float | None = Field(default=None, gt=0)
    rate_limit_rps: float | None = Field(default=None, gt=0)


class KeyCreate(BaseModel):
    role: str = "member"


class DatasetFromPath(BaseModel):
    name: str
    task: str
    path: str = Field(description="A folder on the server (admin only).")


class Resources(BaseModel):
    gpus: float = Field(default=0.0, ge=0, description="0, a fraction below 1, or a whole number.")
    cpus: float = Field(default=1.0, gt=0, description="CPU slots.")
    memory_bytes: int = Field(default=0, ge=0, description="0 means no memory request.")


class JobCreate(BaseModel):
    recipe: str
    params: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = Field(default=None, description="NAME or NAME:VERSION.")
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_attempts: int = Field(default=3, ge=1, le=100)


class WorkerEvent(BaseModel):
    message: str = Field(default="", max_length=4000)
    type: str = "message"
    level: str = "info"
    data: dict[str, Any] | None = None
    at: float | None = Field(default=None, description="UNIX time the worker saw it.")


class WorkerEvents(BaseModel):
    events: list[WorkerEvent]


class ArtifactRecord(BaseModel):
    """An artifact as the artifacts upload answered it."""

    name: str
    format: str = Field(description="pytorch, onnx or json.")
    uri: str
    sha256: str
    size_bytes: int = Field(ge=0)


class ModelReport(BaseModel):
    """The model a succeeded attempt registers, in the transaction that ends it."""

    name: str = Field(description="Registry name (lower-case slug); versions count per name.")
    task: str
    artifacts: list[ArtifactRecord] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    base_model: str | None = Field(default=None, description="Hub model id it started from.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="What serving needs: labels, input size, mean/std."
    )


class WorkerComplete(BaseModel):
    attempt: int | None = None
    status: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    model: ModelReport | None = None


class AliasSet(BaseModel):
    alias: str = Field(description="Lower-case slug, e.g. production.")
    version: int = Field(ge=1)


class EndpointCreate(BaseModel):
    name: str = Field(description="Lower-case slug, unique in the tenant.")
    model: str = Field(description="NAME (latest), NAME:VERSION or NAME@ALIAS.")
    replicas: int = Field(default=1, ge=1, le=32, description="Replica processes.")
    gpus: float = Field(default=0.0, ge=0, description="GPUs per replica (fractions pack).")
    cpus: float = Field(default=1.0, gt=0, description="CPU slots per replica.")
    memory_bytes: int = Field(default=0, ge=0, description="Memory per replica.")
    max_batch_size: int = Field(default=8, ge=1, le=1024, description="Dynamic batch limit.")
    max_wait_ms: float = Field(
        default=5.0, ge=0, le=1000, description="How long a request waits for a fuller batch."
    )


class EndpointUpdate(BaseModel):
    model: str | None = Field(default=None, description="Roll to this model version.")
    replicas: int | None = Field(default=None, ge=1, le=32)
    gpus: float | None = Field(default=None, ge=0)
    cpus: float | None = Field(default=None, gt=0)
    memory_bytes: int | None = Field(default=None, ge=0)
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_wait_ms: float | None = Field(default=None, ge=0, le=1000)


class ServingAnnounce(BaseModel):
    url: str = Field(description="Where the replica's server answers, http://host:port.")
