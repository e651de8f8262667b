"""What a running attempt sends and is answered (`/v1/worker/jobs/{id}/...`, job token)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelfab.schemas import limits
from modelfab.schemas.common import RequestModel, WireModel
from modelfab.schemas.datasets import DatasetVersion
from modelfab.schemas.jobs import JobStatus, Resources


class WorkerEvent(RequestModel):
    message: str = Field(default="", max_length=limits.MAX_EVENT_MESSAGE)
    type: str = "message"
    level: str = "info"
    data: dict[str, Any] | None = None
    at: float | None = Field(default=None, description="UNIX time the worker saw it.")


class WorkerEvents(RequestModel):
    events: list[WorkerEvent]


class ArtifactRecord(WireModel):
    """An artifact as the artifacts upload answered it: its content's sha256 and size, what
    the attempt sent. The store is shared by every tenant, so the answer never says where it
    keeps the bytes nor whether they were there already; a model report names them by
    sha256."""

    name: str
    format: str = Field(description="pytorch, onnx, json, numpy, png, safetensors or text.")
    sha256: str
    size_bytes: int = Field(ge=0, le=limits.MAX_SIZE_BYTES)


class ModelReport(RequestModel):
    """The model a succeeded attempt registers, in the transaction that ends it."""

    name: str = Field(description="Registry name (lower-case slug); versions count per name.")
    task: str
    artifacts: list[ArtifactRecord] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    base_model: str | None = Field(default=None, description="Hub model id it started from.")
    parent_version_id: str | None = Field(
        default=None,
        description="The registered version of the same tenant it was made from (a "
        "distilled student's teacher), kept in its lineage.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="What serving needs: labels, input size, mean/std."
    )


class WorkerComplete(RequestModel):
    attempt: int | None = Field(default=None, ge=1, le=limits.MAX_COUNT)
    status: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    model: ModelReport | None = Field(default=None, description="One model to register.")
    models: list[ModelReport] = Field(
        default_factory=list,
        max_length=limits.MAX_MODELS_PER_JOB,
        description="Models to register, each its own version (after `model`, if given).",
    )
    ended_at: float | None = Field(
        default=None,
        ge=0,
        description="UNIX time the attempt ended, by the worker's clock: the end metered "
        "(clamped between the attempt's start and the report's arrival), so time the report "
        "waited for an unreachable control plane is not billed.",
    )


class ServingAnnounce(RequestModel):
    url: str = Field(description="Where the replica's server answers, http://host:port.")
    secret: str = Field(
        min_length=limits.REPLICA_SECRET_MIN_CHARS,
        max_length=limits.REPLICA_SECRET_MAX_CHARS,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The bearer token the replica's server requires: the gateway and the "
        "endpoint controller present it; it is never shown to tenants.",
    )


class BaseWeights(WireModel):
    model_id: str
    uri: str = Field(description="file:// URL of the imported weights.")
    sha256: str


class WorkerDataset(DatasetVersion):
    """The dataset version as the attempt sees it: the tenant's view plus where the content
    lies. Only the job token reads it, never a tenant's key."""

    uri: str = Field(description="file:// URL of the content's folder in the dataset store.")


class JobSpec(WireModel):
    """Everything the worker needs to run the attempt."""

    job_id: str
    attempt: int
    recipe: str
    params: dict[str, Any]
    dataset: WorkerDataset | None
    resources: Resources
    cuda_visible_devices: str | None
    base_weights: BaseWeights | None
    hub_dir: str | None = Field(
        default=None,
        description="file: URL of this node's hub folder, where chat models are converted "
        "on first use (workers of the local executor share the control plane's disk).",
    )


class EventsAccepted(WireModel):
    accepted: int
    cancel_requested: bool = Field(description="Stop soon: the job is being cancelled.")


class ArtifactStored(ArtifactRecord):
    object: Literal["artifact"] = "artifact"


class AttemptEnded(WireModel):
    status: JobStatus = Field(description="The job's status after this attempt.")


class ReplicaAnnounced(WireModel):
    object: Literal["replica"] = "replica"
    job_id: str
    url: str
    ready: bool


class FileRef(WireModel):
    uri: str
    sha256: str


class ModelFiles(WireModel):
    """Where a model version keeps what a replica loads: every serving artifact its task's
    served-model kind needs, and for the ONNX kinds the two by role."""

    version_id: str
    task: str | None = Field(default=None, description="The model's task.")
    artifacts: dict[str, FileRef] = Field(
        default_factory=dict, description="Serving artifacts by file name."
    )
    onnx: FileRef | None = Field(default=None, description="model.onnx, for ONNX kinds.")
    labels: FileRef | None = Field(default=None, description="labels.json, for ONNX kinds.")
