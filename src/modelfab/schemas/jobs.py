"""Jobs, their events and logs, and the recipes they run."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from modelfab.schemas import limits
from modelfab.schemas.common import Cpus, Gpus, MemoryBytes, RequestModel, WireModel
from modelfab.schemas.datasets import DatasetVersion


class JobStatus(StrEnum):
    """A job's status; the values are what the database and the API hold."""

    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _S.VALIDATING: frozenset({_S.QUEUED, _S.CANCELLED}),
    _S.QUEUED: frozenset({_S.RUNNING, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.QUEUED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
"""status -> the statuses it may move to (`compute.lifecycle` applies every move). A status
with no way out is terminal."""

TERMINAL = frozenset(s for s, out in TRANSITIONS.items() if not out)
"""Statuses a job never leaves."""
ACTIVE = frozenset(s for s, out in TRANSITIONS.items() if out)


class Resources(WireModel):
    """What a job holds, as answered (requests are checked by `ResourceRequest`)."""

    gpus: float = Field(default=0.0, description="0, a fraction below 1, or a whole number.")
    cpus: float = Field(default=1.0, description="CPU slots.")
    memory_bytes: int = Field(default=0, description="0 means no memory request.")


class ResourceRequest(RequestModel):
    """What a job asks for, on the `limits.RESOURCE_STEP` grid."""

    gpus: Gpus = Field(
        default=0.0, description="0, a fraction below 1, or a whole number; steps of 0.01."
    )
    cpus: Cpus = Field(default=1.0, description="CPU slots, in steps of 0.01.")
    memory_bytes: MemoryBytes = Field(default=0, description="0 means no memory request.")


class JobCreate(RequestModel):
    recipe: str
    params: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = Field(default=None, description="NAME or NAME:VERSION.")
    resources: ResourceRequest = Field(default_factory=ResourceRequest)
    priority: int = Field(default=0, ge=limits.MIN_PRIORITY, le=limits.MAX_PRIORITY)
    max_attempts: int = Field(default=limits.DEFAULT_MAX_ATTEMPTS, ge=1, le=limits.MAX_ATTEMPTS)


class Job(WireModel):
    id: str
    object: Literal["job"] = "job"
    recipe: str
    params: dict[str, Any]
    dataset: DatasetVersion | None
    status: JobStatus
    resources: Resources
    priority: int
    attempt: int
    max_attempts: int
    failures: int
    cancel_requested: bool
    node: str | None
    cuda_visible_devices: str | None
    error: dict[str, Any] | None = Field(description="code, message, param when it failed.")
    result: dict[str, Any] | None = Field(description="What the recipe returned.")
    created_at: float
    queued_at: float | None
    started_at: float | None = Field(
        description="When the current attempt's worker began (fetched its spec): usage is "
        "metered from here to finished_at."
    )
    finished_at: float | None = Field(
        description="When the last attempt ended, as its worker saw it (never later than "
        "the control plane heard of it)."
    )


class JobEvent(WireModel):
    id: int = Field(description="Increasing; pass the last one as `after` to page.")
    object: Literal["job.event"] = "job.event"
    attempt: int
    created_at: float
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class JobLogs(WireModel):
    attempt: int
    text: str
    offset: int
    next_offset: int = Field(description="Pass it as `offset` to read on.")
    eof: bool = Field(description="The attempt is over and everything was read.")


class Recipe(WireModel):
    name: str
    version: str
    description: str
    needs_dataset: bool
    params: dict[str, Any] = Field(description="The params' JSON schema.")
