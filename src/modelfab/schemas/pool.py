"""The pool: nodes, devices, what runs where, and free capacity."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfab.schemas.common import WireModel


class Holder(WireModel):
    """Whose work it is: the job id shows for the caller's own (all, for admins)."""

    job_id: str | None
    tenant: str = Field(description='Tenant name, or "other tenant".')


class Allocation(Holder):
    fraction: float


class Device(WireModel):
    index: int
    kind: str
    name: str
    memory_bytes: int
    active: bool
    free: float = Field(description="Unallocated fraction of the device.")
    allocations: list[Allocation]


class Node(WireModel):
    id: str
    hostname: str
    executor: str
    cpus: float
    cpus_free: float
    memory_bytes: int
    heartbeat_age_s: float
    devices: list[Device]
    jobs: list[Holder] = Field(description="CPU-only jobs running here.")


class Totals(WireModel):
    gpus: int
    gpus_free: float
    cpus: float
    cpus_free: float


class Pool(WireModel):
    object: Literal["pool"] = "pool"
    nodes: list[Node]
    queued_jobs: int
    totals: Totals
