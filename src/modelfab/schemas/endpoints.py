"""Endpoints (registered models served by replica jobs) and what predict answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelfab.schemas import limits
from modelfab.schemas.common import Cpus, Gpus, MemoryBytes, OpenModel, RequestModel, WireModel
from modelfab.schemas.jobs import JobStatus
from modelfab.schemas.limits import NAME_PATTERN

READY, FAILED = "ready", "failed"
"""Endpoint statuses a client waits for (others: starting, degraded, updating, deleting)."""


class EndpointCreate(RequestModel):
    name: str = Field(
        description="Lower-case slug, unique in the tenant.",
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    model: str = Field(description="NAME (latest), NAME:VERSION or NAME@ALIAS.")
    replicas: int = Field(default=1, ge=1, le=limits.MAX_REPLICAS, description="Replica processes.")
    gpus: Gpus = Field(default=0.0, description="GPUs per replica (fractions pack).")
    cpus: Cpus = Field(default=1.0, description="CPU slots per replica.")
    memory_bytes: MemoryBytes = Field(default=0, description="Memory per replica.")
    max_batch_size: int = Field(
        default=limits.DEFAULT_MAX_BATCH_SIZE,
        ge=1,
        le=limits.MAX_BATCH_SIZE,
        description="Dynamic batch limit.",
    )
    max_wait_ms: float = Field(
        default=limits.DEFAULT_MAX_WAIT_MS,
        ge=0,
        le=limits.MAX_WAIT_MS,
        description="How long a request waits for a fuller batch.",
    )


class EndpointUpdate(RequestModel):
    model: str | None = Field(default=None, description="Roll to this model version.")
    replicas: int | None = Field(default=None, ge=1, le=limits.MAX_REPLICAS)
    gpus: Gpus | None = None
    cpus: Cpus | None = None
    memory_bytes: MemoryBytes | None = None
    max_batch_size: int | None = Field(default=None, ge=1, le=limits.MAX_BATCH_SIZE)
    max_wait_ms: float | None = Field(default=None, ge=0, le=limits.MAX_WAIT_MS)


class EndpointModel(WireModel):
    ref: str = Field(description="As given: NAME, NAME:VERSION or NAME@ALIAS.")
    name: str | None
    version: int | None
    version_id: str


class AdapterStats(WireModel):
    """A LoRA adapter an engine knows, resident or not."""

    name: str = Field(description="The engine's name for it: its model version id.")
    model: str | None = Field(
        default=None, description="NAME:VERSION (filled in by the control plane)."
    )
    loaded: bool = Field(description="Its weights are resident now.")
    pinned: bool = Field(description="Once loaded, never evicted.")
    bytes: int = Field(description="Its weights, counted against the adapter memory budget.")
    running: int = Field(description="Sequences generating with it now.")


class ModelStats(WireModel):
    """What a replica knows cheaply of one loaded model. Chat models report their engine's
    figures; other kinds only their batcher's queue (the chat-only fields are null)."""

    version_id: str
    model: str | None = Field(
        default=None, description="NAME:VERSION (filled in by the control plane)."
    )
    queue_depth: int = Field(description="Requests (chat) or items (others) waiting.")
    running: int = Field(
        description="Sequences generating (chat) or items in the batch that runs (others)."
    )
    max_concurrency: int | None = Field(default=None, description="Sequences at most (chat).")
    tokens_per_s: float | None = Field(
        default=None, description="Generated tokens per second over the last window_s (chat)."
    )
    window_s: float | None = None
    generated_tokens: int | None = Field(
        default=None, description="Generated since the model loaded (chat)."
    )
    prompt_tokens: int | None = Field(
        default=None, description="Prompt tokens since the model loaded (chat)."
    )
    adapter_budget_bytes: int | None = Field(
        default=None, description="Memory for resident adapters (chat)."
    )
    adapters: list[AdapterStats] = Field(default_factory=list)


class ReplicaHealth(WireModel):
    """A replica's answer to `GET /health` (the controller's probe)."""

    status: str
    models: list[str] = Field(description="Loaded version ids, least recently used first.")
    outstanding: int = Field(description="Requests in flight.")
    stats: list[ModelStats] = Field(default_factory=list, description="One per loaded model.")


class ReplicaStats(WireModel):
    """A replica's latest report, as the controller's probe last took it."""

    reported_at: float = Field(description="When the control plane took it (epoch seconds).")
    outstanding: int = Field(description="Requests in flight.")
    models: list[ModelStats]


class ReplicaJob(WireModel):
    job_id: str
    status: JobStatus
    attempt: int
    ready: bool
    url: str | None = Field(description="Set once the replica is ready.")
    cpus: float
    gpus: float
    stats: ReplicaStats | None = Field(
        default=None,
        description="Its latest report; null until probed, or when the last is stale.",
    )


class Rollout(WireModel):
    """A model change in progress: the controller warms the target on every ready replica,
    then switches the endpoint to it."""

    model: EndpointModel = Field(description="The version being rolled out.")
    warmed: int = Field(description="Replicas that loaded it so far.")
    of: int | None = Field(description="Replicas to warm; null until the controller started.")


class Endpoint(WireModel):
    object: Literal["endpoint"] = "endpoint"
    id: str
    name: str
    model: EndpointModel
    status: str = Field(description="starting, ready, degraded, updating, failed or deleting.")
    replicas: int
    ready_replicas: int
    gpus: float
    cpus: float
    memory_bytes: int
    max_batch_size: int
    max_wait_ms: float
    error: dict[str, Any] | None = Field(description="code, message, param when it failed.")
    rollout: Rollout | None = Field(default=None, description="The model change in progress.")
    rollout_error: dict[str, Any] | None = Field(
        default=None,
        description="Why the last model change was refused (the old version kept serving).",
    )
    path: str = Field(description="Where to POST images.")
    replica_jobs: list[ReplicaJob]
    created_at: float
    updated_at: float | None


class EndpointDeleted(WireModel):
    object: Literal["endpoint"] = "endpoint"
    name: str
    deleted: bool
    drained: int = Field(description="Requests in flight when draining began.")


class PredictionItem(OpenModel):
    """One image's result. A classifier adds label, score and top_k; an anomaly detector
    adds score, threshold, is_anomaly, label and (unless turned off) a heatmap."""

    index: int = Field(description="Position of the image in the request.")
    name: str = Field(description="Its file name.")


class PredictionUsage(OpenModel):
    items: int


class Prediction(OpenModel):
    """What a replica answers to predict, passed through by the gateway. An anomaly
    detector's answer also carries `threshold`, the one its verdicts used (kept as an extra
    field so that a classifier's answer reads back without it)."""

    object: Literal["list"] = "list"
    model_version: str = Field(description="Id of the model version that answered.")
    task: str
    data: list[PredictionItem]
    usage: PredictionUsage
