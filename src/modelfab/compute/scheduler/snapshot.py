"""Load phase of the scheduler: one read of the state store into the policy's plain types."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfab.compute.scheduler.policy import (
    CPU_SLOT_GPU_EQUIVALENT,
    DeviceState,
    NodeState,
    PendingJob,
    TenantState,
)
from modelfab.compute.status import JobStatus
from modelfab.db.models import Device, Job, JobAllocation, Node, Tenant, UsageRecord


@dataclass(frozen=True)
class Snapshot:
    pending: list[PendingJob]
    nodes: list[NodeState]
    tenants: dict[str, TenantState]


def load_snapshot(session: Session, *, node_ids: Collection[str], usage_since: float) -> Snapshot:
    rows = session.execute(
        select(Job.id, Job.tenant_id, Job.gpus, Job.cpus, Job.memory_bytes, Job.priority)
        .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .order_by(Job.created_at, Job.id)
    ).all()
    pending = [PendingJob(r[0], r[1], r[2], r[3], r[4], r[5], seq) for seq, r in enumerate(rows)]
    running = session.execute(
        select(Job.tenant_id, Job.node_id, Job.gpus, Job.cpus, Job.memory_bytes).where(
            Job.status == JobStatus.RUNNING
        )
    ).all()
    return Snapshot(
        pending=pending,
        nodes=load_nodes(session, node_ids, running, full=False),
        tenants=_tenants(session, running, usage_since),
    )


def load_nodes(
    session: Session, node_ids: Collection[str], running: Sequence[tuple], *, full: bool
) -> list[NodeState]:
    """Nodes with their free capacity; `full=True` gives total capacity (as if all were free)."""
    used_fraction: dict[int, float] = {}
    if not full:
        used_fraction = dict(
            session.execute(
                select(JobAllocation.device_id, func.sum(JobAllocation.fraction)).group_by(
                    JobAllocation.device_id
                )
            ).all()
        )
    cpus_used: dict[str, float] = defaultdict(float)
    mem_used: dict[str, int] = defaultdict(int)
    for _tenant, node_id, _gpus, cpus, memory in [] if full else running:
        cpus_used[node_id] += cpus
        mem_used[node_id] += memory
    devices: dict[str, list[DeviceState]] = defaultdict(list)
    for dev in session.scalars(
        select(Device).where(Device.active.is_(True)).order_by(Device.node_id, Device.index)
    ):
        free = max(0.0, 1.0 - used_fraction.get(dev.id, 0.0))
        devices[dev.node_id].append(DeviceState(dev.id, dev.index, round(free, 9)))
    nodes = session.scalars(select(Node).where(Node.id.in_(node_ids)).order_by(Node.id))
    return [
        NodeState(
            node_id=n.id,
            cpus_free=n.cpus - cpus_used[n.id],
            memory_free=n.memory_bytes - mem_used[n.id],
            devices=tuple(devices[n.id]),
        )
        for n in nodes
    ]


def _tenants(session: Session, running: Sequence[tuple], since: float) -> dict[str, TenantState]:
    used_gpus: dict[str, float] = defaultdict(float)
    used_cpus: dict[str, float] = defaultdict(float)
    for tenant_id, _node, gpus, cpus, _memory in running:
        used_gpus[tenant_id] += gpus
        used_cpus[tenant_id] += cpus
    usage: dict[str, float] = defaultdict(float)
    for tenant_id, meter, quantity in session.execute(
        select(UsageRecord.tenant_id, UsageRecord.meter, func.sum(UsageRecord.quantity))
        .where(
            UsageRecord.created_at >= since,
            UsageRecord.meter.in_(("gpu_seconds", "cpu_seconds")),
        )
        .group_by(UsageRecord.tenant_id, UsageRecord.meter)
    ):
        factor = 1.0 if meter == "gpu_seconds" else CPU_SLOT_GPU_EQUIVALENT
        usage[tenant_id] += factor * float(quantity)
    return {
        t.id: TenantState(
            tenant_id=t.id,
            max_gpus=t.max_gpus,
            max_cpus=t.max_cpus,
            weight=t.weight,
            used_gpus=used_gpus[t.id],
            used_cpus=used_cpus[t.id],
            usage=usage[t.id],
        )
        for t in session.scalars(select(Tenant))
    }
